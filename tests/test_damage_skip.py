"""Issue 31, item 1: under ReadConfig(on_damage="skip") damage costs exactly the records it touched.

The oracle is independent of the readers: the intact build read with the default policy gives every
example's identity (a hash of its feature bytes) in order; the damaged records are found by walking the
TFRecord framing here and parsing them with tf.train.Example, not with dancedata's index. A reader of
the damaged copy must give the intact order minus exactly those examples, in every reader.
"""
import hashlib
import json
import shutil
import struct

import numpy as np
import pytest
from conftest import SMALL_SHARDS, make_aist_folder

import dancedata
from dancedata import ExampleConfig, ReadConfig, cli, schema
from dancedata import train as train_script
from dancedata.errors import ConfigError, ShardError

READERS = {  # name -> ReadConfig fields
    "mapped": {"source": "mapped"},
    "streamed": {"source": "stream"},
    "cached": {"cache": True},
    "cached-streamed": {"cache": True, "source": "stream"},
}


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    base = tmp_path_factory.mktemp("skip")
    make_aist_folder(base / "aist", genres=("BR", "PO"), performances=4, cameras=2)
    dancedata.build_shards(str(base / "aist"), str(base / "shards"), **SMALL_SHARDS)
    return base / "shards"


def _copy(intact, tmp_path):
    return shutil.copytree(intact, tmp_path / "shards")


def _framing(path):
    """[(offset, length)] of each record, walking the TFRecord framing (length, crc, data, crc)."""
    data, found, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        found.append((at, length))
        at += 16 + length
    return found


def _identity(features: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(features).tobytes()).hexdigest()


def _record_identity(path, number):
    """The identity of record `number` of a shard, parsed with tf.train.Example (not our index)."""
    import tensorflow as tf

    at, length = _framing(path)[number]
    example = tf.train.Example.FromString(path.read_bytes()[at + 12:at + 12 + length])
    raw = example.features.feature[schema.FEATURES].bytes_list.value[0]
    return hashlib.sha1(raw).hexdigest()


