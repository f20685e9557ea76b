"""A split of a build as a random-access source, with no TensorFlow: for grain, PyTorch, JAX or a plain
NumPy loop over the same shards, in the same order as `DatasetBuilder.as_dataset`.

    source = ExampleSource("tfrecords/", "train")
    len(source); source[0]                    # {"features": [T, D] float16, "mask": [T] bool, "label": int}
    for indices in source.batches(64, seed=0, epoch=0):
        batch = source.batch(indices)          # {"features": [B, T, D], "mask": [B, T], "label": [B]}

`__len__`, `__getitem__` and the batched `_getitems` are grain's data-source protocol:
`grain.python.DataLoader(data_source=source, sampler=source.grain_sampler(seed=0, num_epochs=2),
shard_options=grain.python.NoSharding(), ...)`: the order is this build's, one process's whole split.
The shards are memory-mapped and each checked whole (every record's CRCs, against its index) when first
opened in a process, as the tf.data reader does; a source pickles as its folder and split, so loader
worker processes open their own mappings. ExampleSource(folder, split, on_damage="skip") leaves out
exactly the damaged records, as the tf.data reader does (`damage()` lists them): its examples are then
the intact ones, renumbered 0..len-1, and its orders the intact build's minus the lost examples.
"""
from __future__ import annotations

import dataclasses

import warnings

import numpy as np

from dancedata import damage as damage_lib, fs, manifest as manifest_lib
from dancedata.errors import ConfigError
from dancedata.read_config import ON_DAMAGE, check_bool, check_indices, check_int, check_str
from dancedata.sampler import Sampler


