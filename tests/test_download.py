"""The downloader against a local HTTP server on 127.0.0.1 serving generated files."""
import collections
import http.server
import json
import os
import threading

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
