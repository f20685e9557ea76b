"""The lock that makes a build the one owner of its output folder `--out`.

What is locked: `OUT/.dancedata.lock` is the whole folder (a build, or a part of a partitioned build
for the few seconds it prepares or finalizes the folder); `OUT/.dancedata.part-0000I-of-0000K.lock` is
one part of a partitioned build (`--num-workers K --worker-index I`), so K machines can build at once
while a second copy of any one part is refused. The files live in OUT itself, not in `OUT/.build/`,
which `--overwrite` deletes.

Local folders: an advisory `flock(LOCK_EX | LOCK_NB)` on the lock file. The kernel drops it when the
holder's process ends in any way (`kill -9` included), so a lock is never left behind. The file is never
deleted: a process that opened it just before the unlink would lock an orphaned inode while the next
one creates and locks a new file, and both would own the folder. The holder writes its description
(pid, host, since, what) into the file and empties it on release, so a description found by whoever
acquires the lock next was left by a holder that died: that is reported as a takeover (`previous`).
The file is opened close-on-exec, so decode workers (forkserver or spawn, never a plain fork of the
build) do not inherit it and cannot keep the folder locked after the build is gone.

NFS: whether flock works across machines depends on client and server. Linux clients since 2.6.12
emulate it with POSIX byte-range locks, which NFSv4 (and NFSv3 with a lock manager) honour between
machines; other setups may lock per machine only. Local disks always work.

Object storage (`gs://`, `s3://`, ...) has no locks, so the lock is a LEASE object at the same name:
the holder's description plus a random token and a heartbeat it rewrites every 30 s. A lease whose
heartbeat is older than STALE_AFTER is taken over. Best effort only: acquiring is "write ours, wait,
read back, keep it if the token is still ours", which two machines starting within the same second can
both pass. An exclusive create exists only in the stores' own APIs (GCS `ifGenerationMatch=0`, S3
`If-None-Match: *`), which TensorFlow's filesystems do not expose. Heartbeats are compared with this
machine's clock, so clocks must agree to well within STALE_AFTER, and a holder stalled for longer than
that (a paused VM) loses its lease without noticing.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import socket
import threading
import time
import uuid

from dancedata import fs
from dancedata.errors import ConfigError, InputError

LOCK_NAME = ".dancedata.lock"
_PART_LOCK = re.compile(r"^\.dancedata\.part-\d{5}-of-\d{5}\.lock$")
POLL = 0.2  # seconds between tries while waiting for a local lock
PROBE_GRACE = 1.0  # how long a try may be blocked by probes alone (see FolderLock._probed_only)
STALE_AFTER = 120.0  # seconds without a heartbeat after which a lease is taken over
HEARTBEAT_EVERY = 30.0
SETTLE = 1.0  # seconds between writing a lease and reading it back


class FolderBusy(InputError):
    """Another process holds the lock of the output folder (or of this part of it)."""


def part_lock_name(num_workers: int, worker_index: int) -> str:
    return f".dancedata.part-{worker_index:05d}-of-{num_workers:05d}.lock"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _parse(text) -> dict | None:
    """A description, None for an empty file, {} for one that cannot be read (cut short while written)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text.strip():
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _who(info: dict | None) -> tuple[str, str] | None:
    """("pid 1234 on host h1", "since 2026-11-29T21:50:00+00:00: part 2 of 4"), or None without details."""
    if not info or "pid" not in info or "host" not in info:
        return None
    detail = f"since {info.get('since', '?')}"
    return f"pid {info['pid']} on host {info['host']}", detail + (f": {info['what']}" if info.get("what") else "")