class ExampleSource:
    """The examples of `split` in `folder` (a local schema-4 build), example i being the i-th in
    manifest shard order (the order a Sampler's indices refer to); with on_damage="skip", the i-th of
    the intact ones."""

    def __init__(self, folder: str, split: str, *, on_damage: str = "stop"):
        self.folder, self.split = folder.rstrip("/"), split
        self.on_damage = check_str("on_damage", on_damage)
        if on_damage not in ON_DAMAGE:
            raise ConfigError(f"on_damage must be one of {', '.join(ON_DAMAGE)}, got {on_damage!r}")
        if fs.is_remote(self.folder):
            raise ConfigError(f"ExampleSource maps local shards; {self.folder} is remote: copy it, or use DatasetBuilder")
        self.manifest = manifest_lib.load(self.folder)
        if split not in self.manifest["splits"]:
            raise ConfigError(f"unknown split {split!r}; {self.folder} has: {', '.join(self.manifest['splits']) or 'none'}")
        self.shards = self.manifest["splits"][split]["shards"]
        if any("index" not in shard for shard in self.shards):
            raise ConfigError(f"{self.folder} was built before schema 4 (no shard indexes): rebuild it to read it without TensorFlow")
        self.counts = tuple(shard["num_examples"] for shard in self.shards)
        self._table = self._damage = self._kept = None

    @property
    def table(self):
        """The mapped shards (mapped_shards.MappedShards), opened and checked on first use in a process."""
        if self._table is None:
            from dancedata.mapped_shards import MappedShards

            found = self._damaged()
            self._table = MappedShards(self.folder, self.manifest, self.shards, found.salvaged if found else None)
        return self._table

    def _damaged(self) -> damage_lib.SplitDamage | None:
        """With on_damage="skip", the split's damage (scanned once, warned once per file), else None."""
        if self.on_damage != "skip":
            return None
        if self._damage is None:
            self._damage = damage_lib.split_damage(self.folder, self.manifest, self.split)
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                damage_lib.warn(self._damage, set(), stacklevel=5)
            self._kept = None if self._damage.intact is None else np.flatnonzero(self._damage.intact)
        return self._damage

    def damage(self) -> list:
        """What on_damage="skip" leaves out, as DatasetBuilder.damage lists it ([] when intact)."""
        return list(self._damaged().problems) if self.on_damage == "skip" else \
            damage_lib.split_damage(self.folder, self.manifest, self.split).problems

    def __getstate__(self):
        return {**self.__dict__, "_table": None, "_damage": None, "_kept": None}

    def __repr__(self) -> str:  # what it reads: grain checks a restored loader's source by its repr
        return f"ExampleSource({self.folder!r}, {self.split!r}, examples={len(self)})"

    def __len__(self) -> int:
        if self._damaged() is not None and self._kept is not None:
            return len(self._kept)
        return sum(self.counts)

    def _renumbered(self, order: np.ndarray) -> np.ndarray:
        """An order of manifest examples as this source's numbers (with damage: the intact ones', lost ones out)."""
        found = self._damaged()
        if found is None or self._kept is None:
            return order
        return np.searchsorted(self._kept, order[found.intact[order]])

    def __getitem__(self, key: int) -> dict:
        key = check_int("index", key)
        if not -len(self) <= key < len(self):
            raise IndexError(f"example {key} of {self.split}, which has {len(self)}")
        key %= len(self)
        batch = self.batch([key])
        return {name: (value[0] if name != "label" else int(value[0])) for name, value in batch.items()}

    def _getitems(self, keys) -> list:
        batch = self.batch(keys)
        return [{"features": batch["features"][k], "mask": batch["mask"][k], "label": int(batch["label"][k])}
                for k in range(len(batch["label"]))]

    def batch(self, keys) -> dict:
        """{"features": [B, T, D] (stored dtype), "mask": [B, T] bool, "label": [B] int64} of examples `keys`."""
        keys = check_indices("keys", keys)
        if len(keys) and keys.view(np.uint64).max() >= len(self):  # one pass: a negative key is huge as uint64
            raise IndexError(f"examples must be in 0..{len(self) - 1} for {self.split}")
        table = self.table
        if self._damaged() is not None and self._kept is not None:
            keys = self._kept[keys]
        return {"features": table.gather(keys), "mask": table.masks[keys], "label": table.labels[keys]}

    def sampler(self, *, seed: int | None = None, shuffle: bool = True, window: int = 256, worker: int = 0,
                workers: int = 1) -> Sampler:
        """The Sampler as_dataset uses with ReadConfig(shuffle, seed, shuffle_buffer=window) for this split."""
        seed, shuffle = check_int("seed", seed, 0, 2**63 - 1, optional=True), check_bool("shuffle", shuffle)
        window, workers = check_int("window", window, 1), check_int("workers", workers, 1)
        worker = check_int("worker", worker, 0, workers - 1)
        return Sampler(self.counts, seed=seed, shuffle=shuffle, window=window, worker=worker, workers=workers)

    def batches(self, batch_size: int, *, seed: int | None = None, epoch: int = 0, shuffle: bool = True,
                drop_remainder: bool = False, window: int = 256, step: int = 0):
        """The example indices of each batch of `epoch` from its batch `step`, as as_dataset batches them
        (a slice of the epoch's order: no batch before `step` is made)."""
        batch_size, epoch = check_int("batch_size", batch_size, 1), check_int("epoch", epoch, 0)
        step = check_int("step", step, 0)
        order = self._renumbered(self.sampler(seed=seed, shuffle=shuffle, window=window).order(epoch))
        stop = len(order) - len(order) % batch_size if check_bool("drop_remainder", drop_remainder) else len(order)
        # A generator expression, not a generator function: bad arguments raise here, not at the first next().
        return (order[start:start + batch_size] for start in range(step * batch_size, stop, batch_size))

    def grain_batches(self, batch_size: int, *, seed: int | None = None, shuffle: bool = True, num_epochs: int = 1,
                      first_epoch: int = 0, drop_remainder: bool = False, window: int = 256):
        """A grain `MapDataset` of whole batches ({"features" [B, T, D], "mask" [B, T], "label" [B]}) of
        epochs first_epoch .. first_epoch + num_epochs - 1, as `batches` + `batch` give them: element k is
        one `batch` call, so random access (and grain's checkpoints) need only k. The fast grain path:
        grain's per-record path (DataLoader, or MapDataset.batch) makes and stacks a dict per example."""
        import grain.python as grain

        batch_size = check_int("batch_size", batch_size, 1)
        num_epochs, first_epoch = check_int("num_epochs", num_epochs, 1), check_int("first_epoch", first_epoch, 0)
        batches = _EpochBatches(self, self.sampler(seed=seed, shuffle=shuffle, window=window), batch_size,
                                check_bool("drop_remainder", drop_remainder), first_epoch)
        return grain.MapDataset.range(batches.per_epoch * num_epochs).map(batches)

    def grain_sampler(self, *, seed: int | None = None, shuffle: bool = True, num_epochs: int = 1, first_epoch: int = 0,
                      window: int = 256):
        """A sampler for grain's DataLoader giving epochs first_epoch .. first_epoch + num_epochs - 1 in
        this build's order (grain's own IndexSampler draws another)."""
        num_epochs, first_epoch = check_int("num_epochs", num_epochs, 1), check_int("first_epoch", first_epoch, 0)
        return GrainSampler(self.sampler(seed=seed, shuffle=shuffle, window=window), num_epochs, first_epoch,
                            self if self.on_damage == "skip" else None)


