"""Schema 4: the TFRecords are the one copy of every example; an index beside each shard lets training
gather from the mapped file, and every byte is checked before it is used.

Oracles independent of the code under test: TensorFlow's own TFRecordWriter and TFRecordDataset (the
framing and its CRCs), protobuf's parsing of each Example (where the fields are), and damage made by
hand to the files.
"""
import gc
import json
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf

import dancedata
from dancedata import train as train_script
from dancedata import DatasetBuilder, ExampleConfig, Holdout, ReadConfig, cli, inspect, read, shard_index
from dancedata.errors import InputError, ShardError
from conftest import FAST_EXTRACTOR, build_outputs

OPTIONS = dict(frames=8, shard_mb=0.1, quiet=True, **FAST_EXTRACTOR)


def _copy(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built["out"], copy)
    return copy


def _batches(builder, split="train", holdout=None):
    return [(f.numpy().tobytes(), k.numpy().tobytes(), y.numpy().tobytes())
            for (f, k), y in builder.as_dataset(split, batch_size=4, read_config=ReadConfig(shuffle=True, seed=1, holdout=holdout))]


def _framing(data: bytes) -> list:
    """(offset, length) of each record, read with struct alone."""
    found, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        found.append((at, length))
        at += length + 16
    return found


def test_the_index_says_where_each_records_fields_are(built):
    builder = DatasetBuilder(str(built["out"]))
    checked = 0
    for split in builder.info.splits:
        for shard in builder.manifest["splits"][split]["shards"]:
            data = (built["out"] / shard["file"]).read_bytes()
            header, table = shard_index.load(str(built["out"]), shard)
            records = list(tf.data.TFRecordDataset(str(built["out"] / shard["file"])).as_numpy_iterator())
            assert header["shard_sha256"] == shard["sha256"] and header["shard_bytes"] == len(data) == shard["bytes"]
            assert [tuple(row) for row in table[:, :2].tolist()] == _framing(data)
            for row, record in zip(table.tolist(), records):
                offset, length, crc, features, mask, label, label_length, sequence, sequence_length = row
                body = data[offset + 12: offset + 12 + length]
                assert body == record and struct.unpack_from("<I", data, offset + 12 + length)[0] == crc
                feature = tf.train.Example.FromString(record).features.feature
                assert body[features:features + builder.info.num_frames * builder.info.feature_dim * 2] == \
                    feature["features"].bytes_list.value[0]
                assert list(body[mask:mask + 8]) == list(feature["mask"].int64_list.value)
                assert label_length == 1 and body[label] == feature["label"].int64_list.value[0]
                assert body[sequence:sequence + sequence_length] == feature["sequence_id"].bytes_list.value[0]
                checked += 1
    assert checked == sum(builder.info.splits.values())


def test_the_writer_writes_the_bytes_tensorflow_writes(built, tmp_path):
    shard = built["manifest"]["splits"]["train"]["shards"][0]
    records = list(tf.data.TFRecordDataset(str(built["out"] / shard["file"])).as_numpy_iterator())
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for record in records:
            writer.write(record)
    ours = tmp_path / "ours.tfrecord"
    with open(ours, "wb") as handle:
        writer = shard_index.RecordWriter(handle, 8, 8 * built["manifest"]["feature_dim"] * 2)
        for record in records:
            writer.write(record)
    assert ours.read_bytes() == theirs.read_bytes() == (built["out"] / shard["file"]).read_bytes()


@pytest.mark.parametrize("read_options, example_config", [
    (dict(), ExampleConfig()),
    (dict(repeat=True), ExampleConfig(seq_len=5)),
    (dict(holdout=Holdout(0.3)), ExampleConfig(cast=False)),
    (dict(holdout=Holdout(0.3, part="held")), ExampleConfig()),
    (dict(cache=True), ExampleConfig()),
])
def test_mapped_shards_give_the_batches_tfrecorddataset_gives(built, read_options, example_config):
    steps = 9 if read_options.get("repeat") else None
    mapped = DatasetBuilder(str(built["out"])).as_dataset(
        "train", batch_size=5, read_config=ReadConfig(shuffle=True, seed=3, **read_options), example_config=example_config)
    streamed = DatasetBuilder(str(built["out"])).as_dataset(
        "train", batch_size=5, read_config=ReadConfig(shuffle=True, seed=3, source="stream", **read_options),
        example_config=example_config)
    pairs = list(zip(mapped.take(steps) if steps else mapped, streamed.take(steps) if steps else streamed))
    assert pairs and len(pairs) == (steps or sum(1 for _ in streamed))
    for ((features, mask), label), ((features_s, mask_s), label_s) in pairs:
        assert features.dtype == features_s.dtype and mask.dtype == tf.bool
        np.testing.assert_array_equal(features.numpy(), features_s.numpy())
        np.testing.assert_array_equal(mask.numpy(), mask_s.numpy())
        np.testing.assert_array_equal(label.numpy(), label_s.numpy())