def _train_shards(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return [folder / shard["file"] for shard in manifest["splits"]["train"]["shards"]]


def _read(folder, reader, **fields):
    """The identities of every example of train, in the order the reader gives them (two epochs)."""
    builder = dancedata.DatasetBuilder(str(folder))
    read = ReadConfig(shuffle=True, seed=3, shuffle_buffer=8, **READERS[reader], **fields)
    dataset = builder.as_dataset("train", batch_size=4, read_config=read, example_config=ExampleConfig(cast=False))
    return [[_identity(f) for f in features.numpy()] for _ in range(2) for (features, _), _ in dataset]


def _flat(epochs):
    return [identity for batch in epochs for identity in batch]


def _without(reference, lost):
    return [identity for identity in reference if identity not in lost]


def test_skip_policy_is_checked():
    with pytest.raises(ConfigError, match="on_damage must be one of stop, skip"):
        ReadConfig(on_damage="ignore")
    assert ReadConfig(skip_bad_shards=True).on_damage == "skip"  # the old spelling, now per record


@pytest.mark.parametrize("reader", list(READERS))
def test_a_flipped_byte_costs_its_record(intact, tmp_path, reader):
    reference = _flat(_read(intact, reader))
    assert len(set(reference)) == len(reference) // 2 > 8  # every example distinct: identities can be compared
    folder = _copy(intact, tmp_path)
    shard = _train_shards(folder)[1]
    at, length = _framing(shard)[1]
    lost = {_record_identity(shard, 1)}
    data = bytearray(shard.read_bytes())
    data[at + 12 + length // 2] ^= 0x40
    shard.write_bytes(bytes(data))

    with pytest.raises(Exception) as stopped:  # the default policy still stops, naming the file
        _read(folder, reader)
    assert shard.name in str(stopped.value) or "corrupted" in str(stopped.value)
    with pytest.warns(UserWarning, match=rf"damaged shard .*{shard.name}: 1 of its records left out"):
        got = _read(folder, reader, on_damage="skip")
    assert _flat(got) == _without(reference, lost)

    listed = dancedata.DatasetBuilder(str(folder)).damage("train")
    assert [(p["file"].endswith(shard.name), p["record"], p["offset"]) for p in listed] == [(True, 1, at)]


@pytest.mark.parametrize("reader", ["mapped", "streamed"])
def test_a_cut_costs_the_records_after_it(intact, tmp_path, reader):
    reference = _flat(_read(intact, reader))
    folder = _copy(intact, tmp_path)
    shard = next(path for path in _train_shards(folder) if len(_framing(path)) >= 3)
    records = _framing(shard)
    lost = {_record_identity(shard, n) for n in range(1, len(records))}
    at, length = records[1]
    shard.write_bytes(shard.read_bytes()[:at + length // 2])
    with pytest.warns(UserWarning, match=f"{len(records) - 1} of its records left out"):
        got = _read(folder, reader, on_damage="skip")
    assert _flat(got) == _without(reference, lost)
    assert [p["record"] for p in dancedata.DatasetBuilder(str(folder)).damage("train")] == list(range(1, len(records)))


@pytest.mark.parametrize("reader", ["mapped", "streamed", "cached-streamed"])
def test_a_missing_shard_costs_its_records(intact, tmp_path, reader):
    reference = _flat(_read(intact, reader))
    folder = _copy(intact, tmp_path)
    shard = _train_shards(folder)[2]
    lost = {_record_identity(shard, n) for n in range(len(_framing(shard)))}
    shard.unlink()
    with pytest.warns(UserWarning, match="its shard is missing"):
        got = _read(folder, reader, on_damage="skip")
    assert _flat(got) == _without(reference, lost)


@pytest.mark.parametrize("damage", ["flipped", "missing"])
def test_a_damaged_index_costs_no_record(intact, tmp_path, damage):
    reference = _flat(_read(intact, "mapped"))
    folder = _copy(intact, tmp_path)
    index = _train_shards(folder)[0].with_name(_train_shards(folder)[0].name + ".index")
    if damage == "missing":
        index.unlink()
    else:
        data = bytearray(index.read_bytes())
        data[len(data) // 2] ^= 1
        index.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="index"):
        _read(folder, "mapped")
    with pytest.warns(UserWarning, match="no record lost"):
        assert _flat(_read(folder, "mapped", on_damage="skip")) == reference
    listed = dancedata.DatasetBuilder(str(folder)).damage("train")
    assert len(listed) == 1 and listed[0]["record"] is None and "derived again" in listed[0]["cause"]


def test_example_source_skips_the_same_records(intact, tmp_path):
    source = dancedata.ExampleSource(str(intact), "train")
    reference = [_identity(source.batch(keys)["features"][k]) for keys in source.batches(4, seed=3, window=8)
                 for k in range(len(keys))]
    folder = _copy(intact, tmp_path)
    shard = _train_shards(folder)[1]
    at, length = _framing(shard)[0]
    lost = {_record_identity(shard, 0)}
    data = bytearray(shard.read_bytes())
    data[at + 12 + length - 3] ^= 0x01
    shard.write_bytes(bytes(data))

    with pytest.raises(ShardError, match=shard.name):
        dancedata.ExampleSource(str(folder), "train").batch([0])
    with pytest.warns(UserWarning, match="1 of its records left out"):
        damaged = dancedata.ExampleSource(str(folder), "train", on_damage="skip")
        assert len(damaged) == len(source) - 1
    got = [_identity(damaged.batch(keys)["features"][k]) for keys in damaged.batches(4, seed=3, window=8)
           for k in range(len(keys))]
    assert got == _without(reference, lost)
    assert sorted(_identity(damaged[i]["features"]) for i in range(len(damaged))) == sorted(_without(reference, lost))
    assert [p["record"] for p in damaged.damage()] == [0]
    pytest.importorskip("grain")
    sampler = damaged.grain_sampler(seed=3, window=8)  # grain's protocol: the same examples, the same order
    assert [_identity(damaged[sampler[i].record_key]["features"]) for i in range(len(damaged))] == got
    batches = damaged.grain_batches(4, seed=3, window=8)
    assert [_identity(f) for k in range(len(batches)) for f in batches[k]["features"]] == got


def test_train_reports_what_it_left_out(intact, tmp_path, capsys):
    folder = _copy(intact, tmp_path)
    shard = _train_shards(folder)[0]
    at, length = _framing(shard)[0]
    data = bytearray(shard.read_bytes())
    data[at + 20] ^= 0xFF
    shard.write_bytes(bytes(data))
    argv = ["--shards", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--seed", "0"]
    assert cli.run(train_script.main, "train.py", argv) == 2
    assert shard.name in capsys.readouterr().err
    assert cli.run(train_script.main, "train.py", argv + ["--on-damage", "skip"]) == 0
    assert "--on-damage skip: damaged records left out: 1 of train" in capsys.readouterr().err
    damage = json.loads((tmp_path / "run" / "damage.json").read_text())
    assert [(p["split"], p["record"], p["offset"]) for p in damage["problems"]] == [("train", 0, at)]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    total = json.loads((folder / "manifest.json").read_text())["splits"]["train"]["num_examples"]
    assert metrics["examples"]["train"] == {"read": total - 1, "built": total}
    summary = metrics["examples"]["summary"]
    assert summary.startswith("trained on ") and f" of {total} examples of train (1 damaged left out, " in summary


@pytest.mark.parametrize("reader", ["mapped", "streamed"])
def test_a_damaged_read_starts_anywhere_and_holds_out_the_same(intact, tmp_path, reader):
    """A resumed read (ReadConfig(step=k)) of a damaged split gives the batches an uninterrupted one gives
    from batch k on, with a holdout too: the start is located in the intact order minus the lost examples."""
    from dancedata import Holdout

    folder = _copy(intact, tmp_path)
    shard = _train_shards(folder)[0]
    at, length = _framing(shard)[1]
    data = bytearray(shard.read_bytes())
    data[at + 12 + length // 3] ^= 0x08
    shard.write_bytes(bytes(data))
    builder = dancedata.DatasetBuilder(str(folder))

    def batches(step, holdout=None):
        read = ReadConfig(shuffle=True, seed=5, shuffle_buffer=4, on_damage="skip", step=step, holdout=holdout,
                          **READERS[reader])
        dataset = builder.as_dataset("train", batch_size=2, read_config=read, example_config=ExampleConfig(cast=False))
        return [[_identity(f) for f in features.numpy()] for (features, _), _ in dataset]

    with pytest.warns(UserWarning, match="1 of its records left out"):
        whole = batches(0)
    for holdout in (None, Holdout(0.3)):
        whole = batches(0, holdout)
        assert whole and all(batches(step, holdout) == whole[step:] for step in (1, len(whole) // 2, len(whole) - 1))
