"""Shards read over a remote filesystem through tensorflow-io (the pinned `remote` stack:
tensorflow 2.17 + tensorflow-io 0.37.1). Skipped where tensorflow-io does not load; .ci/run runs it in
a virtual environment of that stack. The server is local (127.0.0.1), started by the test."""
import functools
import http.server
import os
import threading

import pytest

tfio = pytest.importorskip("tensorflow_io", exc_type=ImportError)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support, as every object store has (tensorflow-io reads in ranges)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        requested = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not requested or not os.path.isfile(path):
            return super().do_GET()
        with open(path, "rb") as handle:
            data = handle.read()
        first, _, last = requested.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start : end + 1])


@pytest.fixture
def served(built):
    handler = functools.partial(RangeHandler, directory=str(built["out"].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{built['out'].name}"
    httpd.shutdown()
    httpd.server_close()


def test_reader_over_http_matches_local(built, served):
    import numpy as np

    from dancedata import DatasetBuilder, ExampleConfig, ReadConfig

    remote, local = DatasetBuilder(served), DatasetBuilder(str(built["out"]))
    assert remote.info.splits == local.info.splits
    for split in local.info.splits:
        metadata = ExampleConfig(with_metadata=True)
        a = list(remote.as_dataset(split, batch_size=64, read_config=ReadConfig(verify=True), example_config=metadata))
        b = list(local.as_dataset(split, batch_size=64, example_config=metadata))
        for ((fa, ma), la, mda), ((fb, mb), lb, mdb) in zip(a, b):
            np.testing.assert_array_equal(fa.numpy(), fb.numpy())
            np.testing.assert_array_equal(la.numpy(), lb.numpy())
            np.testing.assert_array_equal(mda["video_id"].numpy(), mdb["video_id"].numpy())


def test_training_fields_stream_over_http_by_byte_range(built, served):
    """The training fields of a remote schema-4 build: each window read by byte range (HTTP Range requests),
    checked against the shards' indexes, in the order the local mapped reader gives."""
    import numpy as np

    from dancedata import DatasetBuilder, ExampleConfig, ReadConfig

    remote, local = DatasetBuilder(served), DatasetBuilder(str(built["out"]))
    shards = remote.manifest["splits"]["train"]["shards"]
    read, half = ReadConfig(shuffle=True, seed=2, shuffle_buffer=4), ExampleConfig(cast=False)
    assert remote._ranged("train", *remote.ordered_files("train", read), ("features",)) is not None  # noqa: SLF001
    for _ in range(2):  # two epochs
        a = list(remote.as_dataset("train", batch_size=3, read_config=read, example_config=half))
        b = list(local.as_dataset("train", batch_size=3, read_config=read, example_config=half))
        assert len(a) == len(b) > 1 and len(shards) > 2
        for ((fa, ma), la), ((fb, mb), lb) in zip(a, b):
            np.testing.assert_array_equal(fa.numpy(), fb.numpy())
            np.testing.assert_array_equal(ma.numpy(), mb.numpy())
            np.testing.assert_array_equal(la.numpy(), lb.numpy())
