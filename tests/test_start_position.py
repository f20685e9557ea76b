"""Every reader starts at any (epoch, step): the batches from there are, byte for byte, those an
uninterrupted read from (epoch, 0) gives once its first `step` are dropped: same examples, same random
windows, same batch boundaries, with epochs cycled or cut to steps_per_epoch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

import dancedata
from dancedata import DatasetBuilder, ExampleConfig, ExampleSource, Holdout, ReadConfig, Sampler, frames_input
from dancedata.errors import ConfigError

from conftest import FAST_EXTRACTOR, make_aist_folder

WINDOWS = ExampleConfig(seq_len=5, training=True, cast=False)  # 5 of 8 stored frames: random windows, seeded per batch
# A window of 4 examples and ~3 examples per shard: starts fall inside windows, inside shards and across both.
CYCLED = dict(shuffle=True, seed=3, shuffle_buffer=4, repeat=True, epoch=2, steps_per_epoch=11)  # more than an epoch
CUT = dict(shuffle=True, seed=7, shuffle_buffer=4, repeat=True, epoch=1, steps_per_epoch=4)  # fewer than an epoch
HELD = dict(shuffle=True, seed=5, shuffle_buffer=4, repeat=True, epoch=3, holdout=Holdout(0.3), drop_remainder=True)


def _bytes(dataset, count: int) -> list:
    """Each of the first `count` batches as the bytes of all its parts, in order."""
    return [b"|".join(np.asarray(part).tobytes() for part in tf.nest.flatten(batch))
            for batch in dataset.take(count).as_numpy_iterator()]


def _check_every_start(make, steps: int, starts=None):
    """make(epoch_offset, step) -> dataset. Starting at each (epoch + j, s) gives the uninterrupted
    read's batches from its batch j * steps + s on, through the start of the next epoch."""
    reference = _bytes(make(0, 0), 2 * steps + 2)
    assert len(reference) == 2 * steps + 2
    for j, s in starts or [(j, s) for j in (0, 1) for s in range(steps)]:
        wanted = reference[j * steps + s:(j + 1) * steps + 2]
        assert _bytes(make(j, s), len(wanted)) == wanted, (j, s)


def _read(options: dict, j: int, s: int, **changes) -> ReadConfig:
    return ReadConfig(**{**options, **changes, "epoch": options["epoch"] + j, "step": s})


@pytest.mark.parametrize("reader", [dict(), dict(cache=True), dict(source="stream")], ids=["mapped", "cache", "stream"])
@pytest.mark.parametrize("options, batch_size", [(CYCLED, 3), (CUT, 2)], ids=["cycled", "cut"])
def test_as_dataset_starts_at_every_step(built, reader, options, batch_size):
    builder = DatasetBuilder(str(built["out"]))
    assert len(builder.files("train")) > 2
    steps = options["steps_per_epoch"]

    def make(j, s):
        return builder.as_dataset("train", batch_size=batch_size, read_config=_read(options, j, s, **reader),
                                  example_config=WINDOWS)

    _check_every_start(make, steps)


def test_an_epoch_without_steps_per_epoch_and_a_holdout_start_anywhere(built):
    builder = DatasetBuilder(str(built["out"]))
    kept = sum(1 for _ in builder.as_dataset("train", batch_size=1, read_config=ReadConfig(holdout=HELD["holdout"])))
    steps = kept // 2  # drop_remainder: every epoch has this many batches
    for reader in (dict(), dict(source="stream")):
        def make(j, s):
            return builder.as_dataset("train", batch_size=2, read_config=_read(HELD, j, s, **reader), example_config=WINDOWS)

        _check_every_start(make, steps)
        # Past the epoch's end: none of it, then the next epoch whole.
        after = _bytes(make(0, steps + 2), steps)
        assert after == _bytes(make(1, 0), steps)


