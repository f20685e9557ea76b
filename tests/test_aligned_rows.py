"""Features at row boundaries: the writer pads a record so its features start at a multiple of the build's
feature row in the shard, and the mapped reader has TensorFlow gather those rows straight from the mapped
files; builds written before (no padding) are gathered in numpy, as they were.

Oracles independent of the code under test: struct walks the TFRecord framing and protobuf parses each
record (the features found as bytes inside it), TFRecordDataset reads the files, the bytes of the files
are read with open(), and the streamed reader (tf.io.parse_example) gives the batches.
"""
import hashlib
import json
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf

from conftest import host_array
from dancedata import DatasetBuilder, ExampleConfig, ReadConfig, manifest, mapped_shards, schema, shard_index, write

HALF = ExampleConfig(cast=False)


@pytest.mark.parametrize("frames, feature_bytes, row", [
    (20, 20 * 2048 * 2, 4096),  # AIST: one frame of 2048 float16 a row
    (8, 8 * 16 * 2, 256),  # small frames: the whole example
    (3, 3 * 1280 * 2, 2560),  # a 1280-wide backbone: one frame
    (6, 6 * 512 * 2, 3 * 1024),  # three frames fit, four do not divide six
    (2, 2 * 2048 * 4, 8192),  # float32: a frame is more than 4 KB, still one row
])
def test_a_feature_row_is_the_most_whole_frames_in_4_kb(frames, feature_bytes, row):
    assert shard_index.feature_row(frames, feature_bytes) == row


