"""`python -m dancedata.download aist/ --accept-terms`: fetch AIST Dance DB videos reliably.

Each file is downloaded to `<name>.mp4.part` (resumed with an HTTP Range request when a part
exists), checked against the server's Content-Length, and renamed when complete; its size and
sha256 go into `aist/.download.json`, so a later run verifies what it has instead of fetching it
again. Timeouts, dropped connections and 5xx answers are retried with exponential backoff; a 4xx is
final. The run ends with a report of what failed and why, and exits 1 if anything did.

The list decides file names, so it is not trusted: a name must be a plain file name (letters, digits,
`_`, `-`, `.`, not first; every AIST name is one), or it is reported and skipped, never joined to a
path; the downloader also refuses any target whose real parent is not the output folder. HTTPS
certificates are always verified, and a rejected one is final, not retried.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import http.client
import json
import os
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request

from dancedata import cli, config, naming
from dancedata.errors import ConfigError, InputError
from dancedata.fs import sha256

LIST_URL = "https://storage.googleapis.com/aist_plusplus_public/20121228/video_list.txt"
BASE_URL = "https://aistdancedb.ongaaccel.jp/v1.0.0/video/10M/"
RECORD = ".download.json"
MAX_NAME = 200
_PLAIN_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}")
TERMS = """\
AIST Dance Video Database — terms of use (summary; the full terms are at https://aistdancedb.ongaaccel.jp/terms_of_use/)
  * The videos may be used for research and development purposes only.
  * You may not redistribute the videos, or publish them beyond what the terms allow.
  * Publications using the data must cite the AIST Dance Video Database paper (Tsuchida et al., ISMIR 2019).
By downloading you confirm that you have read and accept the full terms of use."""


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    accept_terms: bool = config.flag("accept the dataset's terms of use (needed when not run interactively)", default=False)
    list: str = config.flag("file (or URL) with one video name per line", default=LIST_URL)
    base_url: str = config.flag("videos are fetched from BASE_URL<name>.mp4", default=BASE_URL)
    limit: int = config.flag("download at most this many videos after filtering (0: all)", default=0)
    genres: str = config.flag("comma-separated genre codes to keep, e.g. BR,PO", default="")
    situations: str = config.flag("comma-separated situations to keep, e.g. sBM,sFM", default="")
    cameras: str = config.flag("comma-separated cameras to keep, e.g. c01 (one view per performance)", default="")
    processes: int = config.flag("parallel downloads", default=4)
    retries: int = config.flag("attempts per file after the first, on timeouts, dropped connections and 5xx", default=4)
    retry_wait: float = config.flag("seconds before the first retry; doubles each time", default=2.0)
    timeout: float = config.flag("seconds without data before a connection counts as timed out", default=60.0)
    quiet: bool = config.flag("no progress bar", default=False)

    def __post_init__(self):
        config.check_types(self)
        for name in ("processes", "timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("limit", "retries", "retry_wait"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be non-negative, got {getattr(self, name)!r}")
        unknown = [g for g in _items(self.genres) if g not in naming.GENRES]
        if unknown:
            raise ConfigError(f"genres must be codes among {', '.join(naming.GENRES)}; got {', '.join(unknown)}")
        bad = [c for c in _items(self.cameras) if not re.fullmatch(r"c\d\d", c)]
        if bad:
            raise ConfigError(f"cameras must look like c01; got {', '.join(bad)}")


class TransientError(Exception):
    """Worth another attempt: timeout, dropped connection, 5xx, short body."""


class FinalError(Exception):
    """Not worth retrying: 4xx, or retries exhausted."""


def _items(text: str) -> list:
    return [item.strip() for item in text.split(",") if item.strip()]


@functools.cache
def _tls() -> ssl.SSLContext:
    # Passed explicitly so that certificate and host name checks hold even where the process-wide
    # default has been swapped for an unverified one.
    return ssl.create_default_context()


def name_problem(name: str) -> str:
    """Why `name` cannot be a video name, "" when it can.

    Only plain file names pass: ASCII letters, digits, `_`, `-` and `.` (not first), at most 200 characters.
    Every AIST name (naming.parse_aist_name) is one; matching the AIST patterns is not enough on its own,
    since the showcase/cypher/battle pattern lets anything stand between the camera and the version.
    """
    if _PLAIN_NAME.fullmatch(name):
        return ""
    if not name:
        why = "the name is empty"
    elif "/" in name or "\\" in name or name in (".", ".."):
        why = "it would be written outside the output folder"
    elif name.startswith("."):
        why = "it starts with '.' (a hidden file, such as the download record)"
    elif ":" in name:
        why = "it has a ':' (a drive letter or a URL scheme)"
    elif len(name) > MAX_NAME:
        why = f"it is longer than {MAX_NAME} characters"
    else:
        why = "only letters, digits, '_', '-' and '.' may appear in it"
    return f"not a video name: {why}; skipped"


def _shown(name: str) -> str:
    """A name as the report prints it: a bad one quoted and escaped, so it cannot upset the terminal."""
    if not name_problem(name):
        return name
    return ascii(name if len(name) <= 80 else name[:80] + "...")


def read_list(source: str, timeout: float = 60.0) -> list:
    """Video names (no extension) from a local file or a URL; blank lines and # comments dropped.

    The names are returned as written; name_problem tells which may be used."""
    try:
        if re.match(r"^https?://", source):
            with urllib.request.urlopen(source, timeout=timeout, context=_tls()) as response:
                text = response.read().decode("utf-8")
        else:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, urllib.error.URLError) as error:
        raise InputError(f"cannot read the video list {source}: {error}; pass --list FILE with one name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [name[:-4] if name.endswith(".mp4") else name for name in names]


def select(names: list, cfg: DownloadConfig) -> list:
    """Names that pass --genres, --situations and --cameras, then the first --limit of them."""
    genres, situations, cameras = set(_items(cfg.genres)), set(_items(cfg.situations)), set(_items(cfg.cameras))
    chosen = []
    for name in names:
        parts = name.split("_")
        genre = parts[0][1:] if parts[0].startswith("g") else ""
        situation = next((p for p in parts if re.fullmatch(r"s[A-Z]{2}", p)), "")
        camera = next((p for p in parts if re.fullmatch(r"c\d\d", p)), "")
        if (genres and genre not in genres) or (situations and situation not in situations) or (cameras and camera not in cameras):
            continue
        chosen.append(name)
    return chosen[: cfg.limit] if cfg.limit else chosen


class Stopped(Exception):
    """A transfer stopped by Ctrl-C; its .part file is kept."""


class Downloader:
    def __init__(self, out: str, cfg: DownloadConfig, progress=None):
        self.out, self.cfg, self.progress = out, cfg, progress
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # set on Ctrl-C: running transfers stop, keeping their .part
        self._record_path = os.path.join(out, RECORD)
        self.record = {}
        if os.path.exists(self._record_path):
            with open(self._record_path) as handle:
                self.record = json.load(handle)

    def _save_record(self) -> None:
        temporary = self._record_path + ".incomplete"
        with open(temporary, "w") as handle:
            json.dump(self.record, handle, indent=1, sort_keys=True)
        os.replace(temporary, self._record_path)

    def _paths(self, name: str) -> tuple:
        """The final and partial files of `name`; FinalError unless both really lie in the output folder
        (a name that is not plain, or a link planted there, would send the bytes elsewhere)."""
        final = os.path.join(self.out, name + ".mp4")
        folder = os.path.realpath(self.out)
        for path in (final, final + ".part"):
            if os.path.dirname(os.path.realpath(path)) != folder:
                raise FinalError(f"refused to write {path!r}: it resolves outside the output folder {folder}")
        return final, final + ".part"

    def is_complete(self, name: str) -> bool:
        """A finished file whose size and sha256 match the record: no need to fetch it again."""
        path, _ = self._paths(name)
        entry = self.record.get(name)
        return bool(entry) and os.path.exists(path) and os.path.getsize(path) == entry["size"] and sha256(path) == entry["sha256"]

    def fetch(self, name: str) -> str:
        """Downloads one video; returns "downloaded" or "present"; raises FinalError."""
        if self.is_complete(name):
            return "present"
        attempt = 0
        while True:
            try:
                self._attempt(name)
                return "downloaded"
            except TransientError as error:
                if attempt >= self.cfg.retries:
                    raise FinalError(f"{error} (gave up after {attempt + 1} attempts)") from None
                if self.stopping.wait(self.cfg.retry_wait * 2**attempt):
                    raise Stopped(name) from None
                attempt += 1

    def _attempt(self, name: str) -> None:
        url = self.cfg.base_url + name + ".mp4"
        final, partial = self._paths(name)
        have = os.path.getsize(partial) if os.path.exists(partial) else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout, context=_tls()) as response:
                resumed = have and response.status == 206
                start = _range_start(response.headers.get("Content-Range")) if resumed else None
                if resumed and start != have:
                    # Appended, bytes that do not continue ours would make a file of the announced length
                    # whose sha256 is recorded as if it were right.
                    os.remove(partial)
                    raise TransientError(f"HTTP 206 for {url} starts at byte {start} (Content-Range "
                                         f"{response.headers.get('Content-Range')!r}), not at byte {have} where the "
                                         "partial file ends: starting over")
                length = response.headers.get("Content-Length")
                expected = (have if resumed else 0) + int(length) if length is not None else None
                with open(partial, "ab" if resumed else "wb") as handle:
                    while True:
                        if self.stopping.is_set():
                            raise Stopped(name)  # the .part file stays, and a later run resumes it
                        block = response.read(1 << 16)
                        if not block:
                            break
                        handle.write(block)
                        if self.progress is not None:
                            self.progress.bytes(len(block))
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # our part is already whole, or stale: start over
                os.remove(partial)
                raise TransientError(f"HTTP 416 for a resumed download of {url}") from None
            if error.code >= 500 or error.code == 429:
                raise TransientError(f"HTTP {error.code} {error.reason} for {url}") from None
            raise FinalError(f"HTTP {error.code} {error.reason} for {url}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException, urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, ssl.SSLCertVerificationError):  # another try meets the same certificate
                raise FinalError(f"TLS certificate rejected for {url}: {reason}") from None
            raise TransientError(f"{type(error).__name__}: {error} for {url}") from None
        size = os.path.getsize(partial)
        if expected is not None and size != expected:
            raise TransientError(f"size mismatch for {url}: server announced {expected} bytes, got {size}")
        digest = sha256(partial)
        os.replace(partial, final)
        with self._lock:
            self.record[name] = {"size": size, "sha256": digest}
            self._save_record()


def _range_start(header: str | None) -> int | None:
    """The first byte of a single-range Content-Range ("bytes 1000-49999/50000"), or None."""
    found = re.fullmatch(r"bytes\s+(\d+)-\d+/(?:\d+|\*)", (header or "").strip())
    return int(found[1]) if found else None


class _Progress:
    """Files done, bytes, rate and ETA on one tqdm bar."""

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="file", disable=quiet, file=sys.stderr, dynamic_ncols=True)
        self._bytes, self._start, self._lock = 0, time.time(), threading.Lock()

    def bytes(self, count: int) -> None:
        with self._lock:
            self._bytes += count

    def file_done(self) -> None:
        with self._lock:
            rate = self._bytes / max(time.time() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{self._bytes / 1e6:.1f} MB, {rate / 1e6:.2f} MB/s", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def download(out: str, cfg: DownloadConfig) -> dict:
    """Downloads the selected videos into `out`; returns {"downloaded", "present", "failed": {name: reason}}.

    List entries that are not video names (name_problem) are failed without being fetched."""
    listed = read_list(cfg.list, cfg.timeout)
    rejected = {name: name_problem(name) for name in listed if name_problem(name)}
    names = select([name for name in listed if name not in rejected], cfg)
    if not names and not rejected:
        raise InputError("no video names left after --genres/--situations/--cameras/--limit")
    os.makedirs(out, exist_ok=True)
    progress = _Progress(len(names), cfg.quiet)
    downloader = Downloader(out, cfg, progress)
    outcome = {"downloaded": [], "present": [], "failed": dict(rejected)}
    pool = concurrent.futures.ThreadPoolExecutor(cfg.processes)
    try:
        futures = {pool.submit(downloader.fetch, name): name for name in names}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            try:
                outcome[future.result()].append(name)
            except FinalError as error:
                outcome["failed"][name] = str(error)
            progress.file_done()
    except KeyboardInterrupt:
        # Queued transfers never start; running ones stop at their next block and keep their .part file.
        downloader.stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        progress.close()
    return outcome


def _accepted(cfg: DownloadConfig) -> bool:
    print(TERMS, file=sys.stderr)
    if cfg.accept_terms:
        return True
    if not sys.stdin.isatty():
        return False
    return input("Type 'yes' to accept the terms of use: ").strip().lower() == "yes"


INTERRUPTED = "finished files are kept and partial ones resume; run the same command again"  # what Ctrl-C leaves, and how to go on


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m dancedata.download", description="Download AIST Dance DB videos.")
    parser.add_argument("out", help="folder for the videos (e.g. aist/)")
    config.add_flags(parser, DownloadConfig)
    args = parser.parse_args(argv)
    cfg = config.from_flags(args, DownloadConfig)
    if not _accepted(cfg):
        raise ConfigError("the terms of use were not accepted; read them and pass --accept-terms")
    outcome = download(args.out, cfg)
    print(f"downloaded {len(outcome['downloaded'])}, already present {len(outcome['present'])}, failed {len(outcome['failed'])}")
    for name, reason in sorted(outcome["failed"].items()):
        print(f"  failed {_shown(name)}: {reason}")
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    cli.exit(cli.run(main, "download", tensorflow=False, interrupted=INTERRUPTED))
