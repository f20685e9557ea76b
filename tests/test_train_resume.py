"""Training as a long job: an interrupted run (Ctrl-C, SIGTERM, kill -9) continues with the same
command to the same result as an uninterrupted one, bitwise on CPU. The oracle is an uninterrupted
run of the same flags in its own process; interruptions are real signals to real processes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_EXTRACTOR, make_aist_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--epochs", "10", "--batch-size", "8", "--learning-rate", "0.01", "--seed", "3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    import dancedata

    base = tmp_path_factory.mktemp("resume-train")
    make_aist_folder(base / "aist", performances=6, cameras=2, frames=6)
    dancedata.build_shards(str(base / "aist"), str(base / "shards"), frames=6, shard_mb=0.1, quiet=True, **FAST_EXTRACTOR)
    return base / "shards"


def _train(shards, out, *extra, wait=True):
    argv = [sys.executable, os.path.join(ROOT, "train.py"), "--shards", str(shards), "--out", str(out), *FLAGS, *extra]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it (conftest sets it)
    if wait:
        return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _interrupt_after(process, out, epochs: int, how):
    state = out / "checkpoints" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if json.loads(state.read_text())["epoch"] >= epochs:
                break
        except (OSError, ValueError, KeyError):
            pass
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.005)
    process.send_signal(how)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def _weights(run):
    import keras

    return keras.saving.load_model(run / "model.keras").get_weights()


@pytest.mark.parametrize("cache, how", [("memory", signal.SIGINT), ("none", signal.SIGKILL), ("device", signal.SIGTERM)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(shards, tmp_path, cache, how):
    extra = ["--cache", cache, "--patience", "4"]
    whole = _train(shards, tmp_path / "whole", *extra)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "cut"
    code, err = _interrupt_after(_train(shards, out, *extra, wait=False), out, 3, how)
    assert code != 0 and not (out / "model.keras").exists()
    if how != signal.SIGKILL:
        assert code == 130 and err.strip().splitlines()[-1] == (
            "train.py: interrupted; run the same command to continue from its last checkpoint")
    again = _train(shards, out, *extra)
    assert again.returncode == 0, again.stderr[-2000:]
    [said] = [line for line in again.stderr.splitlines() if line.startswith("resuming the run in")]
    assert f"resuming the run in {out} after epoch " in said and " of 10 " in said
    assert (out / "history.csv").read_text() == (tmp_path / "whole" / "history.csv").read_text()
    for a, b in zip(_weights(out), _weights(tmp_path / "whole")):
        np.testing.assert_array_equal(a, b)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "whole" / "metrics.json").read_text())


def test_a_resume_with_other_flags_is_refused_and_a_finished_run_too(shards, tmp_path):
    out = tmp_path / "run"
    code, _ = _interrupt_after(_train(shards, out, wait=False), out, 2, signal.SIGINT)
    assert code == 130
    changed = _train(shards, out, "--learning-rate", "0.02")
    assert changed.returncode == 2
    [line] = changed.stderr.strip().splitlines()
    assert "holds an interrupted run with other flags (--learning-rate 0.01 → 0.02)" in line
    assert _train(shards, out).returncode == 0
    done = _train(shards, out)
    assert done.returncode == 2 and "already holds a finished run; pass --overwrite" in done.stderr
    assert _train(shards, out, "--overwrite", "--epochs", "1").returncode == 0


def test_a_one_genre_build_is_said_everywhere_and_refused_by_train(tmp_path):
    import dancedata
    from dancedata import inspect

    make_aist_folder(tmp_path / "aist", genres=("BR",), performances=4, cameras=1, frames=6)
    build = subprocess.run([sys.executable, "-m", "dancedata.build_shards", str(tmp_path / "aist"), "--out", str(tmp_path / "one"),
                            "--frames", "6", "--backbone", "ResNet50", "--weights", "none", "--image-size", "32",
                            "--batch-size", "6", "--quiet"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert build.returncode == 0, build.stderr[-2000:]
    said = "WARNING: the train split holds examples of 1 genre(s) (BR): a classifier cannot learn to tell genres apart"
    assert said in build.stdout and all(line.startswith("WARNING") for line in build.stdout.splitlines())  # --quiet
    assert "genre(s) HO, JB, JS, KR, LH, LO, MH, PO, WA have no video in the input" in build.stdout
    manifest = dancedata.DatasetBuilder(str(tmp_path / "one")).manifest
    assert said in inspect.summary(manifest)
    refused = _train(tmp_path / "one", tmp_path / "run")
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("train.py: error: ") and "holds examples of 1 genre(s) (BR)" in line


def test_a_run_prints_nothing_the_user_did_not_ask_for(shards, tmp_path):
    done = _train(shards, tmp_path / "run", "--epochs", "3")
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() + done.stdout.splitlines()  # absl lines, Python warnings
             if line[:5] in ("E0000", "W0000", "I0000") or "Warning:" in line or "WARNING: All log messages" in line]
    assert not noise, noise
    assert not any("ran out of data" in line for line in done.stderr.splitlines())


def test_a_held_out_validation_follows_the_split_strategy(tmp_path):
    """Under --split dancer, validation held out of train takes whole dancer groups: no dancer is on both
    sides (by sequence, a dancer's other performances stay in train). Every reader holds out the same."""
    import dancedata
    from conftest import GENRE_COLOURS, aist_name, write_video

    root = tmp_path / "aist"
    root.mkdir()
    for g, genre in enumerate(("BR", "PO", "LO", "HO")):
        for d in range(4):  # each dancer dances three choreographies
            for c in range(3):
                stem = aist_name(genre, camera=1, dancer=10 * g + d + 1, music=c, choreo=c + 1)
                write_video(root / f"{stem}.mp4", frames=8, colour=GENRE_COLOURS[genre], seed=100 * g + 10 * d + c)
    out = tmp_path / "shards"
    dancedata.build_shards(str(root), str(out), frames=4, shard_mb=0.05, quiet=True, split="dancer", val_fraction=0,
                           test_fraction=0.25, **FAST_EXTRACTOR)
    builder = dancedata.DatasetBuilder(str(out))
    assert "val" not in builder.info.splits
    held, shared = builder.holdout_part("train", 0.4, "dancer")
    assert held and shared["dancers"]["shared"] == 0
    assert builder.holdout_part("train", 0.4, "sequence")[1]["dancers"]["shared"] > 0  # what the old rule did
    validation = dancedata.ReadConfig(holdout=dancedata.Holdout(0.4, by="dancer", part="held"))
    options = dict(batch_size=4, read_config=validation, example_config=dancedata.ExampleConfig(with_metadata=True))
    seen = {s.decode() for _, _, meta in builder.as_dataset("train", **options) for s in meta["sequence_id"].numpy()}
    assert seen == {s.decode() for s in held}
    rest = dancedata.Holdout(0.4, by="dancer")
    mapped = [y.numpy().tolist() for _, y in builder.as_dataset(
        "train", batch_size=4, read_config=dancedata.ReadConfig(shuffle=True, seed=1, holdout=rest))]
    streamed = [y.numpy().tolist() for _, y in dancedata.DatasetBuilder(str(out)).as_dataset(
        "train", batch_size=4, read_config=dancedata.ReadConfig(shuffle=True, seed=1, holdout=rest, source="stream"))]
    assert mapped == streamed and sum(map(len, mapped)) == builder.info.splits["train"] - len(seen) * 1
    run = _train(out, tmp_path / "run", "--epochs", "2", "--val-fraction", "0.4")
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["validation"]["by"] == "dancer" and metrics["validation"]["shared_with_train"]["dancers"]["shared"] == 0
