"""The Apache Beam runner on Beam's local runner in multi-process mode: the same bytes as a local build,
extraction set up once per worker process, resume after a partial build."""
import json
import shutil

import pytest
from conftest import BUILD_FLAGS, SMALL_SHARDS, build_outputs, make_aist_folder

import dancedata
from dancedata import cli
from dancedata.build_shards import main as build_main

pytest.importorskip("apache_beam")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam") / "aist"
    make_aist_folder(root, performances=4, cameras=2)
    return root


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """The local build of `videos`, made once: the tests compare with it and copy it, never change it."""
    out = tmp_path_factory.mktemp("beam-reference") / "reference"
    dancedata.build_shards(str(videos), str(out), **SMALL_SHARDS)
    return out


def test_beam_build_equals_the_local_build(videos, reference, tmp_path):
    out = tmp_path / "beam"
    argv = [str(videos), "--out", str(out), *BUILD_FLAGS, "--runner", "beam", "--",
            "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert cli.run(build_main, "build_shards", argv) == 0
    assert build_outputs(out) == build_outputs(reference)
    shards = sum(1 for name in build_outputs(reference) if name.endswith(".tfrecord"))
    counters = json.loads((out / "build_info.json").read_text())["beam"]
    assert counters["units_built"] == shards >= 6 and counters["videos"] == 32
    assert counters["worker_setups"] <= 2 < shards  # the extractor loads once per worker, not per unit


def test_beam_resumes_a_partial_build_and_says_what_is_wrong(videos, reference, tmp_path, capsys):
    out = tmp_path / "beam"
    shutil.copytree(reference, out)  # a local build (a copy resumes as the original does: test_resume.py)
    removed = sorted(out.glob("val-*.tfrecord"))
    for shard in removed:
        shard.unlink()  # as if those units had not been built yet
    (out / "manifest.json").unlink()
    dancedata.build_shards(str(videos), str(out), runner="beam", beam_options="--runner=DirectRunner", **SMALL_SHARDS)
    assert build_outputs(out) == build_outputs(reference)
    assert json.loads((out / "build_info.json").read_text())["beam"]["units_built"] == len(removed)
    code = cli.run(build_main, "build_shards", [str(videos), "--out", str(tmp_path / "x"), "--", "--runner=DirectRunner"])
    assert code == 2 and "they need --runner beam" in capsys.readouterr().err
    code = cli.run(build_main, "build_shards", [str(videos), "--out", str(tmp_path / "x"), "--runner", "beam", "--num-workers", "2"])
    assert code == 2 and "cannot be combined with num_workers > 1" in capsys.readouterr().err