def test_the_mapped_reader_is_the_one_training_uses(built, monkeypatch):
    builder = DatasetBuilder(str(built["out"]))
    paths, _ = builder.usable_files("train", False)
    assert isinstance(builder._table("train", paths, ReadConfig(), False), read.mapped_shards.MappedShards)  # gathered by index
    expected = _batches(builder, holdout=Holdout(0.3))
    monkeypatch.setattr(read, "_mappable_files", lambda: len(paths) - 1)  # too many files to map: streamed
    assert builder._table("train", paths, ReadConfig(), False) is None  # streamed
    assert _batches(builder, holdout=Holdout(0.3)) == expected


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _label_at(folder, shard):
    header, table = shard_index.load(str(folder), shard)
    return int(table[0, 0] + 12 + table[0, 5])


DAMAGE = {
    "a flipped byte mid-shard": lambda folder, shard: _flip(folder / shard["file"], shard["bytes"] // 2),
    "a flipped label bit": lambda folder, shard: _flip(folder / shard["file"], _label_at(folder, shard)),
    "a shard cut to 60 %": lambda folder, shard: (folder / shard["file"]).write_bytes(
        (folder / shard["file"]).read_bytes()[: int(shard["bytes"] * 0.6)]),
    "a deleted shard": lambda folder, shard: (folder / shard["file"]).unlink(),
    "a flipped byte in the index": lambda folder, shard: _flip(folder / shard["index"]["file"], 40),
    "a deleted index": lambda folder, shard: (folder / shard["index"]["file"]).unlink(),
    "a stale shard with its own index": lambda folder, shard: [
        shutil.copyfile(folder / other["file"], folder / shard["file"]) or
        shutil.copyfile(folder / other["index"]["file"], folder / shard["index"]["file"])
        for other in [_other(folder, shard)]],
}


def _other(folder, shard):
    manifest = json.loads((folder / "manifest.json").read_text())
    return next(s for s in manifest["splits"]["train"]["shards"] if s["file"] != shard["file"])


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_any_damage_is_named_and_nothing_trains_on_it(built, tmp_path, capsys, kind):
    folder = _copy(built, tmp_path)
    shard = built["manifest"]["splits"]["train"]["shards"][1]
    DAMAGE[kind](folder, shard)
    path = f"{folder}/{shard['file']}"
    with pytest.raises(ShardError, match=shard["file"]):
        DatasetBuilder(str(folder)).as_dataset("train", batch_size=4)
    bad = DatasetBuilder(str(folder)).bad_shards("train")
    assert [p for p, _ in bad] == [path]
    capsys.readouterr()
    assert inspect.main([str(folder), "--verify"]) == 1
    assert f"DAMAGED: {path}: " in capsys.readouterr().out
    # Without --verify, inspect reads no shard: it sees what changes a size or an index, not a flipped bit.
    unread = kind in ("a flipped byte mid-shard", "a flipped label bit")
    assert inspect.main([str(folder)]) == (0 if unread else 1)
    argv = ["--shards", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--no-cache"]
    capsys.readouterr()
    assert cli.run(train_script.main, "train.py", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the build's warnings, repeated, then one error line
    assert err[-1].startswith("train.py: error: ") and shard["file"] in err[-1]
    assert not any("Traceback" in line or "error" in line for line in err[:-1]), err
    # skip_bad_shards is on_damage="skip" now: the damaged records are left out, at most the shard's, and an
    # index of an intact shard costs none (tests/test_damage_skip.py checks which, against an independent oracle).
    index_only = kind in ("a flipped byte in the index", "a deleted index")
    cost = "no record lost" if index_only else "[1-9][0-9]* of its records left out"
    with pytest.warns(UserWarning, match=f"damaged shard .*{shard['file']}: {cost}"):
        builder = DatasetBuilder(str(folder))
        kept = builder.as_dataset("train", batch_size=64, read_config=ReadConfig(skip_bad_shards=True))
    lost = [p for p in builder.damage("train") if p["record"] is not None]
    assert (len(lost) == 0) if index_only else (1 <= len(lost) <= shard["num_examples"] and {p["file"] for p in lost} == {path})
    assert sum(len(y) for _, y in kept) == built["manifest"]["splits"]["train"]["num_examples"] - len(lost)


@pytest.mark.parametrize("name, old, new", [
    ("manifest.json", '"BR"', '"BX"'),  # still valid JSON: a class renamed
    ("manifest.json", '"num_examples": 3', '"num_examples": 4'),
    ("feature_statistics.json", '"mean": [', '"mean": [1'),  # a standardisation silently off
])
def test_a_changed_manifest_or_statistics_file_stops_training(built, tmp_path, capsys, name, old, new):
    folder = _copy(built, tmp_path)
    text = (folder / name).read_text()
    assert old in text
    (folder / name).write_text(text.replace(old, new, 1))
    argv = ["--shards", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--no-cache"]
    capsys.readouterr()
    assert cli.run(train_script.main, "train.py", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train.py: error: ") and f"{folder}/{name}" in err[-1], err
    if name == "manifest.json":
        assert cli.run(inspect.main, "inspect", [str(folder)]) == 2
        said = capsys.readouterr().err
        assert f"{folder}/manifest.json" in said and ("was changed after the build" in said or "was edited" in said)


def test_a_flipped_bit_anywhere_in_a_shard_is_found(built, tmp_path):
    folder = _copy(built, tmp_path)
    shard = built["manifest"]["splits"]["val"]["shards"][0]
    original = (folder / shard["file"]).read_bytes()
    for at in sorted({0, 7, 8, 11, 12, 13, len(original) - 1, len(original) - 4, *range(0, len(original), len(original) // 16)}):
        data = bytearray(original)
        data[at] ^= 0x80
        (folder / shard["file"]).write_bytes(bytes(data))
        os.utime(folder / shard["file"], ns=(at + 1, at + 1))  # a new version of the file for the check's cache
        assert DatasetBuilder(str(folder)).bad_shards("val"), f"a flipped bit at byte {at} went unnoticed"
    (folder / shard["file"]).write_bytes(original)
    assert DatasetBuilder(str(folder)).bad_shards("val") == []


def test_each_version_of_a_shard_is_checked_once_per_process(built, tmp_path, monkeypatch):
    folder = _copy(built, tmp_path)
    calls = []
    real = shard_index.check
    monkeypatch.setattr(shard_index, "check", lambda *args: calls.append(args[3]) or real(*args))
    shards = len(built["manifest"]["splits"]["train"]["shards"])
    for _ in range(3):
        next(iter(DatasetBuilder(str(folder)).as_dataset("train", batch_size=4)))
    DatasetBuilder(str(folder)).bad_shards("train")
    assert len(calls) == shards
    touched = folder / built["manifest"]["splits"]["train"]["shards"][0]["file"]
    os.utime(touched, ns=(1, 1))
    next(iter(DatasetBuilder(str(folder)).as_dataset("train", batch_size=4)))
    assert calls[shards:] == [str(touched)]


def _as_schema_3(folder):
    """What a schema-3 build left: row files instead of indexes, "rows" in the manifest and records,
    and an identity that lacks what schema 4 added."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["schema_version"] = 3
    manifest.pop("checksum")  # schema 3 had none
    manifest["feature_statistics"].pop("sha256")
    manifest["rows"] = {"suffix": ".rows", "record_bytes": 16}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            (folder / shard.pop("index")["file"]).unlink()
            (folder / (shard["file"] + ".rows")).write_bytes(b"\0" * 16 * shard["num_examples"])
            shard["rows"] = {"file": shard["file"] + ".rows", "sha256": "0" * 64, "bytes": 16 * shard["num_examples"]}
            shard.pop("bytes")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    plan = json.loads((folder / ".build" / "plan.json").read_text())
    plan["identity"]["schema_version"] = plan["manifest"]["schema_version"] = 3
    plan.pop("checksum", None)  # schema 3's plan and records had none
    for key in ("mixed_precision", "jit_compile", "slotting", "device", "tensorflow", "keras"):
        plan["identity"]["extractor"].pop(key)
    plan["units"] = [[name, key[::-1]] for name, key in plan["units"]]
    (folder / ".build" / "plan.json").write_text(json.dumps(plan))
    for path in (folder / ".build").glob("*.tfrecord.json"):
        record = json.loads(path.read_text())
        index = record.pop("index")
        record["rows"] = {**index, "file": record["file"] + ".rows"}
        record["key"] = record["key"][::-1]
        record.pop("checksum", None)
        record["rows"].pop("key", None)
        path.write_text(json.dumps(record))


def test_a_schema_3_build_is_read_from_its_tfrecords_and_updated_without_decoding(built, tmp_path, capsys):
    folder = _copy(built, tmp_path)
    expected = _batches(DatasetBuilder(str(folder)))
    _as_schema_3(folder)
    old = DatasetBuilder(str(folder))
    assert old.manifest["schema_version"] == 3 and _batches(old) == expected  # row files are never read
    assert old.bad_shards("train") == []
    capsys.readouterr()
    assert inspect.main([str(folder)]) == 0
    assert "schema v3: training streams the TFRecords (slower); the build command with --update brings it to v4" in capsys.readouterr().out
    with pytest.raises(InputError, match="holds a build of schema version 3; pass --update to bring it to version 4"):
        dancedata.build_shards(str(built["root"]), str(folder), **OPTIONS)
    capsys.readouterr()
    dancedata.build_shards(str(built["root"]), str(folder), update=True, **OPTIONS)
    assert "; 0 to decode" in capsys.readouterr().err
    assert not list(folder.glob("*.rows"))
    assert build_outputs(folder) == build_outputs(built["out"])  # a fresh schema-4 build's bytes


def test_the_build_command_writes_a_lost_index_again_without_decoding(built, tmp_path, capsys):
    folder = _copy(built, tmp_path)
    sorted(folder.glob("val-*.index"))[0].unlink()
    dancedata.build_shards(str(built["root"]), str(folder), **OPTIONS)
    assert "are kept; 0 to build" in capsys.readouterr().err  # the index was rebuilt from the intact TFRecord
    assert build_outputs(folder) == build_outputs(built["out"])


def test_shard_and_index_bytes_stay_within_5_percent_of_the_tfrecords(built):
    shards = [s for split in built["manifest"]["splits"].values() for s in split["shards"]]
    assert sum(s["bytes"] + s["index"]["bytes"] for s in shards) <= 1.05 * sum(s["bytes"] for s in shards)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["splits"]["train"]["shards"][0].update(file="../../etc/passwd"), "lists a shard that is not a shard of it"),
    (lambda m: m.update(num_frames=10**9), "num_frames"),
    (lambda m: m["splits"]["train"]["shards"][0].update(num_examples=-1), "lists a shard that is not a shard of it"),
    (lambda m: m["splits"]["train"]["shards"][0]["index"].update(file="x.index"), "malformed index entry"),
    (lambda m: m["splits"].update(evil={"num_examples": 0, "shards": []}), "splits must be among"),
])
def test_a_manifest_that_names_other_files_or_absurd_sizes_is_refused(built, tmp_path, edit, message):
    folder = _copy(built, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(dancedata.ManifestError, match=message):
        DatasetBuilder(str(folder))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
def test_many_datasets_share_one_mapping_per_shard(built):
    """TensorFlow keeps each dataset's numpy_function registered after the dataset is gone; a mapping
    per dataset would hold a descriptor per shard for every as_dataset call."""
    builder = DatasetBuilder(str(built["out"]))
    shards = len(builder.files("train"))
    for _ in range(3):
        next(iter(builder.as_dataset("train", batch_size=4)))
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        next(iter(builder.as_dataset("train", batch_size=4, read_config=ReadConfig(shuffle=True, seed=0))))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before < shards


def test_a_shard_whose_every_video_failed_is_empty_not_damaged(tmp_path):
    """A unit of unreadable videos commits an empty shard: whole, not damaged; gone, it is named."""
    from conftest import make_aist_folder

    root = tmp_path / "aist"
    make_aist_folder(root, genres=("BR", "PO"), performances=2, cameras=1)
    for i in range(6):
        (root / f"gLO_sBM_c01_d{30 + i:02d}_mLO0_ch{i + 1:02d}.mp4").write_bytes(b"not a video")
    manifest = dancedata.build_shards(str(root), str(tmp_path / "out"), frames=8, shard_mb=0.05, quiet=True, **FAST_EXTRACTOR)
    empty = [(name, s) for name, split in manifest["splits"].items() for s in split["shards"] if not s["num_examples"]]
    assert empty, "the fixture should give an empty shard"
    builder = DatasetBuilder(str(tmp_path / "out"))
    assert all(builder.bad_shards(name) == [] for name in builder.info.splits)
    assert inspect.main([str(tmp_path / "out"), "--verify"]) == 0
    name, shard = empty[0]
    (tmp_path / "out" / shard["file"]).unlink()
    assert [p for p, _ in DatasetBuilder(str(tmp_path / "out")).bad_shards(name)] == [f"{tmp_path / 'out'}/{shard['file']}"]


def test_a_damaged_shard_of_a_schema_3_build_is_named_with_its_readable_records(built, tmp_path):
    folder = _copy(built, tmp_path)
    _as_schema_3(folder)
    shard = DatasetBuilder(str(folder)).manifest["splits"]["train"]["shards"][1]
    path = folder / shard["file"]
    path.write_bytes(path.read_bytes()[: -100])  # the last record cut
    (bad,) = DatasetBuilder(str(folder)).bad_shards("train")
    assert bad == (str(path), f"shard {path} is corrupted or truncated: {shard['num_examples'] - 1} of its "
                              f"{shard['num_examples']} records are readable")
