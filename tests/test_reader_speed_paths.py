"""The readers' fast paths give what the plain paths give: the mapped reader's pooled batches stay intact
while they are held, grain's batched path is ExampleSource's order, and a dataset without repeat has its
true cardinality and counts an epoch only when one was read to its end (issue 30)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

from dancedata import DatasetBuilder, ExampleConfig, ExampleSource, Holdout, ReadConfig

HALF = ExampleConfig(cast=False)


def _epoch(source: ExampleSource, batch_size: int, epoch: int, **order) -> list:
    """The oracle: each example's feature bytes of one epoch, from the NumPy source (no TensorFlow)."""
    return [row.tobytes() for keys in source.batches(batch_size, epoch=epoch, **order)
            for row in source.batch(keys)["features"]]


def _rows(batches) -> list:
    return [row.tobytes() for (features, _), _ in batches for row in features.numpy()]


def test_mapped_batches_held_by_the_caller_are_never_overwritten(built):
    builder, source = DatasetBuilder(str(built["out"])), ExampleSource(str(built["out"]), "train")
    dataset = builder.as_dataset("train", batch_size=3, read_config=ReadConfig(shuffle=True, seed=5, shuffle_buffer=4),
                                 example_config=HALF)
    held = [(features, mask, label) for (features, mask), label in dataset]  # every batch's tensors kept alive
    expected = [source.batch(keys) for keys in source.batches(3, seed=5, epoch=0, window=4)]
    assert len(held) == len(expected)
    for (features, mask, label), want in zip(held, expected):
        assert features.numpy().tobytes() == want["features"].tobytes()
        assert np.array_equal(mask.numpy(), want["mask"]) and np.array_equal(label.numpy(), want["label"])
        assert features.dtype == tf.float16 and mask.dtype == tf.bool and label.dtype == tf.int32


def test_grain_batches_are_the_sources_batches_epoch_after_epoch(built):
    grain = pytest.importorskip("grain.python")
    source = ExampleSource(str(built["out"]), "train")
    batches = source.grain_batches(4, seed=2, num_epochs=2, first_epoch=1, window=4)
    expected = [source.batch(keys) for epoch in (1, 2) for keys in source.batches(4, seed=2, epoch=epoch, window=4)]
    assert len(batches) == len(expected)
    iterated = list(batches.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    for got in (iterated, [batches[k] for k in reversed(range(len(batches)))][::-1]):  # random access too
        assert [b["features"].tobytes() for b in got] == [b["features"].tobytes() for b in expected]
        assert all(np.array_equal(g["label"], e["label"]) and np.array_equal(g["mask"], e["mask"])
                   for g, e in zip(got, expected))
    dropped = source.grain_batches(4, seed=2, drop_remainder=True)
    assert len(dropped) == len(source) // 4 and all(len(b["label"]) == 4 for b in dropped)


@pytest.mark.parametrize("read", [dict(), dict(source="stream"), dict(cache=True),
                                  dict(holdout=Holdout(0.3, part="rest")),
                                  dict(source="stream", holdout=Holdout(0.3, part="held"))])
def test_without_repeat_the_cardinality_is_the_epochs_batches(built, read):
    builder = DatasetBuilder(str(built["out"]))
    dataset = builder.as_dataset("train", batch_size=3, read_config=ReadConfig(shuffle=True, seed=1, **read))
    counted = sum(1 for _ in dataset)
    assert counted > 1 and dataset.cardinality().numpy() == counted
    assert sum(1 for _ in dataset) == counted  # the next epoch: the same count (asserted by tf.data too)


def test_a_peek_does_not_move_the_epochs_and_a_whole_pass_does(built):
    builder, source = DatasetBuilder(str(built["out"])), ExampleSource(str(built["out"]), "train")
    order = dict(seed=4, window=4)
    for read in (dict(), dict(source="stream"), dict(cache=True)):
        dataset = builder.as_dataset("train", batch_size=3, example_config=HALF,
                                     read_config=ReadConfig(shuffle=True, seed=4, shuffle_buffer=4, epoch=2, **read))
        next(iter(dataset))
        iterator = iter(dataset)
        next(iterator), next(iterator)  # left before its end
        assert _rows(dataset) == _epoch(source, 3, 2, **order), read
        assert _rows(dataset) == _epoch(source, 3, 3, **order), read  # each whole pass is the next epoch


def test_fit_sees_consecutive_epochs_and_no_ran_out_of_data_warning(built):
    import keras

    builder, source = DatasetBuilder(str(built["out"])), ExampleSource(str(built["out"]), "train")
    dataset = builder.as_dataset("train", batch_size=4, read_config=ReadConfig(shuffle=True, seed=6, shuffle_buffer=4))
    next(iter(dataset))  # a peek first, as docs/index.md shows
    frames, dim = builder.info.num_frames, builder.info.feature_dim
    features, mask = keras.Input((frames, dim)), keras.Input((frames,), dtype="bool")
    pooled = keras.layers.GlobalAveragePooling1D()(features, mask=mask)
    model = keras.Model([features, mask], keras.layers.Dense(len(builder.info.classes))(pooled))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(dataset, epochs=3, verbose=0)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    # fit trained epochs 0, 1, 2: the next pass is epoch 3
    expected = [source.batch(keys)["label"].tolist() for keys in source.batches(4, seed=6, epoch=3, window=4)]
    assert [label.numpy().tolist() for _, label in dataset] == expected


@pytest.mark.parametrize("records", [False, True])
def test_a_shard_cut_short_still_stops_the_streamed_reader_naming_it(built, tmp_path, records, monkeypatch):
    """By byte range: a ShardError as the dataset is made (the file's size against its index); the records
    path: when its count check reaches the cut."""
    import shutil

    from dancedata.errors import ShardError
    from dancedata.record_files import shard_error

    if records:
        monkeypatch.setattr(DatasetBuilder, "_ranged", lambda *args: None)
    folder = tmp_path / "copy"
    shutil.copytree(built["out"], folder)
    builder = DatasetBuilder(str(folder))
    victim = builder.files("train")[1]
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) - 100])
    with pytest.raises(tf.errors.InvalidArgumentError if records else ShardError) as raised:
        for _ in builder.as_dataset("train", batch_size=3, read_config=ReadConfig(source="stream")):
            pass
    assert victim in str(raised.value if not records else shard_error(raised.value))


