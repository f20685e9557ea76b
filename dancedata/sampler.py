"""The order every reader gives a split's examples in: a pure function of (example counts per shard,
seed, worker, epoch), with no TensorFlow in it.

    sampler = Sampler(counts=(3, 4, 2), seed=0, shuffle=True)
    sampler.order(epoch=5)        # every example index of the split (shards in manifest order), once

With shuffle, an epoch's order is made so that a reader can follow it while streaming its shards:

1. the shards are put in an order drawn for (seed, epoch); with several workers, worker w reads every
   workers-th of them from position w (when there are fewer shards than workers, every worker reads
   them all and keeps every workers-th example from position w);
2. the examples of those shards, one shard after another, form the worker's stream; consecutive runs of
   `window` examples of the stream are each put in an order drawn for (seed, epoch, run).

Shards are shuffled at write time, so windows of the default 256 examples mix the genres well. Mapped
shards, tables in memory and on a device gather examples in this order by index; streamed TFRecords read
the shards in order 1 and permute each window (read.py); `dancedata.ExampleSource` with this sampler
gives the same examples to grain or any other loader. An order never depends on how long a pipeline
has run: a run resumed at epoch 5 sees epoch 5's order, and one resumed at example p of it starts there:
readers by index slice the order, a streamed reader enters the stream where `locate` says.

"Drawn" means sorted by a 64-bit hash (splitmix64) of (seed, epoch, run, position), so the order is the
same on every platform and NumPy version; without shuffle the order is the stored one.
"""
from __future__ import annotations

import dataclasses
import secrets
from typing import NamedTuple

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SHARD_RUN = 0xFFFFFFFF  # the run number that draws the shard order (windows are numbered from 0)
SEED_RUN = SHARD_RUN - 1  # and the one that draws the seeds of random frame windows


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 values (wrapping arithmetic): a bijection that scatters bits."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def hashes(seed: int, epoch: int, run: int, count: int) -> np.ndarray:
    """`count` uint64 hashes of positions 0..count-1 under (seed, epoch, run)."""
    with np.errstate(over="ignore"):
        return _splitmix64(_mixed(seed, epoch, run) + _GOLDEN * np.arange(1, count + 1, dtype=np.uint64))


def _mixed(seed: int, epoch: int, runs) -> np.ndarray:
    """hashes' starting value for (seed, epoch, each of `runs`: a number or a uint64 array)."""
    base = np.zeros(1, np.uint64)
    with np.errstate(over="ignore"):
        for number in (seed, epoch):
            base = _splitmix64((base ^ np.uint64(number)) + _GOLDEN)
        return _splitmix64((base ^ np.asarray(runs, np.uint64)) + _GOLDEN)


def window_draws(seed: int, epoch: int, count: int, window: int) -> np.ndarray:
    """The permutation of range(count) that puts each run of `window` positions (run r: positions r *
    window on, the last one shorter) in the order draw(seed, epoch, r, its length) gives: the hashes of
    every run at once, then one sort per row (a loop of a draw per window cost an AIST epoch 5.6 ms)."""
    positions = np.arange(count, dtype=np.uint64)
    runs = positions // np.uint64(window)
    with np.errstate(over="ignore"):
        keys = _splitmix64(_mixed(seed, epoch, runs) + _GOLDEN * (positions - runs * np.uint64(window) + np.uint64(1)))
    whole = count // window * window
    order = np.empty(count, np.int64)
    if whole:
        rows = np.argsort(keys[:whole].reshape(-1, window), axis=1)
        order[:whole] = (rows + np.arange(0, whole, window)[:, None]).ravel()
    order[whole:] = np.argsort(keys[whole:]) + whole
    return order


def draw(seed: int, epoch: int, run: int, count: int) -> np.ndarray:
    """A permutation of range(count) drawn for (seed, epoch, run): positions sorted by their hashes.

    The hashes of one run are distinct (GOLDEN is odd, so position -> hash is a bijection of uint64), so
    every sort gives this one permutation: NumPy's default (SIMD where the CPU has it) sorts an AIST
    epoch's windows in 0.09 ms, a stable sort in 0.41 (measured), on every reader's start of an epoch."""
    return np.argsort(hashes(seed, epoch, run, count))


