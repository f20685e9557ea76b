"""Every file a build folder holds, damaged at random (seeded): each command either stops with dancedata's
one-line error naming the file, lists it as DAMAGED, repairs it, or does not read it; never another
exception, a hang, or a success over damage it should have seen.

The cases and their oracle are benchmarks/fuzz_campaign.py's (its docstring defines each outcome); this
runs a few hundred of them, bounded by pytest-timeout as the hang guard, and the campaign runs thousands.
"""
import collections
import os
import random
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
def test_the_build_rerun_refuses_or_restores_the_build(campaign):
    rng = random.Random(SEED + 1)
    outcomes = [campaign.case(rng, "rerun", timeout=None) for _ in range(2)]
    assert not _failures(outcomes), _failures(outcomes)
    assert all(outcome in ("refused", "repaired") for outcome, _ in outcomes), outcomes


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