def test_a_missing_shard_stops_the_streamed_reader_instead_of_hanging(built, tmp_path):
    import shutil

    from dancedata.errors import ShardError

    folder = tmp_path / "copy"
    shutil.copytree(built["out"], folder)
    victim = sorted(folder.glob("train-00000-of-*.tfrecord"))[0]
    victim.unlink()
    read = ReadConfig(source="stream", repeat=True, steps_per_epoch=11, shuffle=True, seed=3, shuffle_buffer=4)
    with pytest.raises(ShardError, match=f"shard {victim} is missing"):
        for _ in DatasetBuilder(str(folder)).as_dataset("train", batch_size=3, read_config=read).take(30):
            pass


def _stage_functions(dataset) -> list:
    """The FunctionDefs that map and flat_map stages name, in the graph and inside those functions (a stage
    an epoch's flat_map makes): what TensorFlow instantiates as iterators start."""
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())  # noqa: SLF001
    library = {function.signature.name: function for function in graph.library.function}
    nodes = list(graph.node) + [node for function in library.values() for node in function.node_def]
    return [library[node.attr["f"].func.name] for node in nodes if node.op in STAGES]


STAGES = ("MapDataset", "ParallelMapDatasetV2", "FlatMapDataset", "ParallelInterleaveDatasetV4")