class FolderLock:
    """An exclusive lock on `out` (or one part of it) named `name`, held as `what` ("build", "part 2 of 4").

    `acquire(wait)` raises FolderBusy when another process holds it; use it as a context manager.
    After acquiring, `previous` is the description left by a holder that died (None after a clean
    release), for the caller to report with `takeover_message`.
    """

    def __init__(self, out: str, name: str, what: str):
        self.out, self.name, self.what = str(out), name, what
        self.path = fs.join(self.out, name)
        self.remote = fs.is_remote(self.out)
        self.previous: dict | None = None
        self._fd: int | None = None
        self._lease: dict | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._lease is not None

    def _description(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "what": self.what}

    def _busy(self, info: dict | None) -> FolderBusy:
        who = _who(info)
        holder = f"another build ({who[0]}, {who[1]})" if who else "another process"
        return FolderBusy(
            f"{self.out} is in use by {holder}; wait for it to finish or stop it, then run this command again "
            f"(lock: {self.path})"
        )

    def acquire(self, wait: float = 0.0) -> FolderLock:
        """Takes the lock, trying every POLL seconds for up to `wait` seconds; raises FolderBusy after that."""
        if self.held:
            return self
        fs.check(self.out)  # loads tensorflow-io for s3:// and the like; nothing for local folders
        try:
            fs.makedirs(self.out)
        except OSError as error:
            raise InputError(
                f"cannot create the output folder {self.out}: {error.strerror or error}; choose another --out"
            ) from None
        deadline = time.monotonic() + max(0.0, wait)
        if self.remote:
            self._acquire_lease(deadline)
        else:
            self._acquire_local(deadline)
        return self

    # --- local: flock -------------------------------------------------------------------------------

    def _acquire_local(self, deadline: float) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            raise InputError(
                f"cannot open the lock file {self.path}: {error.strerror or error}; --out must be writable"
            ) from None
        try:
            while not _try_flock(fd, fcntl.LOCK_EX):
                now = time.monotonic()
                if now >= deadline + PROBE_GRACE or (now >= deadline and not _probed_only(fd)):
                    raise self._busy(self.holder())
                time.sleep(POLL if now < deadline else 0.01)
            self.previous = _parse(os.pread(fd, 1 << 16, 0))
            data = json.dumps(self._description(), sort_keys=True).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except BaseException:
            os.close(fd)  # closing drops the flock too, if it was taken
            raise
        self._fd = fd

    # --- object storage: a lease --------------------------------------------------------------------

    def _read_lease(self) -> dict | None:
        if not fs.exists(self.path):
            return None
        try:
            with fs.open_file(self.path, "r") as handle:
                return _parse(handle.read())
        except Exception:  # deleted between exists and read, or half-written: no lease to respect
            return None

    def _write_lease(self, lease: dict) -> None:
        with fs.open_file(self.path, "w") as handle:
            handle.write(json.dumps({**lease, "heartbeat": _now()}, sort_keys=True))

    def _acquire_lease(self, deadline: float) -> None:
        while True:
            current = self._read_lease()
            if current is None or _expired(current):
                ours = {**self._description(), "token": uuid.uuid4().hex}
                self._write_lease(ours)
                time.sleep(SETTLE)  # a rival writing at the same time overwrites ours, or we overwrite theirs
                current_after = self._read_lease()
                if current_after and current_after.get("token") == ours["token"]:
                    self.previous, self._lease = current, ours
                    self._stop.clear()
                    self._heartbeat = threading.Thread(target=self._beat, name="dancedata-lease", daemon=True)
                    self._heartbeat.start()
                    return
                current = current_after
            if time.monotonic() >= deadline:
                raise self._busy(current)
            time.sleep(SETTLE)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            lease = self._lease
            try:
                found = self._read_lease()
                if lease is None or not found or found.get("token") != lease["token"]:
                    return  # taken over (we stalled past STALE_AFTER): never write over the new holder
                self._write_lease(lease)
            except Exception:
                pass  # a failed heartbeat is retried at the next beat; STALE_AFTER leaves room for three

    # --- both ---------------------------------------------------------------------------------------

    def holder(self) -> dict | None:
        """The description of whoever holds this lock now (this object included), {} when it is held but
        its holder has not described itself yet (or was cut short doing so), None when nobody holds it.
        Needs no lock: it only looks."""
        if self._fd is not None:
            return _parse(os.pread(self._fd, 1 << 16, 0))
        if self.remote:
            found = self._read_lease()
            return found if found and not _expired(found) else None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if _try_flock(fd, fcntl.LOCK_SH):  # nobody holds it: whatever the file says is history
                return None
            # Held: a holder between its flock and its description is as much a holder as a described one.
            return _parse(os.pread(fd, 1 << 16, 0)) or {}
        finally:
            os.close(fd)

    def release(self) -> None:
        """Empties the description and gives the lock up; releasing twice is fine."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        if self._lease is not None:
            lease, self._lease = self._lease, None
            self._stop.set()
            if self._heartbeat is not None:
                self._heartbeat.join()
            found = self._read_lease()
            if found and found.get("token") == lease["token"]:
                fs.remove(self.path)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FolderLock({self.path!r}, what={self.what!r}, held={self.held})"


def _try_flock(fd: int, kind: int) -> bool:
    """flock without blocking; with LOCK_SH (a probe) the lock is given back at once."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    if kind == fcntl.LOCK_SH:
        fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _probed_only(fd: int) -> bool:
    """Whether the lock that refused us is only someone's probe (holder(), held_part_locks): probes take
    a shared lock for microseconds, so a shared lock being free means no owner holds it exclusively.
    The acquirer then retries for up to PROBE_GRACE instead of failing on a look."""
    return _try_flock(fd, fcntl.LOCK_SH)


