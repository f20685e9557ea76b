"""The training run as a long job of its own (models/training_run.TrainingRun): owned, bound to its
build, resumable at any step to the same result bit for bit.

Oracles: a run never interrupted, of the same flags (its per-step losses, history, weights and
metrics); other processes (a second trainer, kill -9 at random moments, a full file-size limit); and a
second build with the same shard names but other weights."""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_EXTRACTOR, make_aist_folder

from dancedata import train as train_module
from dancedata.models import training_run
from dancedata.train_config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--epochs", "4", "--batch-size", "8", "--learning-rate", "0.01", "--seed", "3"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds of the same videos with the same shard names: the second with other backbone weights."""
    import dancedata

    base = tmp_path_factory.mktemp("training-run")
    make_aist_folder(base / "aist", performances=6, cameras=2, frames=6)
    dancedata.build_shards(str(base / "aist"), str(base / "shards"), frames=6, shard_mb=0.1, quiet=True, **FAST_EXTRACTOR)
    dancedata.build_shards(str(base / "aist"), str(base / "other"), frames=6, shard_mb=0.1, quiet=True,
                           **{**FAST_EXTRACTOR, "weights_seed": 7})
    return base


def _config(shards, out, **changes):
    fields = dict(shards=str(shards), out=str(out), epochs=4, batch_size=2, learning_rate=0.01, seed=3, cache="memory")
    return TrainConfig(**{**fields, **changes})


_ORIGINAL_BATCH_END = training_run.RunProgress.on_train_batch_end


def _record_steps(monkeypatch, seen: list, stops: list):
    """Records every training step's (epoch, step, running loss) and asks the run to stop (as SIGTERM
    does) after each global step in `stops`."""
    progress = _ORIGINAL_BATCH_END

    def on_train_batch_end(self, batch, logs=None):
        run = self.run
        step = self.offset + batch + 1
        seen.append((run.state.epoch, step, float(logs["loss"])))
        if stops and run.state.epoch * run.steps + step >= stops[0]:
            stops.pop(0)
            run.stop_requested = True
        progress(self, batch, logs)

    monkeypatch.setattr(training_run.RunProgress, "on_train_batch_end", on_train_batch_end)


def _weights(run):
    import keras

    return keras.saving.load_model(run / "model.keras").get_weights()


def _same_run(a, b):
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()
    for x, y in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(x, y)
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def _every_kind_of_stop(steps: int, epochs: int) -> list:
    """Global steps to stop after, chosen so that each kind of position is stopped at, not sampled: every
    step of an epoch (step j of epoch j % epochs, so every epoch has its share), the end of every epoch and
    the step after it (the epoch's last batch, then a resume that stops after one step), the run's first two
    steps and its last one: 22 stops at 16 steps an epoch. The 50 random stops this replaced covered these
    kinds by chance only (never steps 2 or 12), at 51 runs' cost: each stop is a new run (model, datasets,
    restore)."""
    total = steps * epochs
    stops = {(j % epochs) * steps + j for j in range(1, steps + 1)} | {1, 2, total - 1}
    stops |= {k * steps + d for k in range(1, epochs) for d in (0, 1)}
    return sorted(stop for stop in stops if 0 < stop < total)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("cache, count", [("memory", "every-kind"), ("none", 3), ("device", 3)])