def test_light_stages_give_what_the_public_stages_give_with_functions_tensorflow_does_not_optimize():
    from dancedata import light_stages
    from dancedata.light_stages import light_flat_map, light_interleave, light_map

    numbers = tf.data.Dataset.range(23)
    pairs = [
        (light_map(numbers, lambda x: (x * 3, tf.strings.as_string(x))), numbers.map(lambda x: (x * 3, tf.strings.as_string(x)))),
        (light_map(numbers.batch(4), lambda x: {"sum": tf.reduce_sum(x)}, parallel=True),
         numbers.batch(4).map(lambda x: {"sum": tf.reduce_sum(x)})),
        (light_flat_map(numbers.take(5), lambda x: tf.data.Dataset.range(x)), numbers.take(5).flat_map(tf.data.Dataset.range)),
        (light_interleave(numbers.take(7), lambda x: tf.data.Dataset.range(x).batch(2), 3, 2),
         numbers.take(7).interleave(lambda x: tf.data.Dataset.range(x).batch(2), cycle_length=3, block_length=2,
                                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)),
    ]
    for light, public in pairs:
        assert light.element_spec == public.element_spec
        assert [tf.nest.map_structure(lambda value: np.asarray(value).tolist(), element) for element in light.as_numpy_iterator()] == \
            [tf.nest.map_structure(lambda value: np.asarray(value).tolist(), element) for element in public.as_numpy_iterator()]
        functions = _stage_functions(light)
        assert functions and all(f.attr["experimental_ints_on_device"].b for f in functions)
        assert not any(f.attr["experimental_ints_on_device"].b for f in _stage_functions(public))
    assert light_map(numbers, lambda x: x).cardinality() == 23  # the cardinality is kept
    if light_stages._light_stage() is not None:  # an int32 out of such a function breaks tf.data's optimizations
        with pytest.raises(TypeError, match="no int32"):
            light_map(numbers, lambda x: (tf.cast(x, tf.int32), x))
    with pytest.raises(tf.errors.InvalidArgumentError, match="odd"):  # and errors raised in the function reach the caller
        list(light_map(numbers, lambda x: tf.debugging.Assert(x < 7, ["odd"]) and x, parallel=True))
    with pytest.raises(TypeError, match="must return a Dataset"):
        light_flat_map(numbers, lambda x: x)
    with pytest.raises(TypeError, match="must return a Dataset"):
        light_interleave(numbers, lambda x: x, 2, 1)


@pytest.mark.parametrize("read", [{}, {"cache": True}, {"holdout": Holdout(0.3, part="rest")}, {"drop_remainder": True}])
def test_a_fresh_epochs_iterator_has_grappler_optimize_none_of_its_functions(built, read):
    """Each function TensorFlow optimizes costs every new iterator ~3-5 ms: a fresh epoch's start (issue 30).
    The int32 labels come from a stage with no function (pipelines.labelled)."""
    dataset = DatasetBuilder(str(built["out"])).as_dataset("train", batch_size=3, example_config=HALF,
                                                           read_config=ReadConfig(shuffle=True, seed=1, **read))
    functions = _stage_functions(dataset)
    assert len(functions) >= 3 and all(f.attr["experimental_ints_on_device"].b for f in functions)
    assert dataset.element_spec[1].dtype == tf.int32


@pytest.mark.parametrize("records", [False, True])
@pytest.mark.parametrize("read", [{"shuffle": True, "seed": 1}, {"shuffle": False}])
def test_a_streamed_epoch_has_grappler_optimize_none_of_the_functions_it_runs(built, read, records, monkeypatch):
    """A fresh streamed epoch instantiates its stages' functions afresh (records: each shard's once more):
    its windows' reads (records: read, count check, parse and permutation) are light, so grappler optimizes
    none of them (a fresh epoch's first batch ~200 ms later with them optimized, measured). Only the
    pipeline's last stages, which return the int32 labels, are optimized, once, as the iterator starts, and
    the identity TensorFlow's rebatch maps over its input (normalize_to_dense), once an epoch."""
    if records:  # the records path: builds without indexes, a damaged index, a tf.data service
        monkeypatch.setattr(DatasetBuilder, "_ranged", lambda *args: None)
    dataset = DatasetBuilder(str(built["out"])).as_dataset(
        "train", batch_size=3, example_config=HALF, read_config=ReadConfig(source="stream", **read))
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())  # noqa: SLF001
    library = {function.signature.name: function for function in graph.library.function}
    inner = [library[node.attr["f"].func.name] for function in library.values() for node in function.node_def
             if node.op in STAGES and "_normalize_" not in node.attr["f"].func.name]
    ops = {node.op for function in library.values() for node in function.node_def}
    if records:
        assert "ParallelInterleaveDatasetV4" in ops and "ScanDataset" not in ops
        assert len(inner) >= 3 + read["shuffle"] and all(f.attr["experimental_ints_on_device"].b for f in inner)
    else:  # one parallel map of a numpy_function reads each window
        assert "ParallelMapDatasetV2" in ops and "ParallelInterleaveDatasetV4" not in ops
        assert inner and all(f.attr["experimental_ints_on_device"].b for f in inner)