def test_the_device_table_starts_at_every_step(built):
    from dancedata.device_table import index_dataset, load_table

    builder = DatasetBuilder(str(built["out"]))
    table = load_table(builder, ["train", "val"])

    def make(j, s):
        return index_dataset(builder, "train", table, batch_size=3, read_config=_read(CYCLED, j, s), example_config=WINDOWS)

    _check_every_start(make, CYCLED["steps_per_epoch"])


@pytest.mark.parametrize("source", ["auto", "stream"])
def test_each_input_pipeline_starts_at_its_own_batch_step(built, source):
    """Several input pipelines (tf.distribute workers): each one, started at the global step, gives
    its own uninterrupted batches from that step on. Three pipelines at batch 6: 2 per replica."""
    builder = DatasetBuilder(str(built["out"]))
    for pipeline in (0, 2):
        context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=pipeline, num_replicas_in_sync=3)

        def make(j, s):
            return builder.as_dataset("train", batch_size=6, read_config=_read(CYCLED, j, s, source=source, steps_per_epoch=5),
                                      example_config=WINDOWS, input_context=context)

        _check_every_start(make, 5, [(0, s) for s in range(5)] + [(1, 0), (1, 4)])


def test_a_streamed_pipeline_with_fewer_shards_than_pipelines_starts_anywhere(built):
    builder = DatasetBuilder(str(built["out"]))
    shards = len(builder.files("test"))
    pipelines = shards + 1  # every pipeline reads every shard and keeps every pipelines-th example
    for pipeline in (0, pipelines - 1):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=pipelines)

        def make(j, s):
            options = dict(CYCLED, source="stream", steps_per_epoch=3, shuffle_buffer=2)
            return builder.as_dataset("test", batch_size=pipelines, read_config=_read(options, j, s),
                                      example_config=WINDOWS, input_context=context)

        _check_every_start(make, 3)