def test_stopped_at_random_steps_a_run_continues_bit_for_bit(builds, tmp_path, monkeypatch, cache, count):
    """One run stopped (with a checkpoint at that step) at `count` random steps (or at every kind of
    position, _every_kind_of_stop), each time continued by a new run object: every later step's loss, the
    history, the final weights and metrics.json equal an uninterrupted run's."""
    whole, seen_whole = tmp_path / "whole", []
    _record_steps(monkeypatch, seen_whole, [])
    train_module.train(_config(builds / "shards", whole, cache=cache))
    steps = max(step for _, step, _ in seen_whole)
    total = len(seen_whole)
    assert total == 4 * steps, total
    if count == "every-kind":
        stops = _every_kind_of_stop(steps, 4)
        assert {(stop - 1) % steps for stop in stops} == set(range(steps)) and len(stops) > 3, stops
    else:
        assert total > count, total
        stops = sorted(random.Random(count).sample(range(1, total), count))
    cut, seen = tmp_path / "cut", []
    _record_steps(monkeypatch, seen, list(stops))
    resumed = 0
    while True:
        try:
            train_module.train(_config(builds / "shards", cut, cache=cache))
            break
        except KeyboardInterrupt:
            resumed += 1
            state = json.loads((cut / "checkpoints" / "state.json").read_text())
            assert state["epoch"] * steps + state["step"] == stops[resumed - 1]
    assert resumed == len(stops)
    assert seen == seen_whole  # every step once, the same batches (the same losses) in the same order
    _same_run(cut, whole)


def _train(shards, out, *extra, wait=True, **popen):
    argv = [sys.executable, os.path.join(ROOT, "train.py"), "--shards", str(shards), "--out", str(out), *FLAGS, *extra]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it (conftest sets it)
    if wait:
        return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, **popen)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def _wait_for(predicate, process, what: str, limit: float = 600):
    deadline = time.monotonic() + limit
    while not predicate():
        assert process.poll() is None, f"the run ended before {what}: " + process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.002)


