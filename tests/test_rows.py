"""Row files (schema 3): the training fields of each example beside its shard, read without protos.

The oracle is the TFRecords: their Examples parsed by protobuf, and the batches the TFRecord reader
gives (DatasetBuilder(rows=False)), which every build before schema 3 is read with.
"""
import gc
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import dancedata
from dancedata import DatasetBuilder, row_files
from dancedata.errors import InputError, ShardError
from conftest import FAST_EXTRACTOR, build_outputs


def test_each_row_holds_its_examples_training_fields(built):
    builder = DatasetBuilder(str(built["out"]))
    layout = builder.manifest["rows"]
    # The layout as numpy reads it, from the manifest's JSON alone.
    dtype = np.dtype({"names": [f["name"] for f in layout["fields"]],
                      "formats": [(np.dtype(f["dtype"]).newbyteorder("<"), tuple(f["shape"])) for f in layout["fields"]],
                      "offsets": [f["offset"] for f in layout["fields"]], "itemsize": layout["record_bytes"]})
    checked = 0
    for split in builder.info.splits:
        for shard in builder.manifest["splits"][split]["shards"]:
            rows = np.fromfile(built["out"] / shard["rows"]["file"], dtype)
            examples = [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(str(built["out"] / shard["file"])).as_numpy_iterator()]
            assert len(rows) == len(examples) == shard["num_examples"]
            for row, example in zip(rows, examples):
                feature = example.features.feature
                stored = np.frombuffer(feature["features"].bytes_list.value[0], "<f2").reshape(8, -1)
                np.testing.assert_array_equal(row["features"], stored)
                np.testing.assert_array_equal(row["mask"], feature["mask"].int64_list.value)
                assert row["label"] == feature["label"].int64_list.value[0]
                sequence = feature["sequence_id"].bytes_list.value[0]
                assert row["holdout_bucket"] == tf.strings.to_hash_bucket_fast([sequence], 1000).numpy()[0]
                checked += 1
    assert checked == sum(builder.info.splits.values())


@pytest.mark.parametrize("options", [
    dict(shuffle=True, seed=3, batch_size=5),
    dict(shuffle=True, seed=4, batch_size=4, seq_len=5, repeat=True),
    dict(shuffle=True, seed=5, batch_size=6, holdout_fraction=0.3, cast=False),
    dict(batch_size=6, holdout_fraction=0.3, holdout=True),
    dict(shuffle=True, seed=6, batch_size=4, cache=True),
])
@pytest.mark.parametrize("map_rows", [True, False], ids=["mapped", "streamed"])
def test_row_files_give_the_batches_the_tfrecords_give(built, options, map_rows):
    rows = DatasetBuilder(str(built["out"]), map_rows=map_rows).as_dataset("train", **options)
    records = DatasetBuilder(str(built["out"]), rows=False).as_dataset("train", **options)
    steps = 9 if options.get("repeat") else None
    pairs = list(zip(rows.take(steps) if steps else rows, records.take(steps) if steps else records))
    assert pairs and len(pairs) == (steps or sum(1 for _ in records))
    for ((features, mask), label), ((features_r, mask_r), label_r) in pairs:
        assert features.dtype == features_r.dtype and mask.dtype == mask_r.dtype == tf.bool
        np.testing.assert_array_equal(features.numpy(), features_r.numpy())
        np.testing.assert_array_equal(mask.numpy(), mask_r.numpy())
        np.testing.assert_array_equal(label.numpy(), label_r.numpy())


def _copy(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built["out"], copy)
    return copy


def _batches(builder, **options):
    return [(f.numpy().tobytes(), k.numpy().tobytes(), y.numpy().tobytes())
            for (f, k), y in builder.as_dataset("train", batch_size=4, shuffle=True, seed=1, **options)]


def test_training_reads_only_the_row_files(built, tmp_path):
    copy = _copy(built, tmp_path)
    expected = _batches(DatasetBuilder(str(copy)))
    for shard in copy.glob("train-*.tfrecord"):
        shard.unlink()  # what is read now can only come from the row files
    assert _batches(DatasetBuilder(str(copy))) == expected


def test_a_missing_row_file_means_reading_the_tfrecords(built, tmp_path):
    copy = _copy(built, tmp_path)
    expected = _batches(DatasetBuilder(str(copy)))
    missing = sorted(copy.glob("train-*.rows"))[1]
    missing.unlink()
    with pytest.warns(UserWarning, match=f"row file {missing} is missing; reading the TFRecords instead"):
        assert _batches(DatasetBuilder(str(copy))) == expected


