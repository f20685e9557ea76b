"""Every file a build folder holds, damaged at random (seeded): each command either stops with dancedata's
one-line error naming the file, lists it as DAMAGED, repairs it, or does not read it; never another
exception, a hang, or a success over damage it should have seen.

The cases and their oracle are benchmarks/fuzz_campaign.py's (its docstring defines each outcome); this
runs a few hundred of them, bounded by pytest-timeout as the hang guard, and the campaign runs thousands.
"""
import collections
import os
import random
import re
import subprocess
import sys

import pytest
from conftest import cli_env

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import fuzz_campaign  # noqa: E402

CASES = 240
SEED = 31


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return fuzz_campaign.Campaign(str(tmp_path_factory.mktemp("fuzz")))


def _failures(outcomes):
    return [(outcome, details) for outcome, details in outcomes if outcome in fuzz_campaign.FAILURES]


@pytest.mark.timeout(600)
def test_random_damage_is_refused_detected_repaired_or_not_read(campaign):
    rng = random.Random(SEED)
    outcomes = [campaign.case(rng, fuzz_campaign.pick_command(rng, 0, number), timeout=None) for number in range(CASES)]
    counts = collections.Counter((details["command"], outcome) for outcome, details in outcomes)
    assert not _failures(outcomes), _failures(outcomes)
    # The cases reached every command and every kind of file, and the checks said something.
    assert {details["command"] for _, details in outcomes} == {"inspect", "verify", "read", "repair"}
    kinds = {details["file"].rsplit(".", 1)[-1] for _, details in outcomes}
    assert {"tfrecord", "index", "json", "txt"} <= kinds
    assert counts["read", "refused"] and counts["inspect", "detected"] and counts["repair", "repaired"], counts


@pytest.mark.timeout(600)
def test_the_build_again_refuses_or_restores_the_build(campaign):
    """A rerun and --update refuse damage naming the file or make the folder as built again; --overwrite
    always starts over (KEPT, a failure, when it refuses)."""
    rng = random.Random(SEED + 1)
    outcomes = [campaign.case(rng, command, timeout=None) for command in fuzz_campaign.BUILDS]
    assert not _failures(outcomes), _failures(outcomes)
    assert all(outcome in ("refused", "repaired") for outcome, _ in outcomes), outcomes
    assert outcomes[-1][0] == "repaired", outcomes[-1]


@pytest.mark.timeout(600)
def test_a_resume_trusts_committed_shards_without_hashing_them(campaign, monkeypatch):
    """Issue 29: a resume read every shard whole through sha256. Now it checks their size, index and
    every record's CRCs (build_folder.OutputFolder.is_built), and keeps them all."""
    from dancedata import build_folder

    hashed = []
    monkeypatch.setattr(build_folder, "sha256", lambda path: hashed.append(path) or "0" * 64)
    try:
        campaign._write("manifest.json", None)  # what a build killed before its end leaves
        status, text = fuzz_campaign.run_command("rerun", campaign.folder, campaign.videos, campaign.expected)
        now = {name: fuzz_campaign._read(campaign.folder, name) for name in campaign.snapshot}
    finally:
        campaign.restore()
    assert status == "ok", text
    assert not hashed, hashed
    assert all(now[n] == campaign.snapshot[n] for n in campaign.snapshot if not n.endswith("build_info.json"))


@pytest.mark.timeout(600)
def test_a_real_process_says_one_line_and_exits_2(campaign):
    """The exit status and the one-line contract, as a user's shell sees them."""
    name, status = "manifest.json", 2
    rng = random.Random(SEED + 2)
    original = campaign.snapshot[name]
    try:
        campaign._write(name, fuzz_campaign.damage(original, name, "bit", rng))
        done = subprocess.run([sys.executable, "-m", "dancedata.inspect", campaign.folder], capture_output=True,
                              text=True, env=cli_env())
    finally:
        campaign.restore()
    assert done.returncode == status, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("inspect: error: ") and name in err[0], err


# ---------------------------------------------------------------------------------------------------
# The run folder: an interrupted run (what a resume reads) and its finished resume (what predict reads).
# Oracle: the undamaged resume of the same folder, once (fuzz_campaign.RunCampaign's comment); a resume
# that trains takes seconds, so the resume cases here are mostly ones refused before training starts.

RUN_SEED = 29
# The state holds the sha256 of history.csv's committed rows and of the best weights, so a changed row or
# weights file is refused, not resumed into the run's result.


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return fuzz_campaign.RunCampaign(str(tmp_path_factory.mktemp("run-fuzz")))


def _run_failures(outcomes):
    return [(outcome, details) for outcome, details in outcomes if outcome in fuzz_campaign.RUN_FAILURES]


@pytest.mark.timeout(900)
def test_predict_refuses_every_damaged_run_file_in_one_line(runs):
    rng = random.Random(RUN_SEED)
    outcomes = [runs.case(rng, "predict", timeout=None, name=rng.choice(fuzz_campaign.PREDICT_READS))
                for _ in range(30)]
    outcomes += [runs.case(rng, "predict", timeout=None, name=name, kind="delete") for name in fuzz_campaign.PREDICT_READS]
    assert not _run_failures(outcomes), _run_failures(outcomes)
    refused = {details["file"] for outcome, details in outcomes if outcome == "refused"}
    assert refused == set(fuzz_campaign.PREDICT_READS), collections.Counter(o for o, _ in outcomes)


