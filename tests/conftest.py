"""Fixtures: tiny videos written with OpenCV inside the tests, never downloads."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

# One colour per genre, so a correct pipeline can learn genre from pixels (BGR).
GENRE_COLOURS = {"BR": (0, 0, 220), "PO": (0, 200, 0), "LO": (220, 0, 0), "HO": (0, 220, 220)}
FAST_EXTRACTOR = {"backbone": "ResNet50", "weights": "none", "image_size": 32, "batch_size": 8}
# ~34 KB per example at 8 frames x 2048 float16: about three examples per shard, so every split has several.
SMALL_SHARDS = {"frames": 8, "shard_mb": 0.1, "quiet": True, **FAST_EXTRACTOR}
BUILD_FLAGS = ["--frames", "8", "--shard-mb", "0.1", "--backbone", "ResNet50", "--weights", "none", "--image-size", "32",
               "--batch-size", "8", "--quiet"]
TESTS = os.path.dirname(os.path.abspath(__file__))

# A hang fails its test, not the run. pytest-timeout (`timeout` in pyproject.toml, method "signal") raises in
# the test when its limit is up, and the test's own clean-up (killing the processes it started) still runs.
# A SIGALRM acts only once the main thread runs Python again: a test stuck inside one C call (a TensorFlow op
# that never returns) ignores it. For that case faulthandler, from a C thread, prints every thread's stack
# LAST_RESORT_S after the limit and ends the run: CI fails with the stacks instead of hanging.
LAST_RESORT_S = 300
_stderr_fd = None


# Under pytest-xdist (the README's `-n 2 --dist loadfile`) each file goes whole to one of two processes,
# handed out in the order the processes collected them. These files take minutes each (measured on 2 cores);
# handed out last, one of them would run alone while the other process idles, so they go first and the many
# short files fill in behind them. The rest go by their number of tests, as xdist orders files by default.
SLOW_FILES_FIRST = ("test_finetune.py", "test_training_run.py", "test_folder_names.py", "test_train_resume.py")


def pytest_configure(config):
    global _stderr_fd
    _stderr_fd = os.dup(2)  # the terminal's stderr (output capture is not on yet): fd 2 is a capture file in a test
    if getattr(config.option, "loadscopereorder", None):
        config.option.loadscopereorder = False  # files go in the collected order: pytest_collection_modifyitems's


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the files in their usual order
    import collections

    tests_in = collections.Counter(item.path for item in items)
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), -tests_in[item.path]))  # stable: files stay whole


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    import faulthandler

    if settings.timeout and settings.timeout > 0 and _stderr_fd is not None:
        faulthandler.dump_traceback_later(settings.timeout + LAST_RESORT_S, exit=True, file=_stderr_fd)
    return None  # pytest-timeout's own timer is set too


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item):
    import faulthandler

    faulthandler.cancel_dump_traceback_later()
    return None


# Put before a command, what a terminal gives the command it starts: SIGINT at its default and unblocked
# (then exec'd: the same process). A test process can have it ignored from its start: bash ignores SIGINT in
# what it runs with `&` (a CI step, `nohup pytest ... &`), pytest-xdist's workers inherit that, and an
# ignored signal stays ignored across exec, so a Ctrl-C test's command would never see its Ctrl-C.
FROM_A_TERMINAL = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); os.execv(sys.argv[1], sys.argv[1:])"]


def _ctrl_c_state():
    """This process's Ctrl-C as its children inherit it: the main thread's SIGINT handler as Python and as
    the kernel see it (C code can change the latter alone), and whether the main thread blocks SIGINT. An
    ignored or blocked signal stays so across exec."""
    import signal

    kernel = {}
    try:
        with open("/proc/thread-self/status") as status:  # this (the main) thread's
            for line in status:
                if line.startswith(("SigIgn:", "SigBlk:")):
                    kernel[line[:6]] = bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    except OSError:  # no /proc: Python's view only
        pass
    return signal.getsignal(signal.SIGINT), kernel


@pytest.fixture(autouse=True)
def _ctrl_c_left_as_found():
    """A program that calls dancedata keeps its own Ctrl-C: checked after every test, since a test that
    left SIGINT ignored or blocked also breaks every Ctrl-C test run after it in the same process."""
    before = _ctrl_c_state()
    yield
    assert _ctrl_c_state() == before, f"SIGINT (handler, ignored/blocked) was {before}, left as {_ctrl_c_state()}"


def build_outputs(folder, same_input=True):
    """{name: content} of everything a reader uses: shards and manifest (build_info.json is timings by
    design). Built from another copy of the input folder, the manifest is compared without `source`."""
    import json

    found = {p.name: p.read_bytes() for p in sorted(folder.iterdir())
             if p.is_file() and p.name != "build_info.json" and not p.name.startswith(".dancedata")}  # locks: not outputs
    if not same_input:
        found["manifest.json"] = {k: v for k, v in json.loads(found["manifest.json"]).items() if k not in ("source", "checksum")}
    return found


def host_array(tensor):
    """A CPU tensor's own memory as a numpy array (DLPack: no copy), to check what memory TensorFlow uses."""
    import tensorflow as tf

    class Exported:
        def __init__(self, capsule):
            self.capsule = capsule

        def __dlpack__(self, **_):
            return self.capsule

        def __dlpack_device__(self):
            return 1, 0  # the CPU

    return np.from_dlpack(Exported(tf.experimental.dlpack.to_dlpack(tensor)))