class _EpochBatches:
    """Batch k of a run of epochs -> that batch of the source (ExampleSource.grain_batches); one epoch's
    order in memory at a time. Picklable: grain's worker processes get the source's folder and split."""

    def __init__(self, source: ExampleSource, sampler: Sampler, batch_size: int, drop_remainder: bool, first: int):
        self.source, self.sampler, self.batch_size, self.first = source, sampler, batch_size, first
        examples = len(source)
        self.per_epoch = examples // batch_size if drop_remainder else -(-examples // batch_size)
        self._order = (None, None)

    def __call__(self, k) -> dict:
        epoch, batch = divmod(int(k), self.per_epoch)
        epoch += self.first
        if self._order[0] != epoch:
            self._order = (epoch, self.source._renumbered(self.sampler.order(epoch)))
        start = batch * self.batch_size
        return self.source.batch(self._order[1][start:start + self.batch_size])

    def __getstate__(self):
        return {**self.__dict__, "_order": (None, None)}


@dataclasses.dataclass
class GrainSampler:
    """grain's sampler protocol (`__getitem__(index) -> RecordMetadata`, IndexError at the end) over a
    dancedata Sampler's epochs. Needs grain installed (pip install grain).

    Random access by index, so a grain DataLoader resumes exactly from its own iterator state
    (`iterator.get_state()`, then `set_state(state)` on a new loader's iterator, in any process): the
    last index it gave plus a few counters, and the reprs of this sampler and the source, by which grain
    checks that the restored loader reads the same (about 300 bytes of JSON plus the folder's path,
    whatever the split's size)."""

    sampler: Sampler
    num_epochs: int = 1
    first_epoch: int = 0
    source: ExampleSource | None = None  # with on_damage="skip": its intact examples' numbers

    def __post_init__(self):
        from grain.python import RecordMetadata  # once: grain asks for every record

        self._record = RecordMetadata
        self._orders: dict = {}
        self._length = len(self.source) if self.source is not None else sum(self.sampler.counts)

    def __repr__(self) -> str:  # the order's parameters, not every shard's count: it goes into grain's state
        sampler = self.sampler
        return (f"GrainSampler(seed={sampler.seed}, shuffle={sampler.shuffle}, window={sampler.window}, "
                f"worker={sampler.worker}, workers={sampler.workers}, shards={len(sampler.counts)}, "
                f"examples={self._length}, num_epochs={self.num_epochs}, first_epoch={self.first_epoch})")

    def __getitem__(self, index: int):
        epoch, position = divmod(int(index), self._length or 1)
        if index < 0 or not self._length or epoch >= self.num_epochs:
            raise IndexError(index)
        epoch += self.first_epoch
        if epoch not in self._orders:
            order = self.sampler.order(epoch)  # one epoch at a time in memory
            self._orders = {epoch: order if self.source is None else self.source._renumbered(order)}
        return self._record(index=int(index), record_key=int(self._orders[epoch][position]))