def test_the_padding_is_a_field_every_parser_skips():
    example = schema.to_example(np.ones((2, 3), np.float32), np.ones(2), np.arange(2), 1, {"video_id": "v"}, "float16")
    data = schema.serialize(example)
    spec = schema.parse_spec(schema.feature_spec(2, 3, "float16"))
    for row in (4, 240, 4096):
        for needed in sorted({0, 1, 2, 3, 127, 128, 129, 130, 131, row - 1, row // 2} & set(range(row))):
            padded = shard_index.padding(needed, row) + data
            assert (len(padded) - len(data)) % row == needed and len(padded) - len(data) >= 2
            assert tf.train.Example.FromString(padded).features == example.features  # the padding: an unknown field
            parsed, plain = (tf.io.parse_example(tf.constant([d]), spec) for d in (padded, data))
            assert all(np.array_equal(parsed[k].numpy(), plain[k].numpy()) for k in spec)


def _records(path):
    """(offset of its data in the file, the data) of each record, the framing walked with struct."""
    data, found, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        found.append((at + 12, data[at + 12:at + 12 + length]))
        at += length + 16
    assert at == len(data)
    return found


def test_every_records_features_start_at_a_row_boundary(built):
    document = built["manifest"]
    row = shard_index.feature_row(document["num_frames"], shard_index.feature_bytes(document))
    padded = checked = 0
    for split in document["splits"].values():
        for shard in split["shards"]:
            for offset, data in _records(built["out"] / shard["file"]):
                features = tf.train.Example.FromString(data).features.feature[schema.FEATURES].bytes_list.value[0]
                assert data.count(features) == 1 and (offset + data.find(features)) % row == 0
                padded += data[0] == schema.PADDING_FIELD << 3 | 2
                checked += 1
    assert checked == sum(s["num_examples"] for s in document["splits"].values()) and padded > 0


def _mapped(folder, split="train"):
    builder = DatasetBuilder(str(folder))
    paths, _ = builder.usable_files(split, False)
    return builder._table(split, paths, ReadConfig(), False)


def _epochs(folder, **read):
    """Two shuffled epochs of the train split, each batch's (features, mask, label) bytes."""
    dataset = DatasetBuilder(str(folder)).as_dataset(
        "train", batch_size=3, read_config=ReadConfig(shuffle=True, seed=7, **read), example_config=HALF)
    return [[(f.numpy().tobytes(), m.numpy().tobytes(), y.numpy().tobytes()) for (f, m), y in dataset]
            for _ in range(2)]


def test_the_mapped_reader_gathers_the_rows_in_tensorflow_as_the_stream_reads_them(built):
    shards = _mapped(built["out"])
    shards.decoder()
    assert shards.row is not None and shards.gathers_in == "tensorflow"
    mapped = _epochs(built["out"])
    assert mapped[0] != mapped[1] and mapped == _epochs(built["out"], source="stream")


def test_tensorflow_reads_the_mapped_files_own_pages(built):
    """The table TensorFlow gathers from is the files' bytes where the kernel mapped them: no copy."""
    shards = _mapped(built["out"])
    table, first = shards._aligned()
    pages = host_array(table)
    assert pages.ctypes.data == shards._pages.ctypes.data and pages.shape == shards._pages.shape
    flat, at = pages.reshape(-1), 0
    for path, offsets, _ in shards._files:
        data = open(path, "rb").read()
        at = flat.tobytes().index(data[:4096], at)  # each file whole, one after another, at a row boundary
        assert at % shards.row == 0 and flat[at:at + len(data)].tobytes() == data
        at += len(data)
    (path, offsets, _), row = shards._files[0], int(first.numpy()[0])
    rows = shards.width // shards.row
    assert pages[row:row + rows].tobytes() == open(path, "rb").read()[offsets[0]:offsets[0] + shards.width]


def test_a_file_replaced_since_its_check_is_gathered_from_the_checked_version(built, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(built["out"], folder)
    expected = _epochs(folder)
    shards = _mapped(folder)  # every shard checked and mapped
    path = shards._files[0][0]
    shutil.copyfile(path, path + ".new")
    os.replace(path + ".new", path)  # the same bytes, another file: not the version that was checked
    assert mapped_shards.aligned_rows([(p, v) for p, _, v in shards._files], shards.row) is None
    newer = _mapped(folder)  # the new version checked too (a rebuild read by another dataset): the old one's is gone
    shards.decoder()
    assert shards.gathers_in == "numpy"  # the old table reads the mapping it checked, not the newer file
    newer.decoder()
    assert newer.gathers_in == "tensorflow"
    assert _epochs(folder) == expected


def _unpadded(data: bytes) -> bytes:
    if data[0] != schema.PADDING_FIELD << 3 | 2:
        return data
    length, at = shard_index.varint(data, 1)
    return data[at + length:]


def _as_written_before_the_feature_row(folder, shards=None):
    """The build as writers before the feature row wrote it (its first `shards` shards of each split; None:
    all): each record without its padding, the shards, indexes and manifest written again to match."""
    document = json.loads((folder / "manifest.json").read_text())
    frames, width = document["num_frames"], shard_index.feature_bytes(document)
    for split in document["splits"].values():
        for shard in split["shards"][:shards]:
            path = folder / shard["file"]
            records = [_unpadded(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
            with tf.io.TFRecordWriter(str(path)) as writer:
                for record in records:
                    writer.write(record)
            index = shard_index.rebuild(str(path), frames, width, shard["index"]["key"])
            (folder / shard["index"]["file"]).write_bytes(index)
            shard.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
            shard["index"].update(bytes=len(index), sha256=hashlib.sha256(index).hexdigest())
            state = folder / ".build" / (shard["file"] + ".json")  # the build's own record of the shard
            record = json.loads(state.read_text())
            record.update(bytes=shard["bytes"], sha256=shard["sha256"])
            record["index"].update(bytes=shard["index"]["bytes"], sha256=shard["index"]["sha256"])
            write.write_json(str(state), manifest.sealed(record))  # as the build writes it: byte for byte checked
    (folder / "manifest.json").write_text(manifest.dumps(manifest.sealed(document)))


@pytest.mark.parametrize("shards", [None, 1])  # a whole older build; one resumed or updated from it (one shard old)
def test_a_build_written_before_the_feature_row_is_gathered_in_numpy_and_says_so(built, tmp_path, shards):
    folder = tmp_path / "old"
    shutil.copytree(built["out"], folder)
    expected = _epochs(folder)
    _as_written_before_the_feature_row(folder, shards)
    assert sum(p.stat().st_size for p in folder.glob("*.tfrecord")) < sum(
        p.stat().st_size for p in built["out"].glob("*.tfrecord"))
    table = _mapped(folder)
    with pytest.warns(UserWarning, match="was written before feature rows .* gathers its features in Python"):
        table.decoder()
    assert table.row is None and table.gathers_in == "numpy"
    with pytest.warns(UserWarning, match="written before feature rows"):
        old = _epochs(folder)
    assert old == expected == _epochs(folder, source="stream")


def test_the_build_command_puts_an_older_builds_features_on_rows_without_decoding(built, tmp_path, capsys):
    """The same command again, over a build written before feature rows: every shard written anew from its
    own examples, no video decoded, and the result byte for byte a fresh build's."""
    import dancedata
    from conftest import FAST_EXTRACTOR, build_outputs

    folder = tmp_path / "old"
    shutil.copytree(built["out"], folder)
    _as_written_before_the_feature_row(folder)
    assert build_outputs(folder) != build_outputs(built["out"])
    capsys.readouterr()
    dancedata.build_shards(str(built["root"]), str(folder), frames=8, shard_mb=0.1, quiet=True, **FAST_EXTRACTOR)
    assert "; 0 to decode" in capsys.readouterr().err
    assert build_outputs(folder) == build_outputs(built["out"])
    table = _mapped(folder)
    table.decoder()
    assert table.gathers_in == "tensorflow"


def test_a_copied_record_is_padded_for_its_new_place_only(built, tmp_path):
    """A record taken from a shard (with its padding) and written again elsewhere gets one padding, its own."""
    shard = built["manifest"]["splits"]["train"]["shards"][0]
    records = list(tf.data.TFRecordDataset(str(built["out"] / shard["file"])).as_numpy_iterator())
    frames, width = built["manifest"]["num_frames"], shard_index.feature_bytes(built["manifest"])
    path = tmp_path / "copy.tfrecord"
    with open(path, "wb") as handle:
        writer = shard_index.RecordWriter(handle, frames, width)
        for record in reversed(records):  # other places than before
            writer.write(record)
    row = shard_index.feature_row(frames, width)
    for (offset, data), original in zip(_records(path), reversed(records)):
        assert tf.train.Example.FromString(data).features == tf.train.Example.FromString(original).features
        assert _unpadded(_unpadded(data)) == _unpadded(data) == _unpadded(original)  # one padding at most
        features = tf.train.Example.FromString(data).features.feature[schema.FEATURES].bytes_list.value[0]
        assert (offset + data.find(features)) % row == 0


@pytest.mark.parametrize("frames, dim, dtype", [(6, 512, "float16"), (2, 2048, "float32"), (8, 16, "float16")])
def test_other_shapes_and_float32_are_gathered_as_written(tmp_path, frames, dim, dtype):
    """Rows other than 4 KB (3 KB: three frames of 512 float16; 8 KB: one float32 frame of 2048, more than 4 KB;
    256 bytes: a whole small example), read against the same features written as one .npy array."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import readers

    folder = tmp_path / "build"
    written = np.load(readers.make_build(str(folder), 40, 3, frames=frames, dim=dim, dtype=dtype))
    table = _mapped(folder)
    table.decoder()
    assert table.gathers_in == "tensorflow" and table.row == shard_index.feature_row(frames, frames * dim * written.itemsize)
    dataset = DatasetBuilder(str(folder)).as_dataset("train", batch_size=7, read_config=ReadConfig(), example_config=HALF)
    read = np.concatenate([features.numpy() for (features, _), _ in dataset])
    assert read.dtype == written.dtype and read.tobytes() == written.tobytes()


@pytest.mark.skipif(not os.path.isfile("/proc/self/maps"), reason="counts mappings in /proc/self/maps")
def test_each_datasets_mapping_goes_with_it(built):
    import gc

    builder = DatasetBuilder(str(built["out"]))
    shard = str(built["out"] / builder.manifest["splits"]["train"]["shards"][0]["file"])

    def mappings():
        with open("/proc/self/maps") as handle:
            return sum(line.rstrip().endswith(shard) for line in handle)

    for _ in range(2):
        next(iter(builder.as_dataset("train", batch_size=4)))
    gc.collect()
    before = mappings()
    for _ in range(6):
        next(iter(builder.as_dataset("train", batch_size=4, read_config=ReadConfig(shuffle=True, seed=0))))
    gc.collect()
    assert mappings() <= before


COPIES = r'''
import json, os, sys
sys.path.insert(0, sys.argv[2])
import readers  # benchmarks/readers.py: a synthetic build, as the build's writer writes it
from dancedata import DatasetBuilder, ReadConfig

folder = sys.argv[1]
readers.make_build(folder, 1000, 2)  # 82 MB of features: above glibc's 32 MB, each copy gets a mapping of its own
split = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder) if name.endswith(".tfrecord"))


def copies():
    """Anonymous mappings (the process's own memory) at least 90 % of the split's size: copies of it."""
    found, name = 0, ""
    with open("/proc/self/smaps") as handle:
        for line in handle:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's first line: range, ..., name
                name = fields[5] if len(fields) > 5 else ""
            elif fields[0] == "Anonymous:" and name != "[heap]" and int(fields[1]) * 1024 >= 0.9 * split:
                found += 1  # (the heap holds the interpreter's and TensorFlow's small objects: ~100 MB here)
    return found


counts = {}
for name, read in (("mapped", ReadConfig(shuffle=True)), ("cached", ReadConfig(shuffle=True, cache=True))):
    dataset = DatasetBuilder(folder).as_dataset("train", batch_size=64, read_config=read)
    for _ in range(2):
        for batch in dataset:
            pass
    counts[name] = copies()
    del dataset, batch
print(json.dumps(counts))
'''


@pytest.mark.skipif(not os.path.isfile("/proc/self/smaps"), reason="reads /proc/self/smaps")
def test_reading_a_split_holds_no_copy_of_it_but_the_cache(tmp_path):
    """tf.data copies every tensor a pipeline's functions capture when it rewrites the pipeline for an
    iterator: the readers turn those rewrites off, so the mapped split stays the files' pages and a cache is
    held once."""
    import subprocess
    import sys

    benchmarks = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    result = subprocess.run([sys.executable, "-c", COPIES, str(tmp_path / "build"), benchmarks],
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"mapped": 0, "cached": 1}