def test_a_streamed_start_opens_no_shard_before_its_window(built, tmp_path):
    """The shards an epoch reads before the start's window are deleted from a copy of the build: the
    started read does not miss them, and gives the intact build's batches."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built["out"], copy)
    builder = DatasetBuilder(str(copy))
    one_epoch = dict(CYCLED, repeat=False, steps_per_epoch=None, source="stream")
    read = _read(one_epoch, 0, 5)
    paths, sampler = builder.ordered_files("train", read)
    entry = sampler.locate(read.epoch, 5 * 3)
    assert entry.shards >= 2
    for shard in sampler.shards(read.epoch)[:entry.shards]:
        (copy / paths[shard].rsplit("/", 1)[1]).unlink()
    started = builder.as_dataset("train", batch_size=3, read_config=read, example_config=WINDOWS)
    intact = DatasetBuilder(str(built["out"])).as_dataset("train", batch_size=3, example_config=WINDOWS,
                                                          read_config=_read(one_epoch, 0, 0))
    expected = _bytes(intact, 100)[5:]
    assert expected and _bytes(started, 100) == expected


@pytest.mark.parametrize("counts, workers, window", [((5, 0, 7, 3, 9), 1, 4), ((5, 0, 7, 3, 9), 2, 3), ((4, 6), 3, 2),
                                                     ((3, 3, 3), 1, 100)])
def test_locate_enters_the_stream_where_the_order_continues(counts, workers, window):
    """Reading the shards as a streamed reader does from sampler.locate's entry, every position of every
    epoch gives the rest of the order (with and without a kept part), opening no shard before the
    window that holds the position."""
    rng = np.random.default_rng(0)
    for worker in range(workers):
        sampler = Sampler(counts, seed=11, shuffle=True, window=window, worker=worker, workers=workers)
        starts = np.concatenate([[0], np.cumsum(counts)])
        for epoch in (0, 1):
            for keep in (None, rng.random(sum(counts)) < 0.6):
                order = sampler.order(epoch, keep)
                for position in range(len(order) + 1):
                    entry = sampler.locate(epoch, position, keep)
                    records = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in sampler.shards(epoch)[entry.shards:]]
                                             or [np.zeros(0, int)])[entry.records:]
                    if len(counts) < workers:
                        records = records[entry.phase::workers]
                    rest = []
                    for run, first in enumerate(range(0, len(records), window), start=entry.window):
                        part = records[first:first + window]
                        rest += [i for i in part[sampler.window_order(epoch, run, len(part))] if keep is None or keep[i]]
                    assert rest[entry.dropped:] == order[position:].tolist(), (worker, epoch, position)
                    assert entry.dropped < window and entry.records < max(counts)


def test_example_source_batches_start_at_any_step(built):
    source = ExampleSource(str(built["out"]), "train")
    for epoch in (0, 1):
        whole = [keys.tolist() for keys in source.batches(3, seed=2, epoch=epoch, window=4)]
        for step in range(len(whole) + 1):
            assert [keys.tolist() for keys in source.batches(3, seed=2, epoch=epoch, window=4, step=step)] == whole[step:]
    with pytest.raises(ConfigError, match="step must be"):
        source.batches(3, step=-1)


def test_grain_resumes_mid_epoch_exactly_from_a_small_state(built):
    """grain's DataLoader keeps its own position (the last index its sampler gave): restored in a new
    loader over a new source (as a new process would make), it goes on with the uninterrupted batches."""
    grain = pytest.importorskip("grain.python")

    def loader():
        source = ExampleSource(str(built["out"]), "train")
        return grain.DataLoader(data_source=source, sampler=source.grain_sampler(seed=4, num_epochs=2, first_epoch=1, window=4),
                                operations=[grain.Batch(3)], shard_options=grain.NoSharding(), worker_count=0)

    def as_bytes(batches):
        return [batch["features"].tobytes() + batch["label"].tobytes() for batch in batches]

    whole = as_bytes(loader())
    length = len(ExampleSource(str(built["out"]), "train"))
    assert len(whole) == -(-2 * length // 3)
    for stop in range(len(whole)):
        iterator = iter(loader())
        for _ in range(stop):
            next(iterator)
        state = iterator.get_state()
        assert len(json.dumps(json.loads(state))) < 512, state
        resumed = iter(loader())
        resumed.set_state(state)
        assert as_bytes(resumed) == whole[stop:], stop


@pytest.fixture(scope="module")
def stored_frames(tmp_path_factory):
    """A small build that keeps its frames (PNG), several shards per split."""
    base = tmp_path_factory.mktemp("start_frames")
    make_aist_folder(base / "aist", genres=("BR", "PO"), performances=3, cameras=2, frames=8)
    dancedata.build_shards(str(base / "aist"), str(base / "shards"), frames=8, shard_mb=0.05, quiet=True,
                           keep_frames="png", **FAST_EXTRACTOR)
    return DatasetBuilder(str(base / "shards"))


def test_stored_frames_start_at_every_step(stored_frames):
    assert len(stored_frames.files("train")) > 1

    def make(j, s):
        return frames_input.as_dataset(stored_frames, "train", batch_size=2, example_config=ExampleConfig(seq_len=5),
                                       read_config=_read(dict(CYCLED, steps_per_epoch=5), j, s), image_size=16)

    _check_every_start(make, 5)


@pytest.mark.parametrize("make, message", [
    (lambda: ReadConfig(step=-1), "step must be 0 or more, got -1"),
    (lambda: ReadConfig(step=1.0), r"step must be an integer 0 or more, got 1.0 \(float\)"),
    (lambda: ReadConfig(repeat=True, steps_per_epoch=4, step=4), r"step must be less than steps_per_epoch \(4\), got 4"),
    (lambda: ReadConfig(data_service="grpc://localhost:5000", step=3), "data_service cannot start inside an epoch"),
])
def test_impossible_starts_are_refused_when_made(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
    assert ReadConfig(data_service="grpc://localhost:5000", step=0).step == 0
    assert ReadConfig(step=np.int64(5)).step == 5 and type(ReadConfig(step=np.int64(5)).step) is int