def test_a_truncated_row_file_is_a_damaged_shard(built, tmp_path):
    copy = _copy(built, tmp_path)
    builder = DatasetBuilder(str(copy))
    shard = builder.manifest["splits"]["train"]["shards"][1]
    damaged = copy / shard["rows"]["file"]
    damaged.write_bytes(damaged.read_bytes()[: -builder.manifest["rows"]["record_bytes"]])  # one whole row short
    with pytest.raises(ShardError, match=f"{shard['file']}: its row file {damaged} holds .* bytes, not the .* of "
                                         f"{shard['num_examples']} rows: truncated or damaged. Rebuild it"):
        builder.as_dataset("train")
    with pytest.raises(ShardError, match="does not match its sha256"):
        builder.verify("train")
    with pytest.warns(UserWarning, match=f"skipping 1 damaged shard.*{shard['file']}"):
        kept = builder.as_dataset("train", batch_size=64, skip_bad_shards=True)
    assert sum(len(y) for _, y in kept) == builder.info.splits["train"] - shard["num_examples"]


def _as_schema_2(folder):
    """What a schema-2 build left: no row files, no "rows" in the manifest and records, and unit keys
    of another identity."""
    for path in folder.glob("*.rows"):
        path.unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["schema_version"] = 2
    manifest.pop("rows")
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            shard.pop("rows")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    plan = json.loads((folder / ".build" / "plan.json").read_text())
    plan["identity"]["schema_version"] = plan["manifest"]["schema_version"] = 2
    plan["manifest"].pop("rows")
    plan["units"] = [[name, key[::-1]] for name, key in plan["units"]]
    (folder / ".build" / "plan.json").write_text(json.dumps(plan))
    for path in (folder / ".build").glob("*.tfrecord.json"):
        record = json.loads(path.read_text())
        record.pop("rows")
        record["key"] = record["key"][::-1]
        path.write_text(json.dumps(record))


def test_a_build_before_row_files_reads_the_same_batches(built, tmp_path, capsys):
    from dancedata import inspect

    copy = _copy(built, tmp_path)
    expected = _batches(DatasetBuilder(str(copy)))
    assert inspect.main([str(copy)]) == 0
    on_disk = sum(p.stat().st_size for p in copy.glob("*.rows"))
    assert f"row files (what training reads): {on_disk / 1e6:.1f} MB beside the shards" in capsys.readouterr().out
    _as_schema_2(copy)
    old = DatasetBuilder(str(copy))
    assert old.manifest["schema_version"] == 2 and "rows" not in old.manifest
    assert _batches(old) == expected
    assert inspect.main([str(copy)]) == 0
    assert "row files: none (schema v2; training reads the TFRecords); the build command with --update adds them" in capsys.readouterr().out


def test_update_adds_row_files_to_a_schema_2_build_without_decoding(built, tmp_path, capsys):
    copy = _copy(built, tmp_path)
    _as_schema_2(copy)
    options = dict(frames=8, shard_mb=0.1, quiet=True, **FAST_EXTRACTOR)
    with pytest.raises(InputError, match="holds a build of schema version 2; pass --update to add what version 3 writes"):
        dancedata.build_shards(str(built["root"]), str(copy), **options)
    capsys.readouterr()
    dancedata.build_shards(str(built["root"]), str(copy), update=True, **options)
    assert "; 0 to decode" in capsys.readouterr().err
    assert build_outputs(copy) == build_outputs(built["out"])  # a fresh schema-3 build's bytes


def test_the_build_command_writes_a_lost_row_file_again_without_decoding(built, tmp_path, capsys):
    copy = _copy(built, tmp_path)
    lost = sorted(copy.glob("val-*.rows"))[0]
    lost.unlink()
    dancedata.build_shards(str(built["root"]), str(copy), frames=8, shard_mb=0.1, quiet=True, **FAST_EXTRACTOR)
    assert "; 0 to decode" in capsys.readouterr().err  # its examples came from the intact TFRecord
    assert build_outputs(copy) == build_outputs(built["out"])