_NPZ = "checkpoints/epoch-00001.npz"


@pytest.mark.parametrize("name, kind", [
    ("checkpoints/state.json", "cut"), ("checkpoints/state.json", "page"), ("checkpoints/state.json", "append"),
    ("run.json", "bit"), ("run.json", "cut"), (_NPZ, "delete"),
    (_NPZ, "bit"), (_NPZ, "page"), (_NPZ, "cut"), ("checkpoints/state.json", "bit"), ("run.json", "delete"),
    ("history.csv", "bit"), ("history.csv", "cut"), ("checkpoints/best.weights.h5", "bit"),
])
@pytest.mark.timeout(900)
def test_a_damaged_interrupted_run_is_refused_naming_the_file_or_resumed_exactly(runs, name, kind):
    rng = random.Random(f"{RUN_SEED} {name} {kind}")
    outcome, details = runs.case(rng, "resume", timeout=None, name=name, kind=kind)
    assert outcome in ("refused", "resumed"), details


@pytest.mark.timeout(900)
def test_predict_through_the_cli_says_one_line_and_exits_2(runs, tmp_path):
    from dancedata import predict

    rng = random.Random(RUN_SEED + 1)
    path = os.path.join(runs.finished, "dataset.json")
    with open(path, "rb") as handle:
        original = handle.read()
    try:
        with open(path, "wb") as handle:
            handle.write(fuzz_campaign.damage(original, "dataset.json", "bit", rng))
        code, err = fuzz_campaign._run_cli_tf(predict.main, "predict", [str(tmp_path / "any.mp4"), "--model", runs.finished])
    finally:
        with open(path, "wb") as handle:
            handle.write(original)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("predict: error: ") and "dataset.json" in lines[0], err


@pytest.mark.timeout(900)
def test_a_changed_history_row_is_not_resumed_silently(runs):
    def edit(data):  # the first epoch's loss, one digit up: still a number, no longer the one fit logged
        header, row, rest = data.split(b"\n", 2)
        cells = row.split(b",")
        cells[1] = cells[1][:-1] + bytes([48 + (cells[1][-1] - 47) % 10])
        return b"\n".join([header, b",".join(cells), rest])

    outcome, details = runs.case(random.Random(0), "resume", timeout=None, name="history.csv", edit=edit)
    assert outcome == "refused", details


def _set(key: bytes, *values: bytes):
    """An edit: the JSON value of `key` (its first occurrence) becomes the first of `values` that differs from
    it; the file stays valid JSON."""
    def edit(data):
        found = re.search(rb'"' + key + rb'": ([^,\n]+)', data)
        assert found, (key, data[:400])
        value = next(v for v in values if v != found.group(1))
        return data[:found.start(1)] + value + data[found.end(1):]
    return edit


def _duplicate_line(text: bytes):
    def edit(data):
        start = data.index(text)
        start, end = data.rindex(b"\n", 0, start) + 1, data.index(b"\n", start) + 1
        return data[:end] + data[start:end] + data[end:]
    return edit


# The run campaign's finds (issue 31): damage to run.json or state.json that still parses, as another flag, class,
# epoch or digest, was read as the run's own (resumed to another result, or refused naming another file). A run
# seals both with a checksum, so any changed byte is refused naming the file.
@pytest.mark.parametrize("name, edit", [
    ("run.json", _set(b"epochs", b"3", b"4")),  # a flag's value: was "holds an interrupted run with other flags"
    ("run.json", _set(b"val_fraction", b"0.2", b"0.3")),
    ("run.json", lambda data: data.replace(b'"mixed_precision"', b'"mixed_precTsion"', 1)),  # a flag's name
    ("run.json", _duplicate_line(b'"BR"')),  # a class listed twice: was resumed without a word
    ("checkpoints/state.json", _set(b"epoch", b"0", b"1")),  # was refused naming history.csv
    ("checkpoints/state.json", _set(b"best", b"0.0", b"0.5")),  # was resumed to another best epoch
    ("checkpoints/state.json", _set(b"since_best", b"1", b"0")),
    # a digest of the best weights: was refused naming best.weights.h5
    ("checkpoints/state.json", _set(b"best_sha256", b'"' + b"0" * 64 + b'"', b'"' + b"1" * 64 + b'"')),
], ids=["run-epochs", "run-val-fraction", "run-flag-name", "run-class-twice", "state-epoch", "state-best",
        "state-since-best", "state-best-digest"])
@pytest.mark.timeout(900)
def test_a_run_document_that_still_parses_is_refused_naming_it(runs, name, edit):
    outcome, details = runs.case(random.Random(0), "resume", timeout=None, name=name, edit=edit)
    assert outcome == "refused", details
    assert "changed or damaged" in details["said"], details


@pytest.mark.timeout(900)
def test_a_missing_state_with_a_checkpoint_is_refused(runs):
    outcome, details = runs.case(random.Random(0), "resume", timeout=None, name="checkpoints/state.json", kind="delete")
    assert outcome == "refused", details
