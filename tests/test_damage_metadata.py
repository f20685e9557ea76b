"""Issue 31: an index is never a reason to lose data, inspect tells the truth about every file, and every
metadata file that is not what a build wrote is refused in one line before anything is moved.

Oracles independent of the code under test: the bytes the build wrote (kept aside and compared), videos
made undecodable at their old size and time (a rerun that decoded one would write another shard), and
damage made by hand.
"""
import json
import os
import shutil

import pytest
from conftest import BUILD_FLAGS, SMALL_SHARDS, make_aist_folder

import dancedata
from dancedata import cli, inspect, shard_index
from dancedata.build_shards import main as build_main
from dancedata.errors import ManifestError, ShardError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("damage")
    make_aist_folder(base / "aist", genres=("BR", "PO"), performances=3, cameras=1)
    dancedata.build_shards(str(base / "aist"), str(base / "shards"), **SMALL_SHARDS)
    return base


def _copy(small, tmp_path):
    shutil.copytree(small / "shards", tmp_path / "shards")
    return tmp_path / "shards"


def _files(folder):
    """Every file a reader or a rerun depends on, by relative path (timings and locks aside)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "build_info.json" and not p.name.startswith(".dancedata")}


def _shards(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return [s for split in manifest["splits"].values() for s in split["shards"] if s["num_examples"]]


def _spoil_videos(root):
    """Every video unreadable, at its old size and modification time: a rerun that decodes one fails."""
    for path in root.iterdir():
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _inspect(folder, *flags, capsys):
    capsys.readouterr()
    code = cli.run(inspect.main, "inspect", [str(folder), *flags])
    return code, capsys.readouterr()


# --- 2. An index is rebuilt from its shard, byte for byte ---------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "flipped", "cut", "stale"])
def test_rebuild_gives_the_index_the_build_wrote(small, tmp_path, damage):
    folder = _copy(small, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in _shards(folder):
        written = (folder / shard["index"]["file"]).read_bytes()
        width = shard_index.feature_bytes(manifest)
        assert shard_index.rebuild(str(folder / shard["file"]), manifest["num_frames"], width, shard["index"]["key"]) == written
    shard = _shards(folder)[0]
    index = folder / shard["index"]["file"]
    written = index.read_bytes()
    if damage == "missing":
        index.unlink()
    elif damage == "flipped":
        index.write_bytes(written[:-40] + bytes([written[-40] ^ 1]) + written[-39:])
    elif damage == "cut":
        index.write_bytes(written[:len(written) // 2])
    else:  # another shard's index under its name
        index.write_bytes((folder / _shards(folder)[1]["index"]["file"]).read_bytes())
    with pytest.raises(ShardError, match=shard["index"]["file"] if damage != "missing" else shard["file"]):
        next(iter(dancedata.DatasetBuilder(str(folder)).as_dataset("train", batch_size=2)))
    assert inspect.main([str(folder), "--repair"]) == 0
    assert index.read_bytes() == written
    assert _files(folder) == _files(small / "shards")


def test_the_build_rerun_rebuilds_indexes_without_decoding(tmp_path, capsys):
    make_aist_folder(tmp_path / "aist", genres=("BR", "PO"), performances=2, cameras=1)
    folder = tmp_path / "shards"
    assert cli.run(build_main, "build_shards", [str(tmp_path / "aist"), "--out", str(folder), *BUILD_FLAGS]) == 0
    before = _files(folder)
    first, *others = _shards(folder)
    index = folder / first["index"]["file"]
    raw = index.read_bytes()
    index.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0x20]))  # damaged, present
    for shard in others:
        (folder / shard["index"]["file"]).unlink()
    _spoil_videos(tmp_path / "aist")
    capsys.readouterr()
    assert cli.run(build_main, "build_shards", [str(tmp_path / "aist"), "--out", str(folder), *BUILD_FLAGS]) == 0
    assert _files(folder) == before
    assert "to decode" not in capsys.readouterr().err  # nothing reused either: every shard was kept


def test_a_damaged_shard_is_not_given_a_new_index(small, tmp_path, capsys):
    folder = _copy(small, tmp_path)
    shard = _shards(folder)[0]
    (folder / shard["index"]["file"]).unlink()
    data = bytearray((folder / shard["file"]).read_bytes())
    data[len(data) // 2] ^= 0x10
    (folder / shard["file"]).write_bytes(bytes(data))
    code, said = _inspect(folder, "--repair", capsys=capsys)
    assert code == 1 and not (folder / shard["index"]["file"]).exists()
    assert f"DAMAGED: {folder}/{shard['file']}" in said.out


# --- 3. inspect tells the truth about every file -----------------------------------------------------


def _another_shard_same_size(folder):
    """A shard replaced by the same number of bytes of the others (whole records of theirs at its start)."""
    shards = _shards(folder)
    path = folder / shards[0]["file"]
    others = b"".join((folder / s["file"]).read_bytes() for s in shards[1:])
    assert len(others) >= shards[0]["bytes"]
    path.write_bytes(others[:shards[0]["bytes"]])
    return shards[0]["file"]


def _replace_same_size(folder):
    shard = _shards(folder)[0]
    path = folder / shard["file"]
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01  # the first record's length: the framing no longer matches the index
    path.write_bytes(bytes(data))
    return shard["file"]


def _flip_in(name, at=0.5):
    def damage(folder):
        path = folder / name
        data = bytearray(path.read_bytes())
        data[int(len(data) * at)] ^= 0x04
        path.write_bytes(bytes(data))
        return name
    return damage


def _e_to_upper(folder):
    """1e-05 and 1E-05 parse to the same number: a change only the bytes show."""
    path = folder / "feature_statistics.json"
    text = path.read_text()
    assert "e-" in text
    path.write_text(text.replace("e-", "E-", 1))
    return "feature_statistics.json"


CHEAP = {
    "a shard replaced by another's bytes, same size": _another_shard_same_size,
    "a shard's framing changed": _replace_same_size,
    "dataset_info.json flipped": _flip_in("dataset_info.json"),
    "features.json flipped": _flip_in("features.json"),
    "label.labels.txt flipped": _flip_in("label.labels.txt", 0.0),
    "feature_statistics.json flipped": _flip_in("feature_statistics.json"),
    "feature_statistics.json respelled": _e_to_upper,
}


@pytest.mark.parametrize("kind", list(CHEAP))
def test_plain_inspect_finds_what_is_cheap_to_find(small, tmp_path, capsys, kind):
    folder = _copy(small, tmp_path)
    name = CHEAP[kind](folder)
    code, said = _inspect(folder, capsys=capsys)
    assert code == 1 and f"DAMAGED: {folder}/{name}: " in said.out, said.out
    code, said = _inspect(folder, "--verify", capsys=capsys)
    assert code == 1 and f"DAMAGED: {folder}/{name}: " in said.out, said.out


def test_a_flipped_byte_inside_a_record_takes_verify(small, tmp_path, capsys):
    folder = _copy(small, tmp_path)
    shard = _shards(folder)[0]
    header, table = shard_index.load(str(folder), shard)
    path = folder / shard["file"]
    data = bytearray(path.read_bytes())
    data[int(table[0, 0]) + 12 + int(table[0, 1]) // 2] ^= 0x01  # inside record 0's data: its stored CRC unchanged
    path.write_bytes(bytes(data))
    assert _inspect(folder, capsys=capsys)[0] == 0
    code, said = _inspect(folder, "--verify", capsys=capsys)
    assert code == 1 and f"DAMAGED: {path}: " in said.out


def test_a_build_without_metadata_checksums_says_they_are_unchecked(small, tmp_path, capsys):
    folder = _copy(small, tmp_path)
    document = json.loads((folder / "manifest.json").read_text())
    document.pop("tfds_metadata")
    (folder / "manifest.json").write_text(dancedata.manifest.dumps(dancedata.manifest.sealed(document)))
    code, said = _inspect(folder, capsys=capsys)
    assert code == 0 and "unchecked: dataset_info.json, features.json, label.labels.txt" in said.out


def test_inspect_help_says_which_check_finds_what(capsys):
    with pytest.raises(SystemExit):
        inspect.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a flipped byte inside a record takes --verify" in text and "swapped or replaced shard" in text
    docs = " ".join(open(os.path.join(os.path.dirname(__file__), "..", "docs", "building.md")).read().split())
    assert "a flipped byte inside a record takes `--verify`" in docs and "swapped or replaced shard" in docs


# --- 4. Every metadata loader refuses in one line, before anything moves -------------------------------


BAD_JSON = {
    "a list": b"[1, 2, 3]",
    "a number": b"5",
    "a string": b'"manifest"',
    "null": b"null",
    "nested without end": b"[" * 100000,
    "not UTF-8": b"\xff\xfe{}",
    "an object of nothing we wrote": b'{"splits": 1}',
}


@pytest.mark.parametrize("content", list(BAD_JSON))
def test_every_loader_refuses_a_metadata_file_that_is_not_ours(small, tmp_path, capsys, content):
    folder = _copy(small, tmp_path)
    (folder / "manifest.json").write_bytes(BAD_JSON[content])
    (folder / ".build" / "plan.json").write_bytes(BAD_JSON[content])
    with pytest.raises(ManifestError, match=f"{folder}/manifest.json"):
        dancedata.DatasetBuilder(str(folder))
    code, said = _inspect(folder, capsys=capsys)
    err = said.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{folder}/manifest.json" in err[0], err
    damage = dancedata.build_folder.OutputFolder(str(folder)).damage
    assert [path for path, _ in damage] == [f"{folder}/.build/plan.json", f"{folder}/manifest.json"]


@pytest.mark.parametrize("name", ["manifest.json", ".build/plan.json"])
def test_a_build_refuses_damaged_metadata_before_anything_moves_and_overwrite_starts_over(small, tmp_path, capsys, name):
    folder = _copy(small, tmp_path)
    (folder / name).write_bytes(b"[1, 2, 3]")
    before = _files(folder)
    for flags in (["--update"], []):
        capsys.readouterr()
        code = cli.run(build_main, "build_shards", [str(small / "aist"), "--out", str(folder), *BUILD_FLAGS, *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"{folder}/{name}" in err[0] and "Traceback" not in err[0], err
        assert _files(folder) == before  # nothing moved into .build/reuse/, nothing deleted
    capsys.readouterr()
    code = cli.run(build_main, "build_shards", [str(small / "aist"), "--out", str(folder), *BUILD_FLAGS, "--overwrite"])
    assert code == 0, capsys.readouterr().err
    assert _files(folder) == _files(small / "shards")


def test_a_damaged_record_is_redone_not_trusted(small, tmp_path):
    folder = _copy(small, tmp_path)
    record = sorted((folder / ".build").glob("train-*.tfrecord.json"))[0]
    text = record.read_text()
    record.write_text(text.replace('"sum": [', '"sum": [1', 1))  # parses, but a statistic is off
    assert dancedata.build_folder.OutputFolder(str(folder)).records().get(record.name[:-5]) is None


@pytest.mark.parametrize("what", ["a video", "a missing path", "the video folder"])
def test_not_a_build_says_what_it_is_and_what_to_pass(small, tmp_path, what):
    path = {"a video": next((small / "aist").iterdir()), "a missing path": tmp_path / "nowhere",
            "the video folder": small / "aist"}[what]
    with pytest.raises(ManifestError) as caught:
        dancedata.DatasetBuilder(str(path))
    said = str(caught.value)
    assert said.startswith(f"no manifest.json in {path}: ")
    assert f"--out {path}" not in said and "--out tfrecords" in said
    assert ("it is a file" in said) == (what == "a video")