def test_float32_row_files_decode_as_the_tfrecords_do(tmp_path):
    from conftest import make_aist_folder

    root = tmp_path / "aist"
    make_aist_folder(root, genres=("BR", "PO"), performances=3)
    out = tmp_path / "out"
    dancedata.build_shards(str(root), str(out), frames=8, shard_mb=0.1, quiet=True, dtype="float32", **FAST_EXTRACTOR)
    builder = DatasetBuilder(str(out))
    assert builder.manifest["rows"]["fields"][0]["dtype"] == "float32"
    rows = builder.as_dataset("train", batch_size=3, shuffle=True, seed=2, cast=False)
    records = DatasetBuilder(str(out), rows=False).as_dataset("train", batch_size=3, shuffle=True, seed=2, cast=False)
    pairs = list(zip(rows, records))
    assert pairs and len(pairs) == sum(1 for _ in records)
    for ((features, _), label), ((features_r, _), label_r) in pairs:
        assert features.dtype == tf.float32
        np.testing.assert_array_equal(features.numpy(), features_r.numpy())
        np.testing.assert_array_equal(label.numpy(), label_r.numpy())


def test_mapped_rows_gather_the_bytes_numpy_reads(built):
    """The memory-mapped table against np.fromfile's reading of the same files (the manifest's layout
    as a numpy dtype), at indices spread over every shard."""
    builder = DatasetBuilder(str(built["out"]))
    paths, counts = builder.usable_files("train", False)
    layout = builder.manifest["rows"]
    dtype = np.dtype({"names": [f["name"] for f in layout["fields"]],
                      "formats": [(np.dtype(f["dtype"]).newbyteorder("<"), tuple(f["shape"])) for f in layout["fields"]],
                      "offsets": [f["offset"] for f in layout["fields"]], "itemsize": layout["record_bytes"]})
    assert len(paths) > 1
    rows = np.concatenate([np.fromfile(path + ".rows", dtype) for path in paths])
    table = row_files.MappedRows(layout, paths, counts)
    indices = np.random.default_rng(0).permutation(len(rows))
    np.testing.assert_array_equal(table.gather(indices), rows["features"][indices])
    np.testing.assert_array_equal(table.masks, rows["mask"] != 0)
    np.testing.assert_array_equal(table.labels, rows["label"])
    np.testing.assert_array_equal(table.buckets, rows["holdout_bucket"])
    assert table.gather(indices[:0]).shape == (0, *rows["features"].shape[1:])


def test_local_row_files_are_mapped_and_too_many_are_streamed(built, monkeypatch):
    """Local row files are memory-mapped (the sources are index ranges, nothing read in parallel);
    a split with more shards than the file-descriptor budget is streamed, to the same batches."""
    builder = DatasetBuilder(str(built["out"]))
    paths, counts = builder.usable_files("train", False)
    assert row_files.reading(builder.path, builder.manifest["rows"], paths, counts).parallel is False
    options = dict(batch_size=4, shuffle=True, seed=8, holdout_fraction=0.3)
    mapped = _batches_of(builder.as_dataset("train", **options))
    monkeypatch.setattr(row_files, "_mappable_files", lambda: len(paths) - 1)
    assert row_files.reading(builder.path, builder.manifest["rows"], paths, counts).parallel is True
    assert _batches_of(builder.as_dataset("train", **options)) == mapped


def test_a_row_file_cut_after_the_check_is_a_shard_error(built, tmp_path):
    copy = _copy(built, tmp_path)
    builder = DatasetBuilder(str(copy))
    paths, counts = builder.usable_files("train", False)
    row_file = copy / (paths[0].rsplit("/", 1)[1] + ".rows")
    row_file.write_bytes(row_file.read_bytes()[:-1])
    with pytest.raises(ShardError, match=f"row file {row_file} holds"):
        row_files.MappedRows(builder.manifest["rows"], paths, counts)


def _batches_of(dataset):
    return [(f.numpy().tobytes(), k.numpy().tobytes(), y.numpy().tobytes()) for (f, k), y in dataset]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
def test_many_datasets_share_one_mapping_per_row_file(built):
    """TensorFlow keeps each dataset's numpy_function registered after the dataset is gone; a mapping
    per dataset would hold a descriptor per row file for every as_dataset call (found: 200 after 50)."""
    builder = DatasetBuilder(str(built["out"]))
    shards = len(builder.files("train"))
    for _ in range(3):  # the first mappings
        next(iter(builder.as_dataset("train", batch_size=4)))
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        next(iter(builder.as_dataset("train", batch_size=4, shuffle=True, seed=0)))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before < shards
