"""Arguments of the wrong type end in one ConfigError naming the argument and what it accepts, not in a
TypeError or AttributeError from deep inside a reader; numpy scalars are as good as Python's."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from dancedata import DatasetBuilder, ExampleConfig, ExampleSource, Holdout, ReadConfig
from dancedata.config import BuildConfig, ExtractorConfig, SamplingConfig
from dancedata.download import DownloadConfig
from dancedata.errors import ConfigError


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    """Two classes of three 4-frame videos: the smallest build both readers open."""
    from conftest import FAST_EXTRACTOR, make_class_folders

    import dancedata

    root = make_class_folders(tmp_path_factory.mktemp("arguments") / "videos", count=3)
    out = root.parent / "tfrecords"
    dancedata.build_shards(str(root), str(out), frames=4, quiet=True, **FAST_EXTRACTOR)
    return str(out)


@pytest.mark.parametrize("make, message", [
    (lambda: ReadConfig(shuffle="yes"), "shuffle must be True or False, got 'yes' (str)"),
    (lambda: ReadConfig(repeat=1), "repeat must be True or False, got 1 (int)"),
    (lambda: ReadConfig(cache="False"), "cache must be True or False, got 'False' (str)"),
    (lambda: ReadConfig(seed="abc"), "seed must be an integer in 0..2**63-1 or None, got 'abc' (str)"),
    (lambda: ReadConfig(seed=1.0), "seed must be an integer in 0..2**63-1 or None, got 1.0 (float)"),
    (lambda: ReadConfig(seed=-1), "seed must be in 0..2**63-1, got -1"),
    (lambda: ReadConfig(shuffle_buffer=True), "shuffle_buffer must be a positive integer, got True (bool)"),
    (lambda: ReadConfig(epoch="1"), "epoch must be an integer 0 or more, got '1' (str)"),
    (lambda: ReadConfig(repeat=True, steps_per_epoch=2.5),
     "steps_per_epoch must be an integer or None, got 2.5 (float)"),
    (lambda: ReadConfig(source=None), "source must be a string, got None (NoneType)"),
    (lambda: ReadConfig(data_service=5000), "data_service must be a string or None, got 5000 (int)"),
    (lambda: ReadConfig(holdout=0.1), "holdout must be a dancedata.Holdout or None, got 0.1 (float)"),
    (lambda: ExampleConfig(seq_len="8"), "seq_len must be a positive integer or None, got '8' (str)"),
    (lambda: ExampleConfig(training="no"), "training must be True or False or None, got 'no' (str)"),
    (lambda: ExampleConfig(cast=None), "cast must be True or False, got None (NoneType)"),
    (lambda: Holdout("0.1"), "holdout fraction must be a number, got '0.1' (str)"),
    (lambda: Holdout(0.1, part=True), "holdout part must be a string, got True (bool)"),
])
def test_config_fields_of_the_wrong_type_are_refused_by_name(make, message):
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)  # what code catching a bad value already expects


@pytest.mark.parametrize("make, message", [
    (lambda: BuildConfig(workers="2"), "workers must be an integer, got '2' (str)"),
    (lambda: BuildConfig(shard_mb="100"), "shard_mb must be a number, got '100' (str)"),
    (lambda: BuildConfig(update="no"), "update must be True or False, got 'no' (str)"),
    (lambda: SamplingConfig(frames=8.0), "frames must be an integer, got 8.0 (float)"),
    (lambda: ExtractorConfig(image_size="224", weights="none"), "image_size must be an integer, got '224' (str)"),
    (lambda: DownloadConfig(processes=True), "processes must be an integer, got True (bool)"),
])
def test_build_and_download_options_of_the_wrong_type_are_refused_by_name(make, message):
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value) == message


def test_build_options_take_paths_and_keep_their_numbers():
    assert BuildConfig(out=pathlib.Path("shards")).out == "shards"
    assert type(BuildConfig(shard_mb=1).shard_mb) is int  # written into the build's identity, where 1 and 1.0 differ
    assert SamplingConfig(frames=np.int64(8)) == SamplingConfig(frames=8)


def test_numpy_scalars_are_taken_as_python_values():
    config = ReadConfig(shuffle=np.bool_(True), seed=np.int64(7), shuffle_buffer=np.int32(8), epoch=np.uint8(2))
    assert config == ReadConfig(shuffle=True, seed=7, shuffle_buffer=8, epoch=2)
    assert [type(value) for value in (config.shuffle, config.seed, config.shuffle_buffer, config.epoch)] == \
        [bool, int, int, int]
    assert ExampleConfig(seq_len=np.int64(3)).seq_len == 3 and type(ExampleConfig(seq_len=np.int64(3)).seq_len) is int
    assert Holdout(np.float32(0.25)).fraction == 0.25


@pytest.mark.parametrize("arguments, message", [
    ({"batch_size": "4"}, "batch_size must be a positive integer, got '4' (str)"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5 (float)"),
    ({"batch_size": True}, "batch_size must be a positive integer, got True (bool)"),
    ({"batch_size": 0}, "batch_size must be positive, got 0"),
    ({"read_config": {"shuffle": True}},
     "read_config must be a dancedata.ReadConfig or None, got a dict: pass read_config=ReadConfig(shuffle=True)"),
    ({"example_config": {"seq_len": 2}},
     "example_config must be a dancedata.ExampleConfig or None, got a dict: "
     "pass example_config=ExampleConfig(seq_len=2)"),
    ({"read_config": ExampleConfig(seq_len=2)},
     "read_config must be a dancedata.ReadConfig or None, got an ExampleConfig: pass it as example_config="),
    ({"example_config": ReadConfig(shuffle=True)},
     "example_config must be a dancedata.ExampleConfig or None, got a ReadConfig: pass it as read_config="),
    ({"read_config": "shuffle"}, "read_config must be a dancedata.ReadConfig or None, got 'shuffle' (str)"),
])
def test_as_dataset_arguments_are_checked(small_build, arguments, message):
    with pytest.raises(ConfigError) as caught:
        DatasetBuilder(small_build).as_dataset("train", **arguments)
    assert str(caught.value) == message


def test_as_dataset_takes_a_numpy_batch_size(small_build):
    builder = DatasetBuilder(small_build)
    sizes = [int(label.shape[0]) for _, label in builder.as_dataset("train", batch_size=np.int64(2))]
    assert sum(sizes) == builder.info.splits["train"] == len(ExampleSource(small_build, "train"))
    assert sizes[:-1] == [2] * (len(sizes) - 1)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.batches(0), "batch_size must be positive, got 0"),
    (lambda s: s.batches("2"), "batch_size must be a positive integer, got '2' (str)"),
    (lambda s: s.batches(2, epoch=-1), "epoch must be 0 or more, got -1"),
    (lambda s: s.batches(2, drop_remainder="yes"), "drop_remainder must be True or False, got 'yes' (str)"),
    (lambda s: s.batches(2, seed="abc"), "seed must be an integer in 0..2**63-1 or None, got 'abc' (str)"),
    (lambda s: s["a"], "index must be an integer, got 'a' (str)"),
    (lambda s: s[1.0], "index must be an integer, got 1.0 (float)"),
    (lambda s: s._getitems(["a"]), "keys must be integers (example numbers), got 'a' (str) among them"),
    (lambda s: s._getitems([0, 1.5]), "keys must be integers (example numbers), got 1.5 (float) among them"),
    (lambda s: s.batch(np.array([0.0, 1.0])),
     "keys must be integers (example numbers), got float64 values such as 0.0"),
    (lambda s: s.sampler(window=0), "window must be positive, got 0"),
    (lambda s: s.sampler(worker=2, workers=2), "worker must be in 0..1, got 2"),
    (lambda s: s.sampler(shuffle=None), "shuffle must be True or False, got None (NoneType)"),
    (lambda s: s.grain_sampler(num_epochs=0), "num_epochs must be positive, got 0"),
    (lambda s: s.grain_sampler(first_epoch=0.5), "first_epoch must be an integer 0 or more, got 0.5 (float)"),
])
def test_example_source_arguments_are_checked(small_build, call, message):
    source = ExampleSource(small_build, "train")
    with pytest.raises(ConfigError) as caught:
        call(source)  # raised by the call itself: batches is checked before anything iterates it
    assert str(caught.value) == message


def test_example_source_takes_numpy_indices(small_build):
    source = ExampleSource(small_build, "train")
    assert source[np.int64(1)]["label"] == source[1]["label"]
    assert [item["label"] for item in source._getitems([np.int32(0), 1])] == [source[0]["label"], source[1]["label"]]
    assert source.batch(np.array([1, 0], np.uint16))["label"].tolist() == [source[1]["label"], source[0]["label"]]
    assert source.batch([])["label"].shape == (0,)
    assert source.batch(np.array([2, 1], ">i8"))["label"].tolist() == [source[2]["label"], source[1]["label"]]
    for keys in ([-1], np.array([0, -len(source)]), [len(source)], np.arange(len(source) + 1)[::-1]):
        with pytest.raises(IndexError, match=rf"^examples must be in 0\.\.{len(source) - 1} for train$"):
            source.batch(keys)  # a negative key is refused, not counted from the end
    assert [list(b) for b in source.batches(np.int64(2), seed=np.int64(0), shuffle=np.bool_(True))] == \
        [list(b) for b in source.batches(2, seed=0, shuffle=True)]


@pytest.mark.parametrize("reader", ["frames_input", "device_table"])
def test_the_other_readers_check_the_same_arguments(small_build, reader):
    """The stored-frames reader and the device-table reader take as_dataset's arguments: the same refusals."""
    from dancedata import device_table, frames_input

    builder = DatasetBuilder(small_build)
    read = {"frames_input": lambda **kw: frames_input.as_dataset(builder, "train", **kw),
            "device_table": lambda **kw: device_table.index_dataset(builder, "train", None, **kw)}[reader]
    with pytest.raises(ConfigError, match=r"^batch_size must be a positive integer, got '4' \(str\)$"):
        read(batch_size="4")
    with pytest.raises(ConfigError, match=r"^read_config must be a dancedata.ReadConfig or None, got an ExampleConfig: "):
        read(read_config=ExampleConfig())