def cli_env(**extra):
    """The environment for a dancedata subprocess: tests/ importable (the fault-injecting decoder)."""
    return {**os.environ, "PYTHONPATH": TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def write_video(path, frames=12, colour=(0, 0, 255), size=(48, 64), fps=30, seed=0):
    """An mp4v video of `frames` frames: a coloured square moving over noise; frame i has i encoded in a bar."""
    height, width = size
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), path
    for i in range(frames):
        image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        x = (i * 3) % (width - 20)
        image[10:30, x : x + 20] = colour
        writer.write(image)
    writer.release()
    return path


def aist_name(genre, camera=1, dancer=1, music=0, choreo=1, situation="BM"):
    return f"g{genre}_s{situation}_c{camera:02d}_d{dancer:02d}_m{genre}{music}_ch{choreo:02d}"


def make_aist_folder(root, genres=("BR", "PO", "LO", "HO"), performances=3, cameras=2, frames=12):
    """genres x performances x cameras AIST-named videos; returns {video_id: genre}."""
    root.mkdir(parents=True, exist_ok=True)
    made = {}
    for g, genre in enumerate(genres):
        for p in range(performances):
            for c in range(1, cameras + 1):
                stem = aist_name(genre, camera=c, dancer=g * max(performances, 4) + p + 1, music=p % 6, choreo=p + 1)
                write_video(root / f"{stem}.mp4", frames=frames, colour=GENRE_COLOURS[genre], seed=len(made))
                made[stem] = genre
    return made


def make_class_folders(root, labels=("salsa", "tango"), count=2, frames=4):
    """One subfolder of `count` non-AIST-named videos per label (no grouping information)."""
    for label in labels:
        (root / label).mkdir(parents=True)
        for i in range(count):
            write_video(root / label / f"{label}{i}.mp4", frames=frames, seed=i)
    return root


@pytest.fixture
def aist_folder(tmp_path):
    root = tmp_path / "aist"
    return root, make_aist_folder(root)


def write_truncated_avi(path, frames=40, keep=0.5):
    """An MJPG AVI whose header claims `frames` but whose data is cut after `keep` of its bytes."""
    full = path.with_suffix(".full.avi")
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for i in range(frames):
        writer.write(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def add_bad_files(root):
    """Files a real download folder has: empty, truncated, not a video, unlabelled; returns their names."""
    (root / "gBR_sBM_c01_d20_mBR0_ch10.mp4").write_bytes(b"")
    data = (root / next(p.name for p in sorted(root.glob("g*.mp4")))).read_bytes()
    (root / "gPO_sBM_c01_d21_mPO0_ch11.mp4").write_bytes(data[: len(data) // 3])  # mp4 cut: index lost
    (root / "gLO_sBM_c01_d22_mLO0_ch12.mp4").write_text("<html>504 Gateway Time-out</html>")
    (root / "README.txt").write_text("not a video")
    write_video(root / "sSH_c01_v0.mp4", frames=4)
    return {
        "gBR_sBM_c01_d20_mBR0_ch10.mp4": "empty file",
        "gPO_sBM_c01_d21_mPO0_ch11.mp4": "truncated: ",
        "gLO_sBM_c01_d22_mLO0_ch12.mp4": "cannot be opened",
        "README.txt": "not a video file",
        "sSH_c01_v0.mp4": "showcase",
    }


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One build shared by the reader tests: 4 genres x 4 performances x 2 cameras, plus bad files."""
    import dancedata

    root = tmp_path_factory.mktemp("data") / "aist"
    made = make_aist_folder(root, performances=4)
    write_truncated_avi(root / "gHO_sBM_c01_d23_mHO0_ch13.avi", frames=40)
    made["gHO_sBM_c01_d23_mHO0_ch13"] = "HO"
    bad = add_bad_files(root)
    out = root.parent / "tfrecords"
    # ~34 KB per example: shard_mb=0.1 puts about three in each shard, so every split has several shards.
    manifest = dancedata.build_shards(str(root), str(out), frames=8, shard_mb=0.1, quiet=True, **FAST_EXTRACTOR)
    return {"root": root, "out": out, "manifest": manifest, "videos": made, "bad": bad}


LEARNING_TRAIN_FLAGS = ["--epochs", "25", "--batch-size", "8", "--learning-rate", "0.01", "--seed", "0"]


@pytest.fixture(scope="session")
def learning_run(tmp_path_factory):
    """Shards where genre is visible in the pixels (one colour per genre) and a run trained on them:
    (base folder, {video_id: genre}); shards in base/shards, the run in base/run."""
    import dancedata
    from dancedata import train as train_script
    from dancedata import cli

    base = tmp_path_factory.mktemp("learn")
    made = make_aist_folder(base / "aist", performances=10, cameras=2, frames=6)  # 60 train, 10 test videos with seed 0
    dancedata.build_shards(str(base / "aist"), str(base / "shards"), frames=6, shard_mb=0.1, quiet=True, **FAST_EXTRACTOR)
    argv = ["--shards", str(base / "shards"), "--out", str(base / "run"), *LEARNING_TRAIN_FLAGS]
    assert cli.run(train_script.main, "train.py", argv) == 0
    return base, made