class Entry(NamedTuple):
    """Where a streamed reader enters an epoch to give its order from some position on (Sampler.locate)."""

    shards: int  # leading shards of shards(epoch) not read at all
    records: int  # records then skipped, of the first shard read (those before the window's first)
    phase: int  # with fewer shards than workers: this worker's records are every workers-th from this one
    window: int  # the number of the window reading resumes with (its permutation's run)
    dropped: int  # examples of that window, once permuted and kept, that come before the position


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Example orders of one split: see the module docstring. `counts` are the examples of each shard in
    manifest order; example i of the split is the i-th in that order. seed=None draws a seed once (this
    sampler's orders are then fixed, but differ from run to run)."""

    counts: tuple
    _: dataclasses.KW_ONLY
    seed: int | None = None
    shuffle: bool = False
    window: int = 256
    worker: int = 0
    workers: int = 1

    def __post_init__(self):
        object.__setattr__(self, "counts", tuple(int(count) for count in self.counts))
        if any(count < 0 for count in self.counts):
            raise ValueError(f"example counts must be non-negative, got {self.counts}")
        if self.window < 1:
            raise ValueError(f"window must be positive, got {self.window}")
        if not 0 <= self.worker < self.workers:
            raise ValueError(f"worker must be in 0..{self.workers - 1}, got {self.worker}")
        if self.seed is None:
            object.__setattr__(self, "seed", secrets.randbits(63))
        elif not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in 0..2**63-1, got {self.seed}")

    @property
    def starts(self) -> np.ndarray:
        """Index of each shard's first example."""
        return np.concatenate([[0], np.cumsum(self.counts[:-1], dtype=np.int64)]).astype(np.int64) if self.counts else \
            np.zeros(0, np.int64)

    def shards(self, epoch: int) -> np.ndarray:
        """The shards this worker reads in `epoch`, in reading order."""
        order = draw(self.seed, epoch, SHARD_RUN, len(self.counts)) if self.shuffle else np.arange(len(self.counts))
        return order[self.worker::self.workers] if len(self.counts) >= self.workers else order

    def stream(self, epoch: int) -> np.ndarray:
        """This worker's examples in reading order, before windows are permuted."""
        starts, shards = self.starts, self.shards(epoch)
        stream = np.concatenate([np.arange(starts[s], starts[s] + self.counts[s]) for s in shards]) if len(shards) \
            else np.zeros(0, np.int64)
        if len(self.counts) < self.workers:
            stream = stream[self.worker::self.workers]
        return stream.astype(np.int64)

    def window_order(self, epoch: int, run: int, length: int) -> np.ndarray:
        """Positions within window `run` (of `length` examples) in the order the epoch takes them."""
        return draw(self.seed, epoch, run, length) if self.shuffle else np.arange(length)

    def order(self, epoch: int, keep: np.ndarray | None = None) -> np.ndarray:
        """Example indices of `epoch` for this worker; `keep` (bool per example of the split) leaves out
        the others afterwards (a held-out part), without changing the order of the rest."""
        stream = self.stream(epoch)
        if self.shuffle:  # each window's part as window_order(epoch, run, its length) puts it
            stream = stream[window_draws(self.seed, epoch, len(stream), self.window)]
        return stream if keep is None else stream[np.asarray(keep, bool)[stream]]

    def locate(self, epoch: int, position: int, keep: np.ndarray | None = None) -> Entry:
        """Where to enter this worker's stream of `epoch` so that reading on gives order(epoch, keep)
        from `position` on: whole shards before the window that holds that example are not read, and at
        most the records of that window before it are read and dropped. Past the end: nothing is read."""
        shards, order = self.shards(epoch), self.order(epoch)
        kept = np.arange(len(order)) if keep is None else np.flatnonzero(np.asarray(keep, bool)[order])
        if position >= len(kept):  # no shard read, and the window after the last (ranged reads count windows)
            return Entry(len(shards), 0, 0, -(-len(order) // self.window), 0)
        window = int(kept[position]) // self.window
        start = window * self.window  # in the worker's stream; in the shards' records when it takes every workers-th
        if len(self.counts) < self.workers:
            start = start * self.workers + self.worker
        ends = np.cumsum(np.asarray(self.counts, np.int64)[shards])
        shard = int(np.searchsorted(ends, start, side="right"))  # the first whose records reach past start
        dropped = position - int(np.searchsorted(kept, window * self.window))
        return Entry(shard, start - int(ends[shard - 1] if shard else 0), 0, window, dropped)

    def batch_seeds(self, epoch: int, count: int) -> np.ndarray:
        """[count, 2] int64: the seed of each batch's random frame windows in `epoch`."""
        keys = hashes(self.seed, epoch, SEED_RUN, 2 * count) >> np.uint64(1)
        return keys.astype(np.int64).reshape(count, 2)
