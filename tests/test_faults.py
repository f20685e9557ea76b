"""Fault isolation: hung and crashing decoders, machine failures, damaged shards, full disks, Ctrl-C,
and one-line errors everywhere. Faults are real: processes hang, segfault and get signals."""
import errno
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
from conftest import BUILD_FLAGS as FLAGS
from conftest import SMALL_SHARDS as OPTIONS
from conftest import FROM_A_TERMINAL, add_bad_files, cli_env, make_aist_folder, write_truncated_avi, write_video
from conftest import build_outputs as outputs
from faulty_decoder import SPEC

import dancedata
from dancedata import train as train_script
from dancedata import cli, decode_pool, inspect, video_decoder, write
from dancedata.build_shards import main as build_main

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "aist"
    make_aist_folder(root, performances=4, cameras=2)
    return root


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults-reference") / "out"
    dancedata.build_shards(str(videos), str(out), **OPTIONS)
    return out


def test_hung_and_crashing_decoders_cost_only_their_video(tmp_path, monkeypatch):
    """The issue's folder: zero-byte, truncated, over-stated and non-video files, a decoder that
    hangs and one that segfaults; every good video is built and every bad one listed with its reason."""
    root = tmp_path / "clips"
    good = []
    for label in ("salsa", "tango"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            write_video(root / label / f"{label}{i}.mp4", frames=10, seed=i)
            good.append(f"{label}/{label}{i}")
    write_video(root / "salsa" / "hang.mp4", frames=10)
    write_video(root / "tango" / "segv.mp4", frames=10)
    (root / "salsa" / "empty.mp4").write_bytes(b"")
    (root / "tango" / "page.mp4").write_text("<html>504 Gateway Time-out</html>")
    write_truncated_avi(root / "salsa" / "overstated.avi", frames=40)  # claims 40 frames, holds ~20
    data = (root / "salsa" / "salsa0.mp4").read_bytes()
    (root / "tango" / "cut.mp4").write_bytes(data[: len(data) // 3])
    monkeypatch.setenv(decode_pool.DECODER_VARIABLE, SPEC)
    # The hanging decoder sleeps for an hour: that the build returns at all (within the suite's per-test
    # timeout) and names it "timed out after 20 s" shows the hang cost only its video. The timeout runs from
    # the video's hand-over to a worker, which may still be starting (after the crash, a fresh one): 20 s
    # leaves a busy machine room to start it and decode a good video.
    manifest = dancedata.build_shards(str(root), str(tmp_path / "out"), video_timeout=20, workers=2,
                                      val_fraction=0, test_fraction=0, **OPTIONS)
    reasons = {os.path.relpath(e["path"], root): e["reason"] for e in manifest["skipped"]}
    assert reasons == {
        "salsa/hang.mp4": "decoder timed out after 20 s",
        "tango/segv.mp4": "decoder crashed (signal 11, SIGSEGV)",
        "salsa/empty.mp4": "empty file (0 bytes)",
        "tango/page.mp4": "cannot be opened as a video (not a video file, or an unsupported codec)",
        "tango/cut.mp4": video_decoder.TRUNCATED,
    }
    from test_resume import split_of

    assert set(split_of(tmp_path / "out")) == set(good) | {"salsa/overstated"}
    assert [e["video_id"] for e in manifest["truncated"]] == ["salsa/overstated"]


@pytest.mark.parametrize("fault, text", [("nomem", "MemoryError"), ("eio", "Input/output error")])
def test_a_machine_failure_stops_the_build_instead_of_skipping(videos, reference, tmp_path, fault, text):
    root = tmp_path / "aist"
    shutil.copytree(videos, root)
    victim = sorted(root.glob("gLO*.mp4"))[0]
    (root / f"{fault}").mkdir()  # the fault is chosen by the path's file name: keep the AIST name, mark the folder
    marked = root / fault / victim.name
    victim.rename(marked)
    out = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, "-m", "dancedata.build_shards", str(root), "--out", str(out), *FLAGS, "--workers", "1"],
        capture_output=True, text=True, timeout=600, env=cli_env(**{decode_pool.DECODER_VARIABLE: SPEC}),
    )
    assert process.returncode == 1
    [line] = process.stderr.strip().splitlines()
    assert line.startswith("build_shards: error: decoding ") and "failed twice with" in line and text in line
    assert "not the video" in line and "run the same command to resume" in line
    assert not (out / "manifest.json").exists() and not list(out.glob("*.incomplete"))
    # The fault is gone (the machine is fixed): the same command resumes and equals a clean build.
    marked.rename(victim)
    (root / fault).rmdir()
    dancedata.build_shards(str(root), str(out), **OPTIONS)
    assert outputs(out, same_input=False) == outputs(reference, same_input=False)


def test_a_full_disk_stops_with_one_line_and_resumes(videos, reference, tmp_path, monkeypatch, capsys):
    written = []
    real_init = write.ShardWriter.__init__

    class FillingDisk:
        """TensorFlow's record writer on a disk that fills up after seven records."""

        def __init__(self, inner):
            self.inner = inner

        def write(self, serialized):
            if len(written) >= 7:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(1)
            self.inner.write(serialized)

        def close(self):
            self.inner.close()

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._writer = FillingDisk(self._writer)

    out = tmp_path / "out"
    monkeypatch.setattr(write.ShardWriter, "__init__", init)
    code = cli.run(build_main, "build_shards", [str(videos), "--out", str(out), *FLAGS])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "No space left on device" in line and "run the same command to resume" in line
    assert re.search(r"\.tfrecord\.\d+\.[0-9a-f]+\.incomplete", line)  # the file being written, never a final name
    assert not list(out.glob("*.incomplete")) and not (out / "manifest.json").exists()
    committed = {p.name for p in out.glob("*.tfrecord")}
    assert committed and all((out / ".build" / f"{n}.json").exists() for n in committed)
    monkeypatch.setattr(write.ShardWriter, "__init__", real_init)  # space freed
    assert cli.run(build_main, "build_shards", [str(videos), "--out", str(out), *FLAGS]) == 0
    assert outputs(out) == outputs(reference)


def test_an_unwritable_output_is_one_line(videos, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = cli.run(build_main, "build_shards", [str(videos), "--out", str(tmp_path / "file" / "out"), *FLAGS])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("build_shards: error: ") and str(tmp_path / "file") in line


def test_sigint_stops_a_build_and_it_resumes(videos, reference, tmp_path):
    """Ctrl-C after two shards are committed: the build ends because of it (exit status 130 and the
    documented line, no manifest: it did not run on to the end), and the same command finishes it."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*FROM_A_TERMINAL, sys.executable, "-m", "dancedata.build_shards", str(videos), "--out", str(out), *FLAGS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    deadline = time.monotonic() + 600
    while len(list((out / ".build").glob("*.tfrecord.json"))) < 2:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no two shards committed within 600 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "build_shards: interrupted; committed shards are kept; run the same command to resume"
    assert not (out / "manifest.json").exists() and not list(out.glob("*.incomplete"))
    dancedata.build_shards(str(videos), str(out), **OPTIONS)
    assert outputs(out) == outputs(reference)


def damage(folder, split="train"):
    shard = sorted(folder.glob(f"{split}-*.tfrecord"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return shard


def test_a_corrupted_shard_is_named_by_as_dataset_and_train(reference, tmp_path, capsys):
    import tensorflow as tf

    from dancedata.read import shard_error

    shards = tmp_path / "shards"
    shutil.copytree(reference, shards)
    bad = damage(shards)
    builder = dancedata.DatasetBuilder(str(shards))
    stream = dancedata.ReadConfig(source="stream")  # streamed: TFRecordDataset's own checks
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        for _ in builder.as_dataset("train", batch_size=4, read_config=stream):
            pass
    assert str(bad) in str(shard_error(caught.value))
    with pytest.raises(dancedata.ManifestError, match="does not match its sha256"):
        builder.as_dataset("train", read_config=dancedata.ReadConfig(source="stream", verify=True))
    with pytest.warns(UserWarning, match=f"damaged shard .*{bad.name}: [1-9][0-9]* of its records left out"):
        skipping = dancedata.ReadConfig(source="stream", skip_bad_shards=True)
        kept = sum(len(label) for _, label in builder.as_dataset("train", batch_size=4, read_config=skipping))
    assert kept < builder.info.splits["train"]

    # train.py maps the shard and checks it whole before training: the same shard, named, exit 2.
    argv = ["--shards", str(shards), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--no-cache"]
    assert cli.run(train_script.main, "train.py", argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"train.py: error: shard {bad} is corrupted: record ") and "fails its checksum" in line
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert cli.run(train_script.main, "train.py", argv + ["--skip-bad-shards", "--overwrite"]) == 0
    assert [str(w.message) for w in said].count(next(str(w.message) for w in said if "damaged shard" in str(w.message))) == 1


def test_a_truncated_shard_is_named_too(reference, tmp_path):
    import tensorflow as tf

    from dancedata.errors import ShardError
    from dancedata.read import shard_error

    shards = tmp_path / "shards"
    shutil.copytree(reference, shards)
    shard = sorted(shards.glob("val-*.tfrecord"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    # Streamed by byte range, found as the dataset is made (its size against its index); streamed records,
    # where they are reached.
    with pytest.raises((tf.errors.InvalidArgumentError, ShardError)) as caught:
        list(dancedata.DatasetBuilder(str(shards)).as_dataset("val", batch_size=4, read_config=dancedata.ReadConfig(source="stream")))
    named = caught.value if isinstance(caught.value, ShardError) else shard_error(caught.value)
    assert f"shard {shard} is corrupted or truncated" in str(named) or f"shard {shard} holds" in str(named)


def run_module(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env or cli_env(), cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "dancedata.build_shards", "{missing}"], "build_shards: error: input folder not found: {missing}"),
        (["-m", "dancedata.build_shards", "{videos}", "--image-size", "64", "--weights", "none", "--out", "{tmp}/o"],
         "build_shards: error: image_size 64 is too small for InceptionV3: it needs at least 75"),
        (["-m", "dancedata.build_shards", "{videos}", "--video-timeout", "-1"], "build_shards: error: video_timeout must be positive, got -1.0"),
        (["-m", "dancedata.inspect", "{missing}"], "inspect: error: no manifest.json in {missing}"),
        (["-m", "dancedata.predict", "{videos}/x.mp4", "--model", "{missing}"], "predict: error:"),
        (["train.py", "--shards", "{missing}"], "train.py: error: no manifest.json in {missing}"),
        (["train.py", "--epochs", "0"], "train.py: error: epochs must be positive, got 0"),
        (["-m", "dancedata.download", "{tmp}/d", "--accept-terms", "--processes", "0"], "download: error:"),
    ],
)
def test_cli_mistakes_are_one_line_without_tensorflow_chatter(videos, tmp_path, args, message):
    paths = {"missing": str(tmp_path / "missing"), "videos": str(videos), "tmp": str(tmp_path)}
    result = run_module(*[a.format(**paths) for a in args])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(**paths)), lines


def test_verbose_shows_tensorflow_start_up(videos, tmp_path):
    args = ["-m", "dancedata.build_shards", str(videos), "--image-size", "64", "--weights", "none", "--out", str(tmp_path / "o")]
    quiet, verbose = run_module(*args), run_module(*args, "--verbose")
    assert quiet.returncode == verbose.returncode == 2
    assert len(quiet.stderr.strip().splitlines()) == 1 < len(verbose.stderr.strip().splitlines())


def test_train_refuses_to_mix_runs(reference, tmp_path, capsys):
    argv = ["--shards", str(reference), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8"]
    assert cli.run(train_script.main, "train.py", argv) == 0
    capsys.readouterr()
    assert cli.run(train_script.main, "train.py", argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "already holds a finished run" in line and "--overwrite" in line
    (tmp_path / "run" / "logs" / "stale-event-file").write_text("from the first run")
    assert cli.run(train_script.main, "train.py", argv + ["--overwrite"]) == 0
    assert not (tmp_path / "run" / "logs" / "stale-event-file").exists()


class SlowHandler(http.server.BaseHTTPRequestHandler):
    requested: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name == "list.txt":
            body = "\n".join(f"gBR_sBM_c01_d{d:02d}_mBR0_ch01" for d in range(1, 9)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.requested.append(name)
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        try:
            for _ in range(200):  # 1 MiB at ~17 KB/s (a minute): cut short by Ctrl-C even on a slow machine
                self.wfile.write(b"\0" * 5243)
                self.wfile.flush()
                time.sleep(0.3)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_ctrl_c_stops_download_and_its_queued_transfers(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        process = subprocess.Popen(
            [*FROM_A_TERMINAL, sys.executable, "-m", "dancedata.download", str(tmp_path / "d"), "--accept-terms", "--quiet",
             "--list", base + "list.txt", "--base-url", base, "--processes", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
        )
        deadline = time.monotonic() + 600
        while len(list((tmp_path / "d").glob("*.part"))) < 2:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no two transfers started within 600 s"
            time.sleep(0.02)
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        # Stopped by the signal, not by the end of its work: exit status 130 and the line, and (below) the two
        # transfers under way were cut short (each takes a minute to serve) and the queued six never asked for.
        _, err = process.communicate(timeout=600)
        assert process.returncode == 130 and "download: interrupted; finished files are kept" in err
        assert len(SlowHandler.requested) == 2  # the six queued transfers never started
        assert len(list((tmp_path / "d").glob("*.part"))) == 2 and not list((tmp_path / "d").glob("*.mp4"))
    finally:
        server.shutdown()


def test_inspect_lists_decoder_failures(tmp_path, monkeypatch, capsys):
    root = tmp_path / "aist"
    make_aist_folder(root, genres=("BR", "PO"), performances=2, cameras=1, frames=6)
    add_bad_files(root)
    (root / "segv").mkdir()
    write_video(root / "segv" / "gBR_sBM_c01_d30_mBR0_ch09.mp4", frames=6)
    monkeypatch.setenv(decode_pool.DECODER_VARIABLE, SPEC)
    out = tmp_path / "out"
    dancedata.build_shards(str(root), str(out), **OPTIONS)
    assert inspect.main([str(out)]) == 0
    assert "decoder crashed (signal 11, SIGSEGV)" in capsys.readouterr().out