def _expired(lease: dict) -> bool:
    try:
        beat = datetime.datetime.fromisoformat(lease["heartbeat"])
    except (KeyError, TypeError, ValueError):
        return True
    return (datetime.datetime.now(datetime.timezone.utc) - beat).total_seconds() > STALE_AFTER


def takeover_message(lock: FolderLock) -> str | None:
    """One line saying whose lock `lock` took over from a holder that died, or None after a clean release."""
    if lock.previous is None:
        return None
    who = _who(lock.previous)
    if lock.remote:
        beat = lock.previous.get("heartbeat", "?")
        return (f"taking over the lease of {who[0]} ({who[1]}; last heartbeat {beat}): that build is gone" if who
                else f"taking over an expired lease at {lock.path}: that build is gone")
    return (f"taking over the lock of {who[0]} ({who[1]}): that build is gone" if who
            else f"taking over the lock {lock.path}, whose holder died while describing itself: that build is gone")


def folder_lock(out: str, what: str = "build", wait: float = 0.0) -> FolderLock:
    """The whole-folder lock of `out`, acquired (see FolderLock.acquire for `wait`)."""
    return FolderLock(out, LOCK_NAME, what).acquire(wait)


def part_lock(out: str, num_workers: int, worker_index: int) -> FolderLock:
    """The lock of one part of a partitioned build of `out`, acquired."""
    if not 0 <= worker_index < num_workers:
        raise ConfigError(f"worker_index must be between 0 and num_workers - 1 = {num_workers - 1}, got {worker_index}")
    name = part_lock_name(num_workers, worker_index)
    return FolderLock(out, name, f"part {worker_index + 1} of {num_workers}").acquire()


def held_part_locks(out: str) -> list[dict]:
    """The descriptions of the parts of `out` that some process is building now (held part locks; {}
    for one held but not yet described), so that a whole build can refuse to start beside them. Files
    of parts that ended are left out."""
    found = []
    for name in sorted(fs.listdir(str(out))):
        if _PART_LOCK.match(name):
            info = FolderLock(out, name, "").holder()
            if info is not None:
                found.append(info)
    return found


# --- How builds hold their folder ---------------------------------------------------------------------

# Partitioned parts wait this long for another part's short hold on the folder lock (prepare, finalize).
PART_WAIT_S = 300.0


@contextlib.contextmanager
def owned(out: str, num_workers: int = 1, worker_index: int = 0):
    """Holds `out` for a build (the folder lock) or a part of a partitioned build (its share's lock)
    while the body runs; says so when it takes over the lock of a build that died."""
    if num_workers > 1:
        lock = part_lock(out, num_workers, worker_index)
    else:
        lock = folder_lock(out, "build")
        running = held_part_locks(out)
        if running:
            lock.release()
            other = running[0]
            who = _who(other)
            holder = f"{other.get('what', 'a part')}: {who[0]}, since {other.get('since', '?')}" if who else \
                "a part whose process is starting and has not described itself yet"
            raise FolderBusy(
                f"{out} is in use by a partitioned build ({holder}); wait for its parts to finish or stop them, "
                "then run this command again")
    _say_takeover(lock)
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def briefly(out: str, what: str, partitioned: bool):
    """The folder lock for a part's short critical section (a whole build holds it already)."""
    if not partitioned:
        yield
        return
    lock = folder_lock(out, what, wait=PART_WAIT_S)
    _say_takeover(lock)
    try:
        yield
    finally:
        lock.release()


def _say_takeover(lock) -> None:
    from dancedata.runners import say

    message = takeover_message(lock)
    if message:
        say(message)
