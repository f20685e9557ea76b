"""The streamed reader's windows read by byte range (dancedata.ranged_windows): the batches the records
path gives (TFRecordDataset and parse_example, the reader it stands in for), every example's bytes as
written (the same features written as one .npy array beside the build), and each kind of damage met
while reading named as the records path names it, as an InvalidArgumentError shard_error turns into a
ShardError naming the file."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from dancedata import DatasetBuilder, ExampleConfig, Holdout, ReadConfig, ranged_windows
from dancedata.read import shard_error
from dancedata.errors import ShardError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import readers  # noqa: E402
from conftest import host_array  # noqa: E402

HALF = ExampleConfig(cast=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """300 distinct examples of [4, 64] float16 in 5 shards of 60, and the same features as one array."""
    folder = tmp_path_factory.mktemp("ranged") / "build"
    written = np.load(readers.make_build(str(folder), 300, 5, frames=4, dim=64, distinct=300))
    return folder, written


def _records_path(monkeypatch):
    """The records path from here on: what builds without indexes, a damaged index or a service get."""
    monkeypatch.setattr(DatasetBuilder, "_ranged", lambda *args: None)


def _epochs(folder, epochs=2, batch_size=7, input_context=None, **read):
    """Two epochs' batches (repeat: three epochs of steps_per_epoch batches, as one)."""
    dataset = DatasetBuilder(str(folder)).as_dataset(
        "train", batch_size=batch_size, read_config=ReadConfig(source="stream", **read), example_config=HALF,
        input_context=input_context)
    if read.get("repeat"):
        dataset, epochs = dataset.take(3 * read["steps_per_epoch"]), 1
    return [[(f.numpy(), m.numpy(), y.numpy()) for (f, m), y in dataset] for _ in range(epochs)]


def _same(a, b):
    return len(a) == len(b) and all(len(x) == len(y) and all(
        all(np.array_equal(p, q) for p, q in zip(s, t)) for s, t in zip(x, y)) for x, y in zip(a, b))


@pytest.mark.parametrize("read", [
    dict(shuffle=True, seed=3, shuffle_buffer=16),  # windows of 16 across the shards' ends (60 each)
    dict(shuffle=True, seed=3),  # the default window: 256, more than four shards
    dict(shuffle=False),
    dict(shuffle=True, seed=5, shuffle_buffer=16, holdout=Holdout(0.3, by="sequence", part="rest")),
    dict(shuffle=True, seed=5, shuffle_buffer=16, step=9),  # entered in its 5th window, mid-shard
    dict(shuffle=True, seed=5, shuffle_buffer=16, drop_remainder=True, repeat=True, steps_per_epoch=11, epoch=1,
         step=7),
])
def test_ranged_windows_give_the_records_paths_batches(synthetic, monkeypatch, read):
    folder, written = synthetic
    ranged = _epochs(folder, **read)
    with monkeypatch.context() as patched:
        _records_path(patched)
        streamed = _epochs(folder, **read)
    assert _same(ranged, streamed) and sum(len(f) for f, _, _ in ranged[0]) > 0
    if "holdout" not in read and "step" not in read:  # every example once, as written
        features = np.concatenate([f for f, _, _ in ranged[0]])
        assert sorted(map(bytes, features)) == sorted(map(bytes, written))
        labels = np.concatenate([y for _, _, y in ranged[0]])
        order = [int(np.flatnonzero((written == f).all(axis=(1, 2)))[0]) for f in features[:20]]
        assert [i % 10 for i in order] == labels[:20].tolist()  # make_build's label: i % 10
        if read.get("shuffle"):
            assert not _same([ranged[0]], [ranged[1]])


@pytest.mark.parametrize("pipelines", [2, 7])  # a share of the shards each; more workers than shards: of records
def test_ranged_windows_give_each_input_pipeline_its_part(synthetic, monkeypatch, pipelines):
    folder, _ = synthetic
    context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=1)
    ranged = _epochs(folder, input_context=context, shuffle=True, seed=1, shuffle_buffer=16)
    with monkeypatch.context() as patched:
        _records_path(patched)
        assert _same(ranged, _epochs(folder, input_context=context, shuffle=True, seed=1, shuffle_buffer=16))