@pytest.mark.parametrize("records, expected, skip", [
    (records, expected, skip) for records in (0, 5, 63, 64, 65, 128, 130) for expected in (0, 5, 64, 65, 128, 129)
    for skip in (0, 5, 64) if skip != expected or skip == 0])
def test_a_shards_record_count_is_checked_whatever_its_length(tmp_path, records, expected, skip):
    """checked_chunks passes a file of exactly the records the manifest says, from any skip, and stops on any
    other count (chunks of 64 records: lengths around their edges), or a start past its count. A start at
    the shard's end reads, and checks, nothing: not among the cases."""
    from dancedata.record_files import BAD_SHARD, checked_chunks, shard_error

    path = str(tmp_path / "shard.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(records):
            writer.write(f"record {index}".encode())
    chunks = checked_chunks(path, expected, skip)
    if records == expected and skip <= expected:
        got = [record.decode() for chunk in chunks.as_numpy_iterator() for record in chunk]
        assert got == [f"record {index}" for index in range(skip, records)]
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match=BAD_SHARD) as raised:
            list(chunks)
        said = str(shard_error(raised.value))
        assert path in said
        if skip <= expected:  # a start past the count is no reader's: only that it fails
            assert ("more records than its manifest says" in said) == (records > expected)


@pytest.mark.parametrize("option", ["inject_prefetch", "slack", "map_and_batch_fusion", "deterministic"])
@pytest.mark.parametrize("read", [{}, {"cache": True}, {"source": "stream"}])
def test_the_readers_work_with_tf_data_options_a_user_turns_on(built, read, option):
    """light_map's functions return no int32: one would make these options fail ("Expected only one fetch
    node", TF 2.21: its int32 leave through a _DeviceRetval)."""
    options = tf.data.Options()
    if option == "slack":
        options.experimental_slack = True
    elif option == "deterministic":
        options.deterministic = False
    else:
        setattr(options.experimental_optimization, option, True)
    builder = DatasetBuilder(str(built["out"]))
    plain = builder.as_dataset("train", batch_size=3, example_config=HALF, read_config=ReadConfig(**read))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # slack's "no final prefetch" notice on a pipeline that ends in our count
        batches = list(plain.with_options(options))
    assert [label.dtype for _, label in batches] == [tf.int32] * len(batches)
    assert _rows(batches) == _rows(plain)


@pytest.mark.parametrize("length", [0, 1, 6, 7, 12])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_sliced_batches_are_what_batch_gives(length, drop_remainder):
    from dancedata.pipelines import sliced

    values = ((tf.range(length, dtype=tf.int64), tf.reshape(tf.range(length * 3), [length, 3])),
              tf.cast(tf.range(length), tf.int32) * 5)
    expected = tf.data.Dataset.from_tensor_slices(values).batch(3, drop_remainder)
    got = sliced(values, 3, drop_remainder)
    assert got.element_spec[0][1].shape.as_list()[1:] == [3] and got.element_spec[1].dtype == tf.int32
    as_lists = lambda dataset: [tf.nest.map_structure(lambda t: t.tolist(), e) for e in dataset.as_numpy_iterator()]
    assert as_lists(got) == as_lists(expected)


@pytest.mark.parametrize("read", [{}, {"cache": True}, {"repeat": True}, {"source": "stream"}])
def test_without_the_private_stages_the_readers_give_the_same_batches(built, read, monkeypatch):
    """Where TensorFlow lacks what light_map builds on, the public stages: the same batches and dtypes."""
    from dancedata import light_stages

    def batches():
        dataset = DatasetBuilder(str(built["out"])).as_dataset(
            "train", batch_size=3, example_config=HALF, read_config=ReadConfig(shuffle=True, seed=4, **read))
        dataset = dataset.take(9) if read.get("repeat") else dataset
        light_functions = sum(f.attr["experimental_ints_on_device"].b for f in _stage_functions(dataset))
        return dataset.element_spec, [(f.numpy().tobytes(), m.numpy().tolist(), l.numpy().tolist())
                                      for (f, m), l in dataset], light_functions > 0

    light = batches()
    monkeypatch.setattr(light_stages, "_light_stage", lambda: None)
    public = batches()
    assert light[2] and not public[2]  # the fallback was taken
    assert public[:2] == light[:2] and light[0][1].dtype == tf.int32


