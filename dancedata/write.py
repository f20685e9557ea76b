"""Shard planning and writing.

The plan is a pure function of the video table and the seed: each split's videos are shuffled (so
every shard mixes genres and file-level shuffling mixes well) and cut into contiguous shards of about
`shard_mb`. A shard is written under a temporary name and renamed when complete, with a small
record of it in `.build/`; a later build can therefore see which shards are finished and resume.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pandas as pd

from dancedata.errors import InputError

STATE_DIR = ".build"
PARTIAL = ".incomplete"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def plan(videos: pd.DataFrame, seed: int, example_bytes: int, shard_mb: float) -> pd.DataFrame:
    """Adds `shard` and `num_shards` to each video with a split; rows come back in writing order."""
    parts = []
    for number, split in enumerate(("train", "val", "test")):
        rows = videos[videos.split == split]
        if rows.empty:
            continue
        order = np.random.default_rng([seed, number]).permutation(len(rows))
        rows = rows.iloc[order].copy()
        count = max(1, math.ceil(len(rows) * example_bytes / (shard_mb * 1e6)))
        rows["num_shards"] = count
        rows["shard"] = np.arange(len(rows)) * count // len(rows)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True) if parts else videos.iloc[:0].assign(shard=0, num_shards=0)


def check_free(out: str, overwrite: bool) -> None:
    """Refuses to mix a new build with a finished one unless told to replace it. Leftovers of an
    interrupted build (`.incomplete` files, `.build/` records) are not a finished build."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"output {out} is a file, not a folder; pass --out with a folder path")
    finished = [n for n in os.listdir(out) if n.endswith(".tfrecord") or n == "manifest.json"] if os.path.isdir(out) else []
    if finished and not overwrite:
        raise InputError(f"{out} already holds a build ({len(finished)} shard/manifest files); pass --overwrite to replace it")


def prepare(out: str, overwrite: bool) -> None:
    """Creates `out` and clears what an earlier build left there."""
    check_free(out, overwrite)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.endswith((".tfrecord", PARTIAL)) or name == "manifest.json":
            os.remove(os.path.join(out, name))
    state = os.path.join(out, STATE_DIR)
    os.makedirs(state, exist_ok=True)
    for name in os.listdir(state):
        os.remove(os.path.join(state, name))


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """One shard: examples go to `<name>.incomplete`; close() renames it and returns its manifest record."""

    def __init__(self, out: str, split: str, index: int, count: int):
        import tensorflow as tf

        self.out, self.split, self.index = out, split, index
        self.name = shard_name(split, index, count)
        self._partial = os.path.join(out, self.name + PARTIAL)
        self._writer = tf.io.TFRecordWriter(self._partial)
        self.num_examples = 0
        self.skipped: list = []
        self.genres: dict = {}

    def write(self, example, genre: str) -> None:
        self._writer.write(example.SerializeToString())
        self.num_examples += 1
        self.genres[genre] = self.genres.get(genre, 0) + 1

    def close(self) -> dict:
        self._writer.close()
        record = {"file": self.name, "num_examples": self.num_examples, "sha256": sha256(self._partial)}
        os.replace(self._partial, os.path.join(self.out, self.name))
        state = {**record, "split": self.split, "genres": self.genres, "skipped": self.skipped}
        with open(os.path.join(self.out, STATE_DIR, self.name + ".json"), "w") as handle:
            json.dump(state, handle)
        return record


class ShardSequence:
    """Walks the plan's shards in writing order, one open at a time. A shard whose videos all failed
    to decode is still written (empty), so every `-of-N` name exists."""

    def __init__(self, out: str, ordered: pd.DataFrame):
        keys = ordered[["split", "shard", "num_shards"]].drop_duplicates()
        self.out = out
        self._keys = list(keys.itertuples(index=False, name=None))
        self._position = -1
        self._current = None
        self.records: dict = {}  # split -> [shard records]
        self.genres: dict = {}  # split -> {genre: count}

    def get(self, split: str, index: int) -> ShardWriter:
        while self._current is None or (self._current.split, self._current.index) != (split, index):
            self._step()
        return self._current

    def close(self) -> None:
        while self._position + 1 < len(self._keys):
            self._step()
        if self._current is not None:
            self._finish()

    def _step(self) -> None:
        if self._current is not None:
            self._finish()
        self._position += 1
        split, index, count = self._keys[self._position]
        self._current = ShardWriter(self.out, split, int(index), int(count))

    def _finish(self) -> None:
        writer, self._current = self._current, None
        self.records.setdefault(writer.split, []).append(writer.close())
        counts = self.genres.setdefault(writer.split, {})
        for genre, count in writer.genres.items():
            counts[genre] = counts.get(genre, 0) + count
