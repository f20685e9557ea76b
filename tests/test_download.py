"""The downloader against a local HTTP(S) server on 127.0.0.1 serving generated files."""
import collections
import hashlib
import http.server
import json
import os
import shutil
import ssl
import subprocess
import threading
import urllib.request

import pytest

from dancedata import cli, download

FILES = {name: os.urandom(50_000 + i) for i, name in enumerate(
    ["gBR_sBM_c01_d04_mBR0_ch01", "gPO_sBM_c02_d10_mPO1_ch02", "flaky", "cut", "liar", "missing"])}


class Handler(http.server.BaseHTTPRequestHandler):
    hits = collections.Counter()

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1].removesuffix(".mp4")
        self.hits[name] += 1
        if self.path == "/list.txt":
            return self._send(200, "\n".join(FILES).encode() + b"\nsSH_c01_v0\n")
        if name == "missing" or name not in FILES:
            return self._send(404, b"not found")
        if name == "flaky" and self.hits[name] <= 2:
            return self._send(503, b"busy")
        body = FILES[name]
        if name == "liar":  # announces twice what it sends
            self.send_response(200)
            self.send_header("Content-Length", str(2 * len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        if name == "cut" and self.hits[name] == 1:  # the first transfer drops half-way
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(206 if start else 200, body[start:], start=start, total=len(body))

    def _send(self, status, body, start=0, total=None):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.hits = collections.Counter()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def args(base, out, *extra):
    return [str(out), "--accept-terms", "--list", base + "list.txt", "--base-url", base + "videos/",
            "--retry-wait", "0.01", "--retries", "3", "--timeout", "5", "--quiet", *extra]


def test_download_retries_resumes_and_reports(server, tmp_path, capsys):
    out = tmp_path / "aist"
    assert cli.run(download.main, "download", args(server, out)) == 1
    text = capsys.readouterr().out
    for name in ("gBR_sBM_c01_d04_mBR0_ch01", "gPO_sBM_c02_d10_mPO1_ch02", "flaky", "cut"):
        assert (out / f"{name}.mp4").read_bytes() == FILES[name], name
    assert Handler.hits["flaky"] == 3 and Handler.hits["cut"] == 2
    assert "failed missing: HTTP 404" in text and "failed liar: size mismatch" in text
    assert "failed sSH_c01_v0: HTTP 404" in text
    assert not (out / "missing.mp4").exists() and not (out / "liar.mp4").exists()
    assert Handler.hits["missing"] == 1  # a 404 is final, no retries
    assert Handler.hits["liar"] == 4  # 1 + 3 retries
    record = json.loads((out / ".download.json").read_text())
    assert set(record) == {"gBR_sBM_c01_d04_mBR0_ch01", "gPO_sBM_c02_d10_mPO1_ch02", "flaky", "cut"}


def test_second_run_verifies_instead_of_refetching(server, tmp_path, capsys):
    out = tmp_path / "aist"
    cli.run(download.main, "download", args(server, out, "--genres", "BR,PO"))
    Handler.hits.clear()
    (out / "gPO_sBM_c02_d10_mPO1_ch02.mp4").write_bytes(b"damaged")  # changed since: fetched again
    assert cli.run(download.main, "download", args(server, out, "--genres", "BR,PO")) == 0
    assert Handler.hits["gBR_sBM_c01_d04_mBR0_ch01"] == 0 and Handler.hits["gPO_sBM_c02_d10_mPO1_ch02"] == 1
    assert (out / "gPO_sBM_c02_d10_mPO1_ch02.mp4").read_bytes() == FILES["gPO_sBM_c02_d10_mPO1_ch02"]
    assert "downloaded 1, already present 1, failed 0" in capsys.readouterr().out


def test_interrupted_part_file_is_resumed_with_range(server, tmp_path):
    out = tmp_path / "aist"
    out.mkdir()
    name = "gBR_sBM_c01_d04_mBR0_ch01"
    (out / f"{name}.mp4.part").write_bytes(FILES[name][:1000])
    assert cli.run(download.main, "download", args(server, out, "--genres", "BR")) == 0
    assert (out / f"{name}.mp4").read_bytes() == FILES[name] and not (out / f"{name}.mp4.part").exists()


def test_selection_by_genre_situation_camera_and_limit():
    cfg = download.DownloadConfig(genres="BR,PO", cameras="c01")
    names = ["gBR_sBM_c01_d04_mBR0_ch01", "gBR_sBM_c02_d04_mBR0_ch01", "gHO_sFM_c01_d16_mHO0_ch01", "sSH_c01_v0"]
    assert download.select(names, cfg) == ["gBR_sBM_c01_d04_mBR0_ch01"]
    assert download.select(names, download.DownloadConfig(situations="sFM")) == ["gHO_sFM_c01_d16_mHO0_ch01"]
    assert download.select(names, download.DownloadConfig(limit=2)) == names[:2]


def test_terms_must_be_accepted_when_not_interactive(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    assert cli.run(download.main, "download", [str(tmp_path), "--list", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "terms of use" in err and err.strip().splitlines()[-1] == (
        "download: error: the terms of use were not accepted; read them and pass --accept-terms"
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--genres", "XX"], "genres must be codes among BR"),
        (["--processes", "0"], "processes must be positive, got 0"),
        (["--cameras", "cam1"], "cameras must look like c01; got cam1"),
        (["--list", "/no/such/list.txt"], "cannot read the video list /no/such/list.txt"),
    ],
)
def test_bad_values_exit_2(tmp_path, capsys, extra, message):
    assert cli.run(download.main, "download", [str(tmp_path), "--accept-terms", *extra]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["gBR_sBM_c01_d04_mBR0_ch01", "gLO_sGR_c01_d13_d14_d15_mLO0_ch01", "sBT_c01_d01_v5",
                                  "sSH_c01_v0", "flaky", "clip-01.v2", "x" * 200])
def test_plain_and_aist_names_are_video_names(name):
    assert download.name_problem(name) == ""


@pytest.mark.parametrize(
    "name, why",
    [
        ("../escape", "outside the output folder"),
        ("/tmp/abs", "outside the output folder"),
        ("sub/dir", "outside the output folder"),
        ("a\\b", "outside the output folder"),
        ("..", "outside the output folder"),
        ("sSH_c01_../../x_v0", "outside the output folder"),  # fits the unlabelled AIST pattern, still refused
        ("http://x/y", "outside the output folder"),
        ("C:evil", "a drive letter or a URL scheme"),
        (".download", "starts with '.'"),
        ("", "empty"),
        ("x" * 201, "longer than 200 characters"),
        ("bad\x1b[2Jname", "only letters, digits"),
        ("two words", "only letters, digits"),
    ],
)
def test_other_names_are_not_video_names(name, why):
    assert download.name_problem(name).startswith("not a video name: ") and why in download.name_problem(name)


def test_list_entries_that_are_not_video_names_are_reported_and_skipped(server, tmp_path, capsys, monkeypatch):
    # The server answers by the URL's last segment, so it would serve each bad entry: only the name check
    # stands between them and a write.
    for served in ("escape", "abs", "dir", "x", "C:evil"):
        monkeypatch.setitem(FILES, served, b"not yours")
    bad = ["../escape", str(tmp_path / "abs"), "sub/dir", "gs://other/x", "C:evil"]
    good = "gBR_sBM_c01_d04_mBR0_ch01"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(bad + [good]) + "\n")
    out = tmp_path / "aist"
    before = set(os.listdir(tmp_path))
    argv = [str(out), "--accept-terms", "--list", str(listing), "--base-url", server + "videos/", "--quiet"]
    assert cli.run(download.main, "download", argv) == 1
    text = capsys.readouterr().out
    assert "downloaded 1, already present 0, failed 5" in text
    for name in bad:
        assert f"failed {name!r}: not a video name: " in text, name
    assert "failed '../escape': not a video name: it would be written outside the output folder" in text
    assert (out / f"{good}.mp4").read_bytes() == FILES[good]
    assert sorted(os.listdir(out)) == [".download.json", f"{good}.mp4"]
    assert set(os.listdir(tmp_path)) == before | {"aist"}  # nothing new beside OUT
    assert set(Handler.hits) == {good}  # the bad entries were never even requested


def test_downloader_refuses_a_target_that_resolves_outside_its_folder(tmp_path):
    out = tmp_path / "aist"
    out.mkdir()
    name = "gBR_sBM_c01_d04_mBR0_ch01"
    (out / f"{name}.mp4.part").symlink_to(tmp_path / "elsewhere")  # a link planted in OUT
    downloader = download.Downloader(str(out), download.DownloadConfig(base_url="http://127.0.0.1:9/"))
    for target in (name, "../escape"):
        with pytest.raises(download.FinalError, match="resolves outside the output folder"):
            downloader.fetch(target)
    assert sorted(os.listdir(tmp_path)) == ["aist"]


class _TLSServer(http.server.ThreadingHTTPServer):
    """HTTPS with the handshake in the request's thread, under a timeout, so a stuck client cannot hold
    up shutdown()."""

    context = None

    def finish_request(self, request, client_address):
        request.settimeout(10)
        with self.context.wrap_socket(request, server_side=True) as tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request, client_address):
        pass  # a refused handshake is what the test expects


@pytest.fixture
def https_server(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command line is not on PATH; it makes the test's self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    Handler.hits = collections.Counter()
    httpd = _TLSServer(("127.0.0.1", 0), Handler)
    httpd.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    httpd.context.load_cert_chain(cert, key)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/", cert
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_a_certificate_that_does_not_verify_is_refused(https_server, tmp_path, capsys):
    base, cert = https_server
    name = "gBR_sBM_c01_d04_mBR0_ch01"
    # Control: a client that trusts the certificate gets the file, so the refusal below is the certificate's.
    trusting = ssl.create_default_context(cafile=str(cert))
    trusting.check_hostname = False
    with urllib.request.urlopen(f"{base}videos/{name}.mp4", timeout=5, context=trusting) as response:
        assert response.read() == FILES[name]
    Handler.hits.clear()
    listing = tmp_path / "list.txt"
    listing.write_text(name + "\n")
    out = tmp_path / "aist"
    argv = [str(out), "--accept-terms", "--list", str(listing), "--base-url", base + "videos/", "--quiet",
            "--timeout", "5", "--retry-wait", "0.01"]
    assert cli.run(download.main, "download", argv) == 1
    text = capsys.readouterr().out
    assert f"failed {name}: TLS certificate rejected for {base}videos/{name}.mp4: " in text
    assert "certificate verify failed" in text and "gave up" not in text  # final at once, not retried
    assert os.listdir(out) == [] and Handler.hits[name] == 0
    # The list over HTTPS goes through the same check: a user's error, exit 2.
    assert cli.run(download.main, "download", [str(out), "--accept-terms", "--list", base + "list.txt", "--timeout", "5"]) == 2
    assert "certificate verify failed" in capsys.readouterr().err


@pytest.mark.parametrize("content_range", ["bytes 0-{last}/{total}", "bytes 500-{last}/{total}", None])
def test_a_206_that_does_not_continue_the_part_file_starts_over(tmp_path, content_range):
    """A server that answers a Range request with other bytes (the file from its start, from elsewhere,
    or unlabelled) as 206: appended, they would give a file of the announced length with a wrong sha256
    recorded as right. The downloader starts over instead."""
    body, asked = os.urandom(30_000), []

    class Sloppy(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            asked.append(self.headers.get("Range"))
            if self.headers.get("Range") is None:
                self.send_response(200)
                sent = body
            else:
                start = 500 if content_range and content_range.startswith("bytes 500") else 0
                sent = body[start:]
                self.send_response(206)
                if content_range:
                    self.send_header("Content-Range", content_range.format(last=len(body) - 1, total=len(body)))
            self.send_header("Content-Length", str(len(sent)))
            self.end_headers()
            self.wfile.write(sent)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sloppy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "aist"
        out.mkdir()
        name = "gBR_sBM_c01_d04_mBR0_ch01"
        (out / f"{name}.mp4.part").write_bytes(body[:1000])
        cfg = download.DownloadConfig(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/", retry_wait=0.01, retries=2)
        downloader = download.Downloader(str(out), cfg)
        assert downloader.fetch(name) == "downloaded"
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert asked == ["bytes=1000-", None]  # the resume was refused, and the file fetched whole
    assert (out / f"{name}.mp4").read_bytes() == body
    assert downloader.record[name] == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_a_206_that_continues_the_part_file_is_appended(server, tmp_path):
    out = tmp_path / "aist"
    out.mkdir()
    name = "gBR_sBM_c01_d04_mBR0_ch01"
    (out / f"{name}.mp4.part").write_bytes(FILES[name][:1000])
    downloader = download.Downloader(str(out), download.DownloadConfig(base_url=server + "videos/", retries=0))
    assert downloader.fetch(name) == "downloaded"
    assert Handler.hits[name] == 1 and (out / f"{name}.mp4").read_bytes() == FILES[name]
    assert download._range_start("bytes 1000-49999/50000") == 1000 and download._range_start("bytes 7-9/*") == 7
    assert download._range_start(None) is None and download._range_start("bytes */50000") is None