@pytest.mark.parametrize("read", [{}, {"cache": True}])
def test_every_batch_has_its_own_labels_with_a_warm_start_and_iterators_side_by_side(built, read):
    """The features and the labels of an epoch come from one reading of the epoch's number: with a warm
    start (the features' prefetch starts at iter()) and a second iterator started while the first is
    read, a batch once had one epoch's features and the next epoch's labels. Oracle: each example's
    label, looked up by its features' bytes in the NumPy source."""
    source = ExampleSource(str(built["out"]), "train")
    label_of = {}
    for keys in source.batches(64):
        batch = source.batch(keys)
        label_of.update({row.tobytes(): int(label) for row, label in zip(batch["features"], batch["label"])})
    options = tf.data.Options()
    options.experimental_warm_start = True
    dataset = DatasetBuilder(str(built["out"])).as_dataset(
        "train", batch_size=3, example_config=HALF, read_config=ReadConfig(shuffle=True, seed=2, **read))
    dataset = dataset.with_options(options)
    first = iter(dataset)
    next(first)
    second = iter(dataset)  # made before the first iterator has read its epoch to the end
    pairs = [pair for iterator in (first, second, iter(dataset)) for (features, _), labels in iterator
             for pair in zip(features.numpy(), labels.numpy())]
    assert len(pairs) > len(label_of) and len(label_of) > 3
    assert all(label_of[row.tobytes()] == label for row, label in pairs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("read", [{}, {"cache": True}])
def test_a_users_ignore_errors_ends_an_epoch_with_a_failed_batch(built, read, monkeypatch):
    """A failed batch cuts the epoch short of its cardinality; ignore_errors() then got that error on
    every call, without end (the cardinality's check was the pipeline's last stage)."""
    to_inputs = DatasetBuilder._to_inputs

    def failing(self, *args, **kwargs):
        inner = to_inputs(self, *args, **kwargs)

        def checked(parsed, seed=None):  # a batch of two examples of one genre fails
            label = parsed["label"]
            mixed = tf.debugging.Assert((tf.size(label) < 2) | tf.reduce_any(label != label[0]), ["a failed batch"])
            with tf.control_dependencies([mixed]):
                return tf.nest.map_structure(tf.identity, inner(parsed, seed))

        return checked

    monkeypatch.setattr(DatasetBuilder, "_to_inputs", failing)
    dataset = DatasetBuilder(str(built["out"])).as_dataset("train", batch_size=2, example_config=HALF,
                                                           read_config=ReadConfig(**read))
    got = [labels.numpy().tolist() for _, labels in dataset.ignore_errors()]
    assert 0 < len(got) < dataset.cardinality().numpy()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("source", ["mapped", "stream"])
def test_an_input_pipeline_with_nothing_to_read_is_refused_instead_of_cycling_without_end(tmp_path, source):
    """More input pipelines than examples: the last one's share is empty, and repeat would cycle it forever
    (with steps_per_epoch the streamed reader hung and the mapped one refused it; without, both hung). One
    epoch without repeat is empty and ends."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks"))
    import readers
    from dancedata.errors import ConfigError

    readers.make_build(str(tmp_path), 3, 2, frames=4, dim=8)
    read = ReadConfig(source=source, repeat=True, steps_per_epoch=2)
    builder = DatasetBuilder(str(tmp_path))
    assert len(list(builder.as_dataset("train", batch_size=1, read_config=read,
                                       input_context=tf.distribute.InputContext(4, 0, 1)).take(4))) == 4
    for refused in (read, ReadConfig(source=source, repeat=True)):
        with pytest.raises(ConfigError, match="input pipeline 3 of 4 has no example of train"):
            builder.as_dataset("train", batch_size=1, read_config=refused, input_context=tf.distribute.InputContext(4, 3, 1))
    assert not list(builder.as_dataset("train", batch_size=1, read_config=ReadConfig(source=source),
                                       input_context=tf.distribute.InputContext(4, 3, 1)))
