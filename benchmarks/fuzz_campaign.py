"""A seeded fuzz campaign over every file a build folder holds: does any damage crash a command, hang
it, make it allocate out of proportion, or go unnoticed?

    python benchmarks/fuzz_campaign.py --cases 10000 --seed 0 [--rerun-every 100] [--out report.json]
    python benchmarks/fuzz_campaign.py --cases 0 --run-cases 300     (the run folder only: see RunCampaign)

Builds one tiny folder (tiny synthetic videos, stored frames kept, an extractor without weights), then
for each case: picks a file of the folder (shards, indexes, manifest.json, feature_statistics.json, the
TFDS metadata, build_info.json, .build/plan.json and the shards' records), damages it (a flipped bit,
flipped bytes, a cut, a zeroed 4 KiB page, appended garbage, two records swapped or one duplicated,
the file deleted), runs one command on it in this process (inspect, inspect --verify, inspect --repair,
the reader, and every --rerun-every cases the build again: plain, --update or --overwrite in turn),
puts the file back, and sorts the outcome:

  refused      the command stopped with dancedata's one-line error naming the damaged file
  detected     inspect listed the file as DAMAGED (exit 1)
  repaired     the build's rerun, --update or --overwrite (or inspect --repair) left the folder byte
               for byte as built
  ignored      the command does not read that file, and succeeded (build_info.json: timings only;
               .build/ for readers; the TFDS metadata and statistics for the reader), or plain
               inspect passed a change inside a record's data, which only --verify finds (documented)
  TRACEBACK    any other exception                          } failures: the campaign exits 1
  SILENT       the command succeeded on a file it reads     }
  WRONG-FILE   our error, naming another file               }
  HANG         no answer within --timeout seconds           }
  ALLOCATION   the process's peak memory grew by > 256 MiB  }
  KEPT         --overwrite did not start over (it refused)  }

"Silently accepted" is decided by an oracle independent of the checks under test: the damaged bytes
differ from the original, the command reads that file (its contract covers it), and it reported success.

With --run-cases, it also trains a tiny run, interrupts it after its first epoch, and damages the files of
that run folder (a resume reads them: state, run.json, the checkpoint, history.csv) and of its finished
resume (predict reads model.keras, dataset.json and labels.json); three cases in four damage a file the
command reads. The oracle is the undamaged resume (see the comment above RunCampaign). Outcomes there:
refused, resumed (the reference's exact result), unaffected (predict: damage that changed nothing it reads),
ignored (a file the command does not read), and the failures above, plus EXIT (another exit status). A
resume trains an epoch: seconds a case.

tests/test_fuzz.py runs a few hundred of the same cases in CI; this script runs as many as asked.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback

COMMANDS = ("inspect", "verify", "read", "rerun", "update", "overwrite", "repair")
BUILDS = ("rerun", "update", "overwrite")  # the build command again, over the damaged folder
DAMAGES = ("bit", "bytes", "cut", "page", "append", "swap", "duplicate", "delete")
FAILURES = ("TRACEBACK", "SILENT", "WRONG-FILE", "HANG", "ALLOCATION", "KEPT")
OPTIONS = dict(frames=4, shard_mb=0.03, quiet=True, backbone="ResNet50", weights="none", image_size=32, batch_size=8,
               keep_frames="jpeg", workers=1)


def write_videos(root: str, genres=("BR", "PO"), performances: int = 3, frames: int = 6) -> None:
    """Tiny AIST-named videos, one colour per genre (OpenCV, inside the campaign: nothing downloaded)."""
    import cv2
    import numpy as np

    os.makedirs(root, exist_ok=True)
    colours = {"BR": (0, 0, 220), "PO": (0, 200, 0), "LO": (220, 0, 0), "HO": (0, 220, 220)}
    for genre in genres:
        for p in range(performances):
            name = f"g{genre}_sBM_c01_d{p + 1:02d}_m{genre}0_ch{p + 1:02d}.mp4"
            writer = cv2.VideoWriter(os.path.join(root, name), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
            rng = np.random.default_rng(p)
            for _ in range(frames):
                frame = np.full((48, 64, 3), colours[genre], np.uint8)
                writer.write(np.clip(frame.astype(int) + rng.integers(-20, 20, frame.shape), 0, 255).astype(np.uint8))
            writer.release()


def make_build(base: str) -> tuple[str, str]:
    """(videos folder, build folder) of a tiny build with several shards per split and every file kind."""
    import dancedata

    videos, out = os.path.join(base, "videos"), os.path.join(base, "shards")
    write_videos(videos)
    dancedata.build_shards(videos, out, **OPTIONS)
    return videos, out


def files_of(folder: str) -> list:
    """Every file of the build folder (the lock file aside: it is the lock's, not the build's)."""
    found = []
    for where, _, names in os.walk(folder):
        for name in names:
            if not name.startswith(".dancedata"):
                found.append(os.path.relpath(os.path.join(where, name), folder))
    return sorted(found)


# ---------------------------------------------------------------------------------------------------
# Damage


def _records(data: bytes, name: str) -> list:
    """(start, end) of the file's records: a TFRecord's framed records, an index's table rows, or a
    text file's lines; [] when the file has no such structure."""
    if name.endswith(".tfrecord"):
        spans, at = [], 0
        while at + 16 <= len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            if at + 16 + length > len(data):
                break
            spans.append((at, at + 16 + length))
            at += 16 + length
        return spans
    if name.endswith(".index") and len(data) > 12:
        (length,) = struct.unpack_from("<I", data, 8)
        start, row = 12 + length, 9 * 8
        return [(start + i * row, start + (i + 1) * row) for i in range((len(data) - 4 - start) // row)]
    spans, at = [], 0
    for line in data.splitlines(keepends=True):
        spans.append((at, at + len(line)))
        at += len(line)
    return spans


def damage(data: bytes, name: str, kind: str, rng: random.Random) -> bytes | None:
    """`data` damaged as `kind` says (None: the file deleted); the same bytes back when the kind cannot
    change this file (the caller draws again)."""
    if kind == "delete":
        return None
    if kind == "append":
        return data + bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 16, 100))))
    if not data:
        return data
    if kind == "bit":
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    if kind == "bytes":
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == "cut":
        return data[:rng.randrange(len(data))]
    if kind == "page":
        page = rng.randrange((len(data) + 4095) // 4096) * 4096
        return data[:page] + bytes(len(data[page:page + 4096])) + data[page + 4096:]
    spans = _records(data, name)
    if kind == "swap" and len(spans) >= 2:
        i, j = sorted(rng.sample(range(len(spans)), 2))
        (a, b), (c, d) = spans[i], spans[j]
        return data[:a] + data[c:d] + data[b:c] + data[a:b] + data[d:]
    if kind == "duplicate" and spans:
        a, b = spans[rng.randrange(len(spans))]
        return data[:b] + data[a:b] + data[b:]
    return data


def data_only(original: bytes, damaged: bytes | None, name: str) -> bool:
    """Whether a shard's damage left its size and every record's 16 framing bytes alone: what plain
    inspect, by its documented contract, does not read (--verify and the reader do)."""
    if damaged is None or len(damaged) != len(original) or not name.endswith(".tfrecord"):
        return False
    changed = [i for i in range(len(original)) if original[i] != damaged[i]] if len(original) < 1 << 20 else None
    if changed is None:
        return False
    framing = set()
    for start, end in _records(original, name):
        framing.update(range(start, start + 12))
        framing.update(range(end - 4, end))
    return not framing.intersection(changed)


# ---------------------------------------------------------------------------------------------------
# Commands, each run in this process; the outcome's text is what a user would see.


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _run_cli(main, prog: str, argv: list) -> tuple[int, str, str]:
    from dancedata import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.run(main, prog, argv, tensorflow=False)
    return code, out.getvalue(), err.getvalue()


def _epoch(folder: str, splits: list) -> list:
    """One epoch of each split, read the default way (on_damage stops), as comparable bytes."""
    import dancedata

    builder = dancedata.DatasetBuilder(folder)
    read = []
    for split in splits:
        if split in builder.info.splits:
            for (features, mask), label in builder.as_dataset(split, batch_size=64):
                read.append((features.numpy().tobytes(), mask.numpy().tobytes(), label.numpy().tobytes()))
    return read


def run_command(command: str, folder: str, videos: str, expected: dict) -> tuple[str, str]:
    """(status, text): status "ok", "refused" (our one-line error), "detected" (inspect's DAMAGED list),
    or "different" (the reader succeeded with other data than the build's)."""
    from dancedata import inspect
    from dancedata.build_shards import main as build_main
    from dancedata.errors import DanceDataError

    if command in ("inspect", "verify", "repair"):
        flags = {"inspect": [], "verify": ["--verify"], "repair": ["--repair"]}[command]
        code, out, err = _run_cli(inspect.main, "inspect", [folder, *flags])
        if code == 2:
            return "refused", err.strip()
        if code == 1:
            return "detected", "\n".join(line for line in out.splitlines() if line.startswith("DAMAGED: "))
        return ("ok" if code == 0 else "TRACEBACK"), err.strip()[-400:]
    if command == "read":
        try:
            read = _epoch(folder, expected["splits"])
        except DanceDataError as error:
            return "refused", str(error)
        return ("ok" if read == expected["read"] else "different"), ""
    again = {"rerun": [], "update": ["--update"], "overwrite": ["--overwrite"]}[command]
    code, out, err = _run_cli(build_main, "build_shards", [videos, "--out", folder, *_flags(OPTIONS), *again])
    if code == 2:
        return "refused", err.strip()
    return ("ok" if code == 0 else "TRACEBACK"), err.strip()[-400:]


def _flags(options: dict) -> list:
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


# Which files each command reads, so must not pass damaged: its contract (docs/building.md).
def covers(command: str, name: str) -> bool:
    base = os.path.basename(name)
    if base == "build_info.json":  # timings and host: no check reads it
        return False
    if name.startswith(".build/"):
        return command in BUILDS
    if command == "read":
        return base == "manifest.json" or base.endswith((".tfrecord", ".index"))
    return True


def classify(command: str, name: str, original: bytes, damaged: bytes | None, status: str, text: str,
             folder: str, snapshot: dict) -> str:
    """The outcome of one case (see the module's docstring)."""
    if status == "TRACEBACK":
        return "TRACEBACK"
    named = os.path.basename(name).removesuffix(".index")
    if command == "overwrite":  # it starts over whatever the folder holds
        return "KEPT" if status in ("refused", "detected") else _repaired(folder, snapshot) or "SILENT"
    if command in BUILDS and name.startswith(".build/") and name.endswith(".tfrecord.json"):
        named = os.path.basename(name).removesuffix(".json")  # a shard redone is named by the shard
    if status in ("refused", "detected"):
        lines = text.strip().splitlines()
        if status == "refused" and len(lines) != 1:
            return "TRACEBACK"
        if named in text or (name == ".build/plan.json" and "plan.json" in text):
            return status
        return "WRONG-FILE"
    if status == "different":
        return "SILENT"
    # The command succeeded.
    if command in ("rerun", "update", "repair"):
        if _repaired(folder, snapshot):
            return "repaired"
        if command == "repair" and (not covers("inspect", name) or data_only(original, damaged, name)):
            return "ignored"  # plain inspect's documented reach (--repair checks as plain inspect does)
        return "SILENT"
    if not covers(command, name):
        return "ignored"
    if command == "inspect" and data_only(original, damaged, name):
        return "ignored"
    return "SILENT"


def _repaired(folder: str, snapshot: dict) -> str | None:
    """"repaired" when the folder holds the build's bytes again (build_info.json aside: its timings)."""
    now = {path: _read(folder, path) for path in snapshot}
    if all(now[path] == snapshot[path] for path in snapshot if os.path.basename(path) != "build_info.json"):
        return "repaired"
    return None


def _read(folder: str, name: str) -> bytes | None:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return handle.read()


class Campaign:
    """One build folder and its original bytes; `case` damages one file, runs one command, restores."""

    def __init__(self, base: str):
        self.videos, self.folder = make_build(base)
        self.names = files_of(self.folder)
        self.snapshot = {name: _read(self.folder, name) for name in self.names}
        import dancedata

        splits = list(dancedata.DatasetBuilder(self.folder).info.splits)
        self.expected = {"splits": splits, "read": _epoch(self.folder, splits)}
        self._tick = time.time_ns()

    def restore(self) -> None:
        """Puts every file back as built (a rerun may have rewritten or added some), each with a fresh
        modification time: readers cache a file's check by (inode, size, mtime)."""
        for name in files_of(self.folder):
            if name not in self.snapshot:
                os.remove(os.path.join(self.folder, name))
        for name, data in self.snapshot.items():
            if _read(self.folder, name) != data:
                self._write(name, data)

    def _write(self, name: str, data: bytes | None) -> None:
        path = os.path.join(self.folder, name)
        if data is None:
            if os.path.exists(path):
                os.remove(path)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        self._tick += 1_000_003
        os.utime(path, ns=(self._tick, self._tick))

    def case(self, rng: random.Random, command: str, timeout: float | None = 60.0) -> tuple[str, dict]:
        """(outcome, details) of one random case of `command`."""
        choices = [n for n in self.names if command != "read" or covers("read", n)] if command == "read" else self.names
        for _ in range(100):
            name, kind = rng.choice(choices), rng.choice(DAMAGES)
            original = self.snapshot[name]
            damaged = damage(original, name, kind, rng)
            if damaged != original:
                break
        details = {"command": command, "file": name, "damage": kind}
        self._write(name, damaged)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if timeout:  # None: the caller guards against hangs (pytest-timeout in tests/test_fuzz.py)
            previous = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            status, text = run_command(command, self.folder, self.videos, self.expected)
        except Hang:
            status, text = "HANG", ""
        except Exception as error:  # noqa: BLE001 - the campaign's whole question
            status, text = "TRACEBACK", "".join(traceback.format_exception(error))[-2000:]
        finally:
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        if status == "HANG":
            outcome = "HANG"
        elif grown > 256 << 20:
            outcome = "ALLOCATION"
        else:
            outcome = classify(command, name, original, damaged, status, text, self.folder, self.snapshot)
        details["said"] = text[-600:]
        self.restore()
        return outcome, details


# ---------------------------------------------------------------------------------------------------
# The run folder (train.py --out): an interrupted run that a resume reads (state, run.json, the checkpoint,
# history.csv), and a finished run that predict reads (model.keras, dataset.json, labels.json).
#
# Oracle, independent of the loaders under test: the same interrupted folder resumed undamaged, once. A
# resume of a damaged folder must either stop with one line naming the damaged file (exit 2, or 1 for a
# file it cannot write), or finish with exactly the undamaged resume's result (history.csv's bytes, the
# weights, metrics.json): training is deterministic to the bit, so any other result was computed from
# damaged bytes without a word (a changed history row, a changed epoch or best score in the state).
# Predict must stop with one line naming the file, or load a model and dataset description that give
# exactly the undamaged run's probabilities on fixed inputs and the same classes, frames, extractor and
# sampling. A success that equals the reference although a JSON file's content changed is still SILENT;
# one whose damage changed no content it reads (model.keras bytes that Keras does not read, such as the
# archive's timestamps) counts as "unaffected".

RUN_COMMANDS = ("resume", "predict")
RUN_FLAGS = ["--epochs", "2", "--batch-size", "8", "--learning-rate", "0.01", "--seed", "0", "--cache", "memory"]
RUN_FAILURES = FAILURES + ("EXIT",)  # EXIT: a status that is neither 0 nor our error's (1, 2)
# What each command reads, by its contract: a resume its state, run.json, checkpoint, best weights and
# history; predict model.keras, dataset.json and labels.json. The rest of the folder (plots, metrics.json,
# train_config.json, TensorBoard logs) no command reads back.
RESUME_READS = ("checkpoints/state.json", "run.json", "history.csv", "checkpoints/best.weights.h5")
PREDICT_READS = ("model.keras", "dataset.json", "labels.json")


def _train(shards: str, out: str, stop_after_epoch: int | None = None) -> tuple[int, str]:
    """(exit status, stderr) of train.py in this process; with stop_after_epoch, a Ctrl-C right after that
    epoch's checkpoint (what an interrupted run leaves)."""
    from dancedata import train
    from dancedata.models import training_run

    original = training_run.RunProgress.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            raise KeyboardInterrupt

    training_run.RunProgress.on_epoch_end = on_epoch_end
    try:
        return _run_cli_tf(train.main, "train.py", ["--shards", shards, "--out", out, *RUN_FLAGS])
    finally:
        training_run.RunProgress.on_epoch_end = original


def _run_cli_tf(main, prog: str, argv: list) -> tuple[int, str]:
    from dancedata import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.run(main, prog, argv)
    return code, err.getvalue()


def _reads(command: str, name: str) -> bool:
    """Whether `command` reads the run folder's file `name`, by its contract."""
    if command == "resume":
        return name in RESUME_READS or name.endswith(".npz")
    return name in PREDICT_READS


def _run_result(folder: str) -> dict:
    """What a finished run computed: history.csv's bytes, metrics.json, the model's weights."""
    import keras

    model = keras.models.load_model(os.path.join(folder, "model.keras"), compile=False)
    with open(os.path.join(folder, "metrics.json")) as handle:
        metrics = json.load(handle)
    return {"history": _read(folder, "history.csv"), "metrics": metrics,
            "weights": [w.tobytes() for w in model.get_weights()]}


def _predicted(folder: str) -> dict:
    """predict's view of a run folder (its loader, every check included) and the model's probabilities on
    fixed inputs: what its output depends on."""
    import numpy as np

    from dancedata import predict

    model, dataset = predict.load_run(folder)
    rng = np.random.default_rng(0)
    frames = dataset.get("seq_len") or dataset["num_frames"]
    features = rng.standard_normal((4, frames, dataset["feature_dim"])).astype(dataset["feature_dtype"]).astype("float32")
    masks = np.ones((4, frames), bool)
    probabilities = np.asarray(model.predict_on_batch((features, masks)))
    return {"dataset": {key: value for key, value in dataset.items() if not key.endswith("_config")},
            "probabilities": probabilities.tobytes()}


def _json_content(data: bytes | None):
    try:
        return json.loads(data.decode("utf-8")) if data is not None else None
    except ValueError:
        return ValueError


class RunCampaign:
    """A tiny build, an interrupted run of it and its undamaged resume (the reference); `case` damages one
    file of the interrupted run (resume) or of the finished one (predict), runs the command, sorts the outcome."""

    def __init__(self, base: str, performances: int = 4):
        import dancedata

        self.base = base
        videos, self.shards = os.path.join(base, "run-videos"), os.path.join(base, "run-shards")
        write_videos(videos, performances=performances)
        dancedata.build_shards(videos, self.shards, **OPTIONS)
        self.interrupted = os.path.join(base, "interrupted")
        code, err = _train(self.shards, self.interrupted, stop_after_epoch=1)
        if code != 130:
            raise RuntimeError(f"the run to interrupt ended with {code}: {err[-400:]}")
        self.interrupted_files = files_of(self.interrupted)
        self.finished = os.path.join(base, "finished")
        shutil.copytree(self.interrupted, self.finished)
        code, err = _train(self.shards, self.finished)
        if code != 0:
            raise RuntimeError(f"the undamaged resume ended with {code}: {err[-400:]}")
        self.reference = _run_result(self.finished)
        self.finished_files = files_of(self.finished)
        self.snapshot = {name: _read(self.finished, name) for name in self.finished_files}
        self.predicted = _predicted(self.finished)
        self.work = os.path.join(base, "work")

    def names(self, command: str) -> list:
        return self.interrupted_files if command == "resume" else self.finished_files

    def case(self, rng: random.Random, command: str, timeout: float | None = 120.0, name: str | None = None,
             kind: str | None = None, edit=None) -> tuple[str, dict]:
        """(outcome, details) of one random case of `command` ("resume" or "predict"); `name` and `kind`
        pin the file and the damage, or `edit` (bytes -> bytes) makes it."""
        folder = self.interrupted if command == "resume" else self.finished
        choices = self.names(command)
        # Three cases in four damage a file the command reads: most of a run folder (logs, plots) is read by neither.
        read = [n for n in choices if _reads(command, n)]
        for _ in range(100):
            name_ = name or rng.choice(read if read and rng.random() < 0.75 else choices)
            kind_ = kind or rng.choice(DAMAGES)
            original = _read(folder, name_)
            damaged = edit(original) if edit else damage(original, name_, kind_, rng)
            if damaged != original:
                break
        name, kind = name_, ("edit" if edit else kind_)
        details = {"command": command, "file": name, "damage": kind}
        if command == "resume":
            shutil.rmtree(self.work, ignore_errors=True)
            shutil.copytree(self.interrupted, self.work)
            target = self.work
        else:
            target = self.finished
        path = os.path.join(target, name)
        if damaged is None:
            os.remove(path)
        else:
            with open(path, "wb") as handle:
                handle.write(damaged)
        if timeout:
            previous = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        result = None
        try:
            if command == "resume":
                code, text = _train(self.shards, self.work)
                status = {0: "ok", 1: "refused", 2: "refused"}.get(code, "EXIT")
                if status == "ok":
                    result = _run_result(self.work)
            else:
                from dancedata.errors import DanceDataError

                try:
                    result = _predicted(self.finished)
                    status, text = "ok", ""
                except DanceDataError as error:
                    status, text = "refused", f"predict: error: {error}"
        except Hang:
            status, text = "HANG", ""
        except Exception as error:  # noqa: BLE001 - the campaign's whole question
            status, text = "TRACEBACK", "".join(traceback.format_exception(error))[-2000:]
        finally:
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            if command == "predict":
                self._restore()
        details["said"] = text[-600:]
        return self._classify(command, name, original, damaged, status, text, result), details

    def _restore(self) -> None:
        for name, data in self.snapshot.items():
            if _read(self.finished, name) != data:
                with open(os.path.join(self.finished, name), "wb") as handle:
                    handle.write(data)

    def _classify(self, command, name, original, damaged, status, text, result) -> str:
        if status in ("TRACEBACK", "HANG", "EXIT"):
            return status
        base = os.path.basename(name)
        if status == "refused":
            errors = [line for line in text.splitlines() if ": error: " in line]
            if len(errors) != 1 or "Traceback" in text:
                return "TRACEBACK"
            named = base if not base.endswith(".npz") else ("checkpoint", base)
            return "refused" if any(word in errors[0] for word in ((named,) if isinstance(named, str) else named)) \
                else "WRONG-FILE"
        reference = self.reference if command == "resume" else self.predicted
        if result != reference:
            return "SILENT"
        if not _reads(command, name):
            return "ignored"  # a file this command does not read; its result is the reference's
        if base.endswith(".json") and _json_content(damaged) != _json_content(original):
            return "SILENT"  # changed content accepted, though it changed nothing this time
        return "resumed" if command == "resume" else "unaffected"


def pick_command(rng: random.Random, rerun_every: int, number: int) -> str:
    """The command of case `number`: the build again every `rerun_every` cases (a rerun, --update and
    --overwrite in turn: it loads the extractor and may decode), otherwise inspect, inspect --verify,
    inspect --repair or the reader."""
    if rerun_every and number % rerun_every == rerun_every - 1:
        return BUILDS[number // rerun_every % len(BUILDS)]
    return rng.choice(("inspect", "verify", "read", "read", "repair"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerun-every", type=int, default=100,
                        help="the build again (rerun, --update, --overwrite in turn) once per this many cases (0: never)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as a hang")
    parser.add_argument("--out", help="write the counts and every failure as JSON here")
    parser.add_argument("--run-cases", type=int, default=0,
                        help="cases over a run folder (resume and predict, alternately), after the build's")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # AutoGraph's notices about the reader's closures, once per pipeline
    rng = random.Random(args.seed)
    counts, failures = collections.Counter(), []
    started = time.time()
    base = tempfile.mkdtemp(prefix="dancedata-fuzz-")
    try:
        campaign = Campaign(base) if args.cases else None
        if campaign:
            print(f"fuzzing {len(campaign.names)} files of {campaign.folder}: {', '.join(campaign.names)}", flush=True)
        for number in range(args.cases):
            command = pick_command(rng, args.rerun_every, number)
            outcome, details = campaign.case(rng, command, args.timeout)
            counts[(command, outcome)] += 1
            if outcome in FAILURES:
                failures.append({"case": number, "outcome": outcome, **details})
                print(f"case {number}: {outcome}: {json.dumps(details)}", flush=True)
            if (number + 1) % 500 == 0:
                print(f"{number + 1} cases, {time.time() - started:.0f} s, {len(failures)} failures", flush=True)
        if args.run_cases:
            runs = RunCampaign(base)
            print(f"fuzzing the interrupted run {runs.interrupted} ({', '.join(runs.interrupted_files)}) and the "
                  f"finished one {runs.finished}", flush=True)
        for number in range(args.run_cases):
            command = RUN_COMMANDS[number % 2]
            outcome, details = runs.case(rng, command, args.timeout)
            counts[(command, outcome)] += 1
            if outcome in RUN_FAILURES:
                failures.append({"case": number, "outcome": outcome, **details})
                print(f"run case {number}: {outcome}: {json.dumps(details)}", flush=True)
            if (number + 1) % 20 == 0:
                print(f"{number + 1} run cases, {time.time() - started:.0f} s, {len(failures)} failures: "
                      + ", ".join(f"{c} {o} {n}" for (c, o), n in sorted(counts.items()) if c in RUN_COMMANDS), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ran = sum(counts.values())
    print(f"\n{ran} cases ran in {time.time() - started:.0f} s (seed {args.seed})")
    totals = collections.Counter()
    for (command, outcome), n in sorted(counts.items()):
        print(f"  {command:<9} {outcome:<11} {n}")
        totals[outcome] += n
    print("  all       " + ", ".join(f"{outcome} {n}" for outcome, n in sorted(totals.items())))
    print(f"failures: {len(failures)} ({', '.join(f'{k} {totals[k]}' for k in RUN_FAILURES)})")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"cases": ran, "seed": args.seed, "counts": {f"{c} {o}": n for (c, o), n in counts.items()},
                       "failures": failures}, handle, indent=2)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