def _committed(out):
    try:
        state = json.loads((out / "checkpoints" / "state.json").read_text())
        return state["epoch"], state["step"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.timeout(2400)
def test_kill_9_at_random_moments_changes_nothing_in_the_result(builds, tmp_path):
    """Three kill -9s of train.py --checkpoint-every 1 at random moments after its first commit (one of
    them as soon as a checkpoint's temporary file appears, i.e. during a write), each followed by the
    same command: the run ends as an uninterrupted one does."""
    extra = ["--cache", "none", "--checkpoint-every", "1"]
    whole = _train(builds / "shards", tmp_path / "whole", *extra)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out, rng = tmp_path / "cut", random.Random(11)
    for attempt in range(3):
        process = _train(builds / "shards", out, *extra, wait=False)
        first = _committed(out)
        _wait_for(lambda: _committed(out) not in (None, first), process, "a new commit")
        if attempt == 1:  # during a write: a temporary checkpoint or state file exists
            checkpoints = out / "checkpoints"
            _wait_for(lambda: any(p.name.startswith(".") for p in checkpoints.iterdir()), process, "a checkpoint write")
        else:
            time.sleep(rng.uniform(0, 1.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.communicate(timeout=120)
    again = _train(builds / "shards", out, *extra)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no killed write left
    _same_run(out, tmp_path / "whole")


def test_a_kill_before_the_first_commit_starts_afresh_and_leftovers_go(builds, tmp_path):
    """What a kill during the first state write leaves (run.json, a temporary state, logs) is started
    afresh by the same command, not refused."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "run.json").write_text("{}")
    (out / "checkpoints" / ".state.json.4242").write_text('{"epo')
    (out / "logs").mkdir()
    done = _train(builds / "shards", out, "--epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped before its first checkpoint: starting it afresh" in done.stderr
    assert not (out / "checkpoints" / ".state.json.4242").exists()
    assert json.loads((out / "checkpoints" / "state.json").read_text())["status"] == "done"


def test_two_trainers_never_share_a_folder(builds, tmp_path):
    out = tmp_path / "run"
    first = _train(builds / "shards", out, "--epochs", "30", wait=False)
    try:
        _wait_for(lambda: _committed(out) is not None, first, "the first run's state")
        second = _train(builds / "shards", out, "--epochs", "30")
        assert second.returncode == 2
        [line] = second.stderr.strip().splitlines()
        assert line.startswith(f"train.py: error: {out} is in use by another training run (pid {first.pid} on host ")
    finally:
        first.kill()
        first.communicate()
    # The holder died (kill -9): its lock is taken over, said so, and the run resumes.
    again = _train(builds / "shards", out, "--epochs", "30")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"train.py: taking over {out} from pid {first.pid} on host " in again.stderr


def test_a_resume_against_another_build_is_refused_naming_what_changed(builds, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(builds / "shards", shards)
    out = tmp_path / "run"
    process = _train(shards, out, "--epochs", "10", wait=False)
    _wait_for(lambda: (_committed(out) or (0, 0))[0] >= 1, process, "epoch 1's commit")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    shutil.rmtree(shards)
    shutil.copytree(builds / "other", shards)  # the same shard names, other features
    refused = _train(shards, out, "--epochs", "10")
    assert refused.returncode == 2
    taken, line = refused.stderr.strip().splitlines()  # the killed run's lock is taken over (said), then the refusal
    assert taken.startswith(f"train.py: taking over {out} from pid {process.pid} ")
    assert line.startswith(f"train.py: error: {shards} is not the build this run in {out} read (")
    assert "the extractor's weights" in line and "--accept-other-build" in line
    accepted = _train(shards, out, "--epochs", "10", "--accept-other-build")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "on another build (" in accepted.stderr


def test_a_build_changed_under_a_live_run_stops_it_saying_so(builds, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(builds / "shards", shards)
    out = tmp_path / "run"
    process = _train(shards, out, "--epochs", "200", "--cache", "none", wait=False)
    _wait_for(lambda: (_committed(out) or (0, 0))[0] >= 1, process, "epoch 1's commit")
    shutil.copy(builds / "other" / "manifest.json", shards / "manifest.json.new")
    os.replace(shards / "manifest.json.new", shards / "manifest.json")  # as a build --update commits its manifest
    _, err = process.communicate(timeout=600)
    assert process.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: the build in {shards} changed while this run read it (")
    assert "its last checkpoint (after epoch " in last and "Rebuild" not in last and "rebuild" not in last


def _limit_file_size(limit):
    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk does
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limited


def test_a_failed_checkpoint_write_says_which_file_and_what_is_kept(builds, tmp_path):
    out = tmp_path / "run"
    failed = _train(builds / "shards", out, "--cache", "none", preexec_fn=_limit_file_size(200_000))
    assert failed.returncode == 1, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: cannot write {out}/")
    assert "free space (or fix the folder) and run the same command to continue" in last
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    again = _train(builds / "shards", out, "--cache", "none")
    assert again.returncode == 0, again.stderr[-3000:]


def test_the_state_besides_weights_is_tiny(builds, tmp_path, monkeypatch):
    """state.json plus what a checkpoint holds besides weights and optimizer slots (seed generators,
    the epoch's metric accumulators) is at most 1 KiB, inside an epoch too."""
    out = tmp_path / "run"
    _record_steps(monkeypatch, [], [5])
    with pytest.raises(KeyboardInterrupt):
        train_module.train(_config(builds / "shards", out))
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["step"] == 5
    with np.load(out / "checkpoints" / state["checkpoint"]) as saved:
        small = sum(saved[k].nbytes for k in saved.files if not k.startswith(("weights/", "optimizer/")))
        assert any(k.startswith("metrics/") for k in saved.files) and any(k.startswith("seeds/") for k in saved.files)
    size = small + (out / "checkpoints" / "state.json").stat().st_size
    assert size <= 1024, size


@pytest.mark.parametrize("text, said", [
    ("[1, 2, 3]", "a JSON list, not an object"),
    ('{"epoch": -1, "status": "training"}', "epoch -1"),
    ('{"epoch": 1, "status": "training", "checkpoint": "../../etc/passwd"}', "it may name only its own checkpoint files"),
    ('{"epoch": 1, "status": "training", "sinve_best": 0}', "keys "),
    ('{"epoch": 1, "status": "whatever"}', "status 'whatever'"),
    ("{\"epo", "cannot read"),
])
def test_a_state_that_is_not_ours_is_one_line(builds, tmp_path, text, said):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "state.json").write_text(text)
    refused = _train(builds / "shards", out)
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert said in line and "state.json" in line and "--overwrite" in line
