"""Issue 31, item 5 under on_damage="skip": random damage to a split's shards costs exactly the records
it touched, in every reader, and never an exception, a hang or a changed order.

The oracle walks the intact shards' TFRecord framing here (not dancedata's index) and calls a record
touched when its bytes are no longer at its offset in the damaged file; a missing file touches all of
its records. The reader must then give the intact build's order with exactly the touched records left
out. Damage kinds: byte flips, cuts, zeroed 4 KiB pages, appended garbage, two records swapped, a record
duplicated, a shard deleted. Bounded: a fixed number of seeded cases (CI ≤ 2 minutes).
"""
import hashlib
import json
import random
import shutil
import struct

import numpy as np
import pytest
from conftest import SMALL_SHARDS, make_aist_folder

import dancedata
from dancedata import ExampleConfig, ReadConfig
from dancedata.errors import ShardError

KINDS = ("flip", "flips", "cut", "page", "append", "swap", "duplicate", "delete")


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzzskip")
    make_aist_folder(base / "aist", genres=("BR", "PO"), performances=4, cameras=2)
    dancedata.build_shards(str(base / "aist"), str(base / "shards"), **SMALL_SHARDS)
    return base / "shards"


def _framing(data: bytes):
    found, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        found.append((at, 16 + length))
        at += 16 + length
    return found


def _shards(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return [folder / shard["file"] for shard in manifest["splits"]["train"]["shards"]]


def _damage(path, kind, rng):
    """Damages one shard file; returns its new bytes (None: deleted)."""
    data = bytearray(path.read_bytes())
    records = _framing(bytes(data))
    if kind == "delete":
        path.unlink()
        return None
    if kind in ("flip", "flips"):
        for _ in range(1 if kind == "flip" else rng.randint(2, 6)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        del data[rng.randrange(1, len(data)):]
    elif kind == "page":
        start = rng.randrange(0, len(data), 4096)
        data[start:start + 4096] = bytes(len(data[start:start + 4096]))
    elif kind == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "swap" and len(records) >= 2:
        i, j = sorted(rng.sample(range(len(records)), 2))
        (a, n), (b, m) = records[i], records[j]
        data = data[:a] + data[b:b + m] + data[a + n:b] + data[a:a + n] + data[b + m:]
    elif kind in ("swap", "duplicate"):
        a, n = records[rng.randrange(len(records))]
        data = data[:a + n] + data[a:a + n] + data[a + n:]
    path.write_bytes(bytes(data))
    return bytes(data)


def _touched(before: bytes, after: bytes | None) -> list:
    """Record numbers whose bytes are not at their offset any more."""
    return [i for i, (at, n) in enumerate(_framing(before)) if after is None or after[at:at + n] != before[at:at + n]]


def _identities(batches) -> list:
    return [hashlib.sha1(np.ascontiguousarray(f).tobytes()).hexdigest() for batch in batches for f in batch]


def _case(intact, tmp_path, seed):
    """A damaged copy of the build: (folder, {identity of each touched record})."""
    rng = random.Random(seed)
    folder = shutil.copytree(intact, tmp_path / f"case{seed}")
    lost = set()
    for path in rng.sample(_shards(folder), rng.randint(1, 2)):
        before = path.read_bytes()
        after = _damage(path, rng.choice(KINDS), rng)
        for number in _touched(before, after):
            lost.add(_record(before, number))
    return folder, lost


def _record(data: bytes, number: int) -> str:
    import tensorflow as tf

    at, n = _framing(data)[number]
    example = tf.train.Example.FromString(data[at + 12:at + n - 4])
    return hashlib.sha1(example.features.feature["features"].bytes_list.value[0]).hexdigest()


def _source_order(folder, **kwargs):
    source = dancedata.ExampleSource(str(folder), "train", **kwargs)
    return _identities(source.batch(keys)["features"] for keys in source.batches(3, seed=7, window=5))


def test_random_damage_costs_exactly_the_touched_records_without_tensorflow(intact, tmp_path):
    reference = _source_order(intact)
    for seed in range(40):
        folder, lost = _case(intact, tmp_path, seed)
        with pytest.warns(UserWarning, match="damaged shard"):
            try:
                got = _source_order(folder, on_damage="skip")
            except ShardError as error:  # only when nothing at all is left
                assert "every record" in str(error) and lost >= set(reference), (seed, error)
                continue
        assert got == [identity for identity in reference if identity not in lost], f"case {seed}"


@pytest.mark.parametrize("source", ["mapped", "stream"])
def test_random_damage_costs_exactly_the_touched_records_in_tf_data(intact, tmp_path, source):
    def order(folder, **fields):
        read = ReadConfig(shuffle=True, seed=7, shuffle_buffer=5, source=source, **fields)
        dataset = dancedata.DatasetBuilder(str(folder)).as_dataset(
            "train", batch_size=3, read_config=read, example_config=ExampleConfig(cast=False))
        return _identities(features.numpy() for (features, _), _ in dataset)

    reference = order(intact)
    for seed in range(100, 106):
        folder, lost = _case(intact, tmp_path, seed)
        with pytest.warns(UserWarning, match="damaged shard"):
            got = order(folder, on_damage="skip")
        assert got == [identity for identity in reference if identity not in lost], f"case {seed}"


def test_random_damage_to_indexes_costs_no_record(intact, tmp_path):
    """An index of an intact shard, damaged in any way (or another shard's), is derived again in memory."""
    reference = _source_order(intact)
    for seed in range(200, 220):
        rng = random.Random(seed)
        folder = shutil.copytree(intact, tmp_path / f"index{seed}")
        shards = rng.sample(_shards(folder), 2)
        index = shards[0].with_name(shards[0].name + ".index")
        kind = rng.choice(KINDS[:5] + ("delete", "other"))
        if kind == "other":
            shutil.copyfile(shards[1].with_name(shards[1].name + ".index"), index)
        else:
            _damage(index, kind, rng)
        with pytest.warns(UserWarning, match="no record lost"):
            assert _source_order(folder, on_damage="skip") == reference, f"case {seed} ({kind})"


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_shard_damage_in_a_streamed_read(intact, tmp_path, kind):
    """Streamed (by byte range where no record is lost, the records path where some are): under "skip" exactly
    the touched records are left out, whatever the kind (bytes appended: none); under "stop" the read stops
    with an error naming the file."""
    import tensorflow as tf

    from dancedata.read import shard_error

    def order(folder, **fields):
        read = ReadConfig(shuffle=True, seed=3, shuffle_buffer=4, source="stream", **fields)
        dataset = dancedata.DatasetBuilder(str(folder)).as_dataset(
            "train", batch_size=3, read_config=read, example_config=ExampleConfig(cast=False))
        return _identities(features.numpy() for (features, _), _ in dataset)

    reference = order(intact)
    for case in range(3):  # seeded: a shard and a place in it each
        rng = random.Random(f"{kind} {case}")
        folder = shutil.copytree(intact, tmp_path / f"case{case}")
        path = rng.choice(_shards(folder))
        before = path.read_bytes()
        lost = {_record(before, number) for number in _touched(before, _damage(path, kind, rng))}
        with pytest.warns(UserWarning, match="damaged shard"):
            assert order(folder, on_damage="skip") == [identity for identity in reference if identity not in lost], case
        with pytest.raises((tf.errors.InvalidArgumentError, ShardError)) as raised:
            order(folder)
        named = raised.value if isinstance(raised.value, ShardError) else shard_error(raised.value)
        assert isinstance(named, ShardError) and str(path) in str(named), (case, raised.value)
