"""One order for every reader: the Sampler (pure NumPy) and its graph-op twin, every tf.data reader,
the device table, and ExampleSource under grain's DataLoader give the same examples in the same order."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from dancedata import DatasetBuilder, ExampleConfig, ExampleSource, Holdout, ReadConfig, Sampler, pipelines
from dancedata import sampler as sampler_lib
from dancedata.errors import ConfigError
from dancedata.read_config import DanceDataDeprecationWarning

COUNTS = (5, 0, 7, 3, 9)


def test_an_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    sampler = Sampler(COUNTS, seed=4, shuffle=True, window=4)
    orders = [sampler.order(epoch) for epoch in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(sum(COUNTS)))
    assert len({tuple(order) for order in orders}) == 3
    assert np.array_equal(Sampler(COUNTS, seed=4, shuffle=True, window=4).order(2), orders[2])  # a new process would agree
    assert not np.array_equal(Sampler(COUNTS, seed=5, shuffle=True, window=4).order(0), orders[0])
    assert Sampler(COUNTS).order(7).tolist() == list(range(sum(COUNTS)))


def test_windows_permute_only_within_themselves_and_shards_are_read_whole():
    sampler = Sampler(COUNTS, seed=1, shuffle=True, window=4)
    stream, order = sampler.stream(3), sampler.order(3)
    starts = np.cumsum((0,) + COUNTS[:-1])
    shards = [s for s in sampler.shards(3) if COUNTS[s]]
    assert stream.tolist() == [i for s in shards for i in range(starts[s], starts[s] + COUNTS[s])]
    for start in range(0, len(order), 4):
        assert sorted(order[start:start + 4]) == sorted(stream[start:start + 4])


@pytest.mark.parametrize("counts, window", [(COUNTS, 4), (COUNTS, 1), (COUNTS, 100), ((256, 256, 3), 256), ((0, 0), 8)])
def test_each_window_is_in_its_own_draw(counts, window):
    # The order draws every window at once; window after window, draw(seed, epoch, run, length) says it.
    for seed, epoch in [(0, 0), (4, 3), (2**63 - 1, 2**40)]:
        sampler = Sampler(counts, seed=seed, shuffle=True, window=window)
        stream, expected = sampler.stream(epoch), []
        for run, start in enumerate(range(0, len(stream), window)):
            part = stream[start:start + window]
            expected += part[sampler_lib.draw(seed, epoch, run, len(part))].tolist()
        assert sampler.order(epoch).tolist() == expected


def test_a_run_has_distinct_hashes_so_any_sort_draws_the_same_order():
    # draw and window_draws sort without asking for a stable sort: right only while no two hashes of a run tie.
    for seed, epoch, run, count in ((0, 0, 0, 4096), (3, 9, 2, 257), (2**63 - 1, 2**40, sampler_lib.SHARD_RUN, 5000)):
        keys = sampler_lib.hashes(seed, epoch, run, count)
        assert len(np.unique(keys)) == count
        assert np.array_equal(sampler_lib.draw(seed, epoch, run, count), np.argsort(keys, kind="stable"))
        assert np.array_equal(sampler_lib.window_draws(seed, epoch, count, count), np.argsort(
            sampler_lib.hashes(seed, epoch, 0, count), kind="stable"))


def test_workers_read_disjoint_parts_that_cover_the_split():
    for counts in (COUNTS, (4, 4)):  # more shards than workers, and fewer
        parts = [Sampler(counts, seed=2, shuffle=True, worker=w, workers=3).order(1) for w in range(3)]
        joined = np.concatenate(parts)
        assert sorted(joined.tolist()) == list(range(sum(counts)))


def test_the_graph_ops_draw_the_numpy_permutations():
    for seed, epoch, run, count in ((0, 0, 0, 1), (3, 9, 2, 257), (2**63 - 1, 2**40, sampler_lib.SHARD_RUN, 40)):
        graph = pipelines.draw(seed, tf.constant(epoch, tf.int64), tf.constant(run, tf.int64), count).numpy()
        assert np.array_equal(graph, sampler_lib.draw(seed, epoch, run, count))
    sampler = Sampler(COUNTS, seed=8, shuffle=True)
    seeds = np.stack(list(pipelines.batch_seeds(sampler, tf.constant(5, tf.int64)).take(6).as_numpy_iterator()))
    assert np.array_equal(seeds, sampler.batch_seeds(5, 6))


def _examples(dataset) -> list:
    """Each example's feature bytes, in order."""
    return [row.tobytes() for (features, _), _ in dataset for row in features.numpy()]


