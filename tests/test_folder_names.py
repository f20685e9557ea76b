"""A build folder's metadata travels between people: no name it holds reaches a path unchecked. Tampered
manifest, plan and record names must leave every file outside the folder untouched and be refused in
one line (exit 2) before anything is read, moved or deleted."""
import json
import shutil

import pytest
from conftest import BUILD_FLAGS

import dancedata
from dancedata import cli
from dancedata.build_shards import main as build_main

EVIL = ["../victim.txt", "/tmp/dancedata-abs-victim.txt", "a/b.tfrecord", "gs://other/x.tfrecord", "..", "train-00000-of-00001.tfrecord/../../victim.txt"]


@pytest.fixture(scope="module")
def built_small(tmp_path_factory):
    from conftest import make_aist_folder

    base = tmp_path_factory.mktemp("names")
    make_aist_folder(base / "aist", genres=("BR", "PO"), performances=3, cameras=1)
    assert cli.run(build_main, "build_shards", [str(base / "aist"), "--out", str(base / "shards"), *BUILD_FLAGS]) == 0
    return base


def _copy(built_small, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(built_small / "shards", folder)
    (tmp_path / "victim.txt").write_text("keep me")
    return folder


def _edit(path, change):
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("evil", EVIL)
@pytest.mark.parametrize("where", ["manifest", "plan files", "plan units"])
@pytest.mark.parametrize("flag", ["--overwrite", "--update"])
def test_tampered_names_touch_nothing_outside_and_are_refused(built_small, tmp_path, capsys, evil, where, flag):
    folder = _copy(built_small, tmp_path)
    if where == "manifest":
        _edit(folder / "manifest.json", lambda m: m["splits"]["train"]["shards"].append({"file": evil, "num_examples": 0}))
    elif where == "plan files":
        _edit(folder / ".build" / "plan.json", lambda p: p["files"].append(evil))
    else:
        _edit(folder / ".build" / "plan.json", lambda p: p["units"].__setitem__(0, [evil, p["units"][0][1]]))
    before = sorted(p.name for p in folder.iterdir())
    code = cli.run(build_main, "build_shards", [str(built_small / "aist"), "--out", str(folder), *BUILD_FLAGS, flag])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a shard name a build writes" in err[0] and "nothing was touched" in err[0], err
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_record_that_names_another_file_is_redone_not_followed(built_small, tmp_path):
    folder = _copy(built_small, tmp_path)
    record = sorted((folder / ".build").glob("train-*.tfrecord.json"))[0]
    _edit(record, lambda r: r["index"].update(file="../victim.txt"))
    dancedata.build_shards(str(built_small / "aist"), str(folder), frames=8, shard_mb=0.1, quiet=True,
                           backbone="ResNet50", weights="none", image_size=32, batch_size=8)
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    assert dancedata.DatasetBuilder(str(folder)).bad_shards("train") == []


@pytest.mark.parametrize("evil", EVIL)
def test_readers_refuse_a_manifest_that_names_other_files(built_small, tmp_path, evil):
    folder = _copy(built_small, tmp_path)
    _edit(folder / "manifest.json", lambda m: m["splits"]["train"]["shards"][0].update(file=evil))
    with pytest.raises(dancedata.ManifestError, match="lists a shard that is not a shard of it"):
        dancedata.DatasetBuilder(str(folder))