def test_a_stream_reads_ranges_not_records(synthetic):
    """No TFRecordDataset and no parse in the ranged pipeline: its windows are read by a numpy_function."""
    dataset = DatasetBuilder(str(synthetic[0])).as_dataset(
        "train", batch_size=7, read_config=ReadConfig(source="stream", shuffle=True, seed=1), example_config=HALF)
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())  # noqa: SLF001
    ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
    assert "PyFunc" in ops or "EagerPyFunc" in ops
    assert not ops & {"TFRecordDataset", "ParseExampleV2", "ParallelInterleaveDatasetV4"}


@pytest.fixture
def copy(synthetic, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(synthetic[0], folder)
    return folder


def _record(folder, shard, number):
    """(path, offset of record `number`'s data, its length) from the index the build wrote."""
    from dancedata import manifest, shard_index

    document = manifest.load(str(folder))
    entry = document["splits"]["train"]["shards"][shard]
    _, table = shard_index.load(str(folder), entry)
    return folder / entry["file"], int(table[number, 0]) + 12, int(table[number, 1])


def _damage_named(folder) -> ShardError:
    """The ShardError a streamed read of damaged `folder` stops with: raised as the dataset is made, or
    named by shard_error from the error a read raises."""
    with pytest.raises((tf.errors.InvalidArgumentError, ShardError)) as raised:
        _epochs(folder, epochs=1, shuffle=True, seed=2, shuffle_buffer=16)
    found = raised.value if isinstance(raised.value, ShardError) else shard_error(raised.value)
    assert isinstance(found, ShardError)
    return found


@pytest.mark.parametrize("records_path", [False, True])
def test_a_flipped_byte_is_named_with_its_file(copy, monkeypatch, records_path):
    path, data, length = _record(copy, 2, 17)
    raw = bytearray(path.read_bytes())
    raw[data + length // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    if records_path:
        _records_path(monkeypatch)
    found = str(_damage_named(copy))
    assert str(path) in found
    if not records_path:  # the record too: each one is checked against the index
        assert "record 17 of 60 fails its checksum" in found


def _cut(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - 100])


def _grown(path):
    with open(path, "ab") as handle:
        handle.write(b"\0" * 64)


@pytest.mark.parametrize("change, said", [(_cut, "truncated"), (_grown, "it was built with")])
@pytest.mark.parametrize("when", ["before", "while read"])
def test_a_shard_of_another_size_is_named(copy, change, said, when):
    """Found when the dataset is made (ShardError, as the mapped reader raises it), or when a read reaches
    the shard's changed end (the error shard_error names)."""
    path, _, _ = _record(copy, 4 if change is _cut else 1, 0)
    if when == "before":
        change(path)
        with pytest.raises(ShardError, match=f"shard {path} .*{said}"):
            _epochs(copy, epochs=1, shuffle=True, seed=2, shuffle_buffer=16)
        return
    dataset = DatasetBuilder(str(copy)).as_dataset(
        "train", batch_size=7, read_config=ReadConfig(source="stream", shuffle=True, seed=2, shuffle_buffer=16),
        example_config=HALF)
    change(path)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(dataset)
    found = shard_error(raised.value)
    assert isinstance(found, ShardError) and str(path) in str(found) and said in str(found)


def test_a_shard_gone_while_read_is_named_missing(copy):
    path, _, _ = _record(copy, 3, 0)
    dataset = DatasetBuilder(str(copy)).as_dataset(
        "train", batch_size=7, read_config=ReadConfig(source="stream", shuffle=True, seed=2, shuffle_buffer=16),
        example_config=HALF)
    os.remove(path)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(dataset)
    found = shard_error(raised.value)
    assert isinstance(found, ShardError) and str(path) in str(found) and "missing" in str(found)


def test_a_damaged_index_leaves_its_records_streamed(copy, synthetic, monkeypatch):
    """A damaged index costs no example: the records path reads the shards (their CRCs checked), and says so."""
    expected = _epochs(synthetic[0], epochs=1, shuffle=True, seed=4)
    index = next(copy.glob("*.index"))
    raw = bytearray(index.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    index.write_bytes(bytes(raw))
    builder = DatasetBuilder(str(copy))
    shards = builder.manifest["splits"]["train"]["shards"]
    loaded, why = ranged_windows.indexes(builder.path, builder.manifest, shards)
    assert loaded is None and str(index) in why
    with pytest.warns(UserWarning, match=r"does not match the manifest .*: the split's records are streamed instead"):
        assert _same(_epochs(copy, epochs=1, shuffle=True, seed=4), expected)


def test_a_windows_features_reach_tensorflow_without_a_copy(synthetic):
    """A numpy_function's result is taken as it is only when it starts at a multiple of 64 bytes (numpy's large
    arrays start 16 bytes into a page): TensorFlow copied every window once more before."""
    builder = DatasetBuilder(str(synthetic[0]))
    paths, sampler = builder.ordered_files("train", ReadConfig(shuffle=True, seed=1))
    ranged = builder._ranged("train", paths, sampler, ("features", "mask", "label"))  # noqa: SLF001
    features = ranged.read(0, 1)[0]
    assert features.ctypes.data % 64 == 0

    made = {}

    def read():
        made["window"] = ranged.read(0, 1)[0]
        return made["window"]

    tensor = next(iter(tf.data.Dataset.range(1).map(lambda _: tf.numpy_function(read, [], tf.float16))))  # as windows()
    seen = host_array(tensor)
    assert seen.ctypes.data == made["window"].ctypes.data and np.array_equal(seen, features)


def test_read_buffers_are_reused_and_at_most_kept_stay():
    pool = ranged_windows._Buffers(2)  # noqa: SLF001
    first = pool.take(100)
    pool.give(first)
    assert pool.take(80) is first  # the smallest that fits
    assert pool.take(80) is not first and len(pool.take(120)) == 120
    for size in (10, 20, 30):
        pool.give(np.empty(size, np.uint8))
    assert sorted(len(buffer) for buffer in pool._free) == [20, 30]  # noqa: SLF001


def test_a_shard_swapped_for_another_of_the_build_is_named(copy):
    """Same size, same count, valid records: only the index's CRCs (the build's) tell them apart."""
    first, _, _ = _record(copy, 0, 0)
    second, _, _ = _record(copy, 1, 0)
    second.write_bytes(first.read_bytes())  # 2 bytes shorter here (its padding): named as the dataset is made
    found = str(_damage_named(copy))
    assert str(second) in found and ("fails its checksum" in found or "it was built with" in found)


def test_an_empty_shard_replaced_is_named(tmp_path):
    folder = tmp_path / "build"
    readers.make_build(str(folder), 4, 6, frames=4, dim=64)  # shards of 0 and 1 records
    builder = DatasetBuilder(str(folder))
    shards = builder.manifest["splits"]["train"]["shards"]
    empty = next(folder / s["file"] for s in shards if s["num_examples"] == 0)
    full = next(folder / s["file"] for s in shards if s["num_examples"] == 1)
    assert len(_epochs(folder, epochs=1, shuffle=True, seed=1)[0]) == 1  # 4 examples, batches of 7
    empty.write_bytes(full.read_bytes())
    with pytest.raises(ShardError, match=f"shard {empty} holds .* not the 0 it was built with"):
        _epochs(folder, epochs=1, shuffle=True, seed=1)


def test_more_input_pipelines_than_shards_read_only_their_records(synthetic, monkeypatch):
    """Each of 7 pipelines over 5 shards takes every 7th record: read one by one, not as one range 7 times
    the bytes it uses."""
    sizes = []
    read_into = ranged_windows._read_into  # noqa: SLF001

    def counted(buffer, path, begin, count):
        sizes.append(count)
        return read_into(buffer, path, begin, count)

    monkeypatch.setattr(ranged_windows, "_read_into", counted)
    context = tf.distribute.InputContext(num_input_pipelines=7, input_pipeline_id=3)
    batches = _epochs(synthetic[0], epochs=1, input_context=context, shuffle=True, seed=1, shuffle_buffer=16)
    record = 4 * 64 * 2  # the features alone; a record adds its other fields and at most a row's padding
    assert sum(len(f) for f, _, _ in batches[0]) == len(sizes) > 0 and max(sizes) < 4 * record