def test_every_reader_gives_the_same_batches(built):
    builder = DatasetBuilder(str(built["out"]))
    assert len(builder.files("train")) > 2
    read = ReadConfig(shuffle=True, seed=3, shuffle_buffer=4, repeat=True, epoch=2)
    example = ExampleConfig(cast=False)

    def two_epochs(**changes):
        steps = -(-builder.info.splits["train"] // 3)
        dataset = builder.as_dataset("train", batch_size=3, read_config=ReadConfig(**{**read.__dict__, **changes}),
                                     example_config=example)
        return _examples(dataset.take(2 * steps))

    mapped = two_epochs()
    assert mapped == two_epochs(source="stream") == two_epochs(cache=True) == two_epochs(source="stream", cache=True)
    from dancedata.device_table import index_dataset, load_table

    table = load_table(builder, ["train"])
    indices = index_dataset(builder, "train", table, batch_size=3, read_config=read, example_config=example)
    steps = -(-builder.info.splits["train"] // 3)
    assert [table.features[i].tobytes() for (index, _), _ in indices.take(2 * steps) for i in index.numpy()] == mapped
    source = ExampleSource(str(built["out"]), "train")
    through_source = [source.batch(keys)["features"] for epoch in (2, 3)
                      for keys in source.batches(3, seed=3, epoch=epoch, window=4)]
    assert [row.tobytes() for batch in through_source for row in batch] == mapped


def test_grain_loads_the_same_examples_in_the_same_order(built):
    grain = pytest.importorskip("grain.python")
    builder = DatasetBuilder(str(built["out"]))
    source = ExampleSource(str(built["out"]), "train")
    loader = grain.DataLoader(data_source=source, sampler=source.grain_sampler(seed=0, num_epochs=2),
                              shard_options=grain.NoSharding(), worker_count=0)
    through_grain = [record["features"].tobytes() for record in loader]
    read = ReadConfig(shuffle=True, seed=0, repeat=True)
    steps = -(-len(source) // 4)
    expected = _examples(builder.as_dataset("train", batch_size=4, read_config=read,
                                            example_config=ExampleConfig(cast=False)).take(2 * steps))
    assert through_grain == expected and len(expected) == 2 * len(source)


def test_the_source_needs_no_tensorflow(built):
    script = (f"import sys; from dancedata import ExampleSource; s = ExampleSource({str(built['out'])!r}, 'train'); "
              "b = s.batch(list(range(len(s)))); print(len(s), b['features'].shape, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    count, _, loaded = done.stdout.split(" ", 1)[0], None, done.stdout.split()[-1]
    assert done.returncode == 0 and loaded == "False" and int(count) == DatasetBuilder(str(built["out"])).info.splits["train"], done.stderr


def test_a_holdout_is_the_same_part_on_every_reader(built):
    builder = DatasetBuilder(str(built["out"]))
    parts = {}
    for part in ("rest", "held"):
        read = ReadConfig(shuffle=True, seed=1, holdout=Holdout(0.3, part=part))
        example = ExampleConfig(cast=False)
        mapped = _examples(builder.as_dataset("train", batch_size=2, read_config=read, example_config=example))
        streamed = _examples(builder.as_dataset("train", batch_size=2, example_config=example,
                                                read_config=ReadConfig(**{**read.__dict__, "source": "stream"})))
        assert mapped == streamed and mapped
        parts[part] = mapped
    assert not set(parts["rest"]) & set(parts["held"])
    assert len(parts["rest"]) + len(parts["held"]) == builder.info.splits["train"]


def test_old_keywords_still_work_and_name_their_new_spelling(built):
    builder = DatasetBuilder(str(built["out"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = builder.as_dataset("train", batch_size=3, shuffle=True, seed=5, seq_len=4, cast=False)
    (warning,) = [w for w in caught if issubclass(w.category, DanceDataDeprecationWarning)]
    assert "read_config=ReadConfig(shuffle=True, seed=5)" in str(warning.message)
    assert "example_config=ExampleConfig(seq_len=4, cast=False)" in str(warning.message)
    new = builder.as_dataset("train", batch_size=3, read_config=ReadConfig(shuffle=True, seed=5),
                             example_config=ExampleConfig(seq_len=4, cast=False))
    assert _examples(old) == _examples(new)


@pytest.mark.parametrize("make, message", [
    (lambda: ReadConfig(cache=True, data_service="grpc://localhost:5000"), "exclude each other"),
    (lambda: ReadConfig(source="mapped", data_service="grpc://localhost:5000"), "use source='auto'"),
    (lambda: ReadConfig(shuffle_buffer=0), "shuffle_buffer must be positive"),
    (lambda: ReadConfig(epoch=-1), "epoch must be 0 or more"),
    (lambda: ReadConfig(source="gcs"), "source must be one of"),
    (lambda: Holdout(1.0), "holdout fraction"),
    (lambda: Holdout(0.1, by="genre"), "holdout by must be one of"),
    (lambda: ExampleConfig(seq_len=0), "seq_len must be positive"),
])
def test_invalid_configs_are_refused_when_made(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_config_is_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        ReadConfig().shuffle = True
