"""The training reader of schema-4 shards: local TFRecords memory-mapped (each checked whole, once per
process, by shard_index) and their training fields gathered through each shard's index, with no
protobuf parsing: one copy per example, from the page cache into the batch."""
from __future__ import annotations

import sys
import threading
import warnings

import numpy as np

from dancedata import fs, schema, shard_index
from dancedata.errors import ShardError


class MappedShards:
    """The shards `paths` (holding `counts` examples) of a schema-4 build, memory-mapped and checked,
    as one table: example i is record i - start of the shard whose examples start at `start`.

    Masks, labels and sequence ids are read into memory when the table is made; a batch of indices
    gathers its features with one copy each, from the page cache into the batch: in TensorFlow, as whole
    rows of the files mapped once more for it (decoder(), where the build placed its features on feature
    rows), or in numpy (gather(), and decoder() for older builds). Mapped pages count in
    the process's resident memory (twice, with the second mapping) but belong to the page cache, which
    reclaims them. A shard truncated
    in place while mapped ends the process (SIGBUS), as for any mmap reader; builds never do that
    (they write new files and rename them over old ones)."""

    def __init__(self, folder: str, manifest: dict, shards: list, salvaged: dict | None = None):
        """salvaged: {position in `shards`: damage.Salvage} of damaged shards read under
        on_damage="skip": their intact records are gathered, and a lost record's row is another's,
        which no reader asks for (`intact` says which are lost)."""
        self.frames = manifest["num_frames"]
        self.dtype = np.dtype(manifest["feature_dtype"]).newbyteorder("<")
        self.shape = (self.frames, manifest["feature_dim"])
        self.width = shard_index.feature_bytes(manifest)
        self.maps, starts, masks, labels, self._sequences = [], [], [], [], []
        self._files = []  # (path, its features' offsets, the version checked) of each shard with records, in order
        salvaged = salvaged or {}
        on_rows = not salvaged
        classes = len(manifest["classes"])
        for position, shard in enumerate(shards):
            path = fs.join(folder, shard["file"])
            if position in salvaged:
                table, mapped = salvaged[position].table, salvaged[position].data
                if mapped is None:  # nothing of it is left: every row a placeholder
                    table, mapped = np.zeros((0, len(shard_index.COLUMNS)), np.uint64), np.zeros(0, np.uint8)
            else:
                header, table = shard_index.load(folder, shard)
                mapped = shard_index.mapped(path, header, table, shard, self.frames, self.width) if len(table) \
                    else shard_index.empty(path)
            data = table[:, 0].astype(np.int64) + 12
            self.maps.append(mapped)
            starts.append(data + table[:, 3].astype(np.int64))
            if len(table) and position not in salvaged:
                self._files.append((path, starts[-1], shard_index.checked_version(mapped)))
                on_rows = on_rows and shard_index.on_rows(table, self.frames, self.width)
            masks.append(mapped[(data + table[:, 4].astype(np.int64))[:, None] + np.arange(self.frames)] if len(table)
                         else np.zeros((0, self.frames), np.uint8))
            labels.append(_labels(mapped, data + table[:, 5].astype(np.int64), table[:, 6]))
            self._sequences.append((mapped, data + table[:, 7].astype(np.int64), table[:, 8].astype(np.int64)))
            if np.any(masks[-1] > 1) or (len(labels[-1]) and (labels[-1].min() < 0 or labels[-1].max() >= classes)):
                raise ShardError(f"shard {path} holds a mask or label this build cannot have written. {shard_index.REBUILD}")
        counts = [len(s) for s in starts]
        self.masks = (np.concatenate(masks) if masks else np.zeros((0, self.frames), np.uint8)) != 0
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._rows, self.start = _spanning_rows(self.maps, counts, starts, self.width)
        self.intact = None
        if salvaged:  # a shard with nothing left holds its examples' places: each points at the first live row
            full = [int(shard["num_examples"]) for shard in shards]
            self.intact = np.concatenate([salvaged[p].intact if p in salvaged else np.ones(n, bool)
                                          for p, n in enumerate(full)])
            self.masks, self.labels, self.start = (_placed(values, counts, full) for values in
                                                   (self.masks, self.labels, self.start))
            self._sequences = [entry if len(entry[1]) else (entry[0], np.zeros(n, np.int64), np.zeros(n, np.int64))
                               for entry, n in zip(self._sequences, full)]
        self._labels = self.labels.astype(np.int32)  # as the model takes them
        # Builds since the feature row write every shard's features at multiples of it: TensorFlow gathers them
        # as whole rows, in C++, from the mapped files (aligned_rows). Older builds, and salvaged shards, are
        # gathered in Python (numpy).
        self.row = shard_index.feature_row(self.frames, self.width) if on_rows else None
        self.gathers_in = "numpy"  # or "tensorflow", once decoder() has mapped the aligned rows
        self._unaligned = self.row is None and not salvaged and bool(self._files)  # an older build: said in decoder()
        self._folder = folder

    def sequences(self) -> np.ndarray:
        """Every example's sequence id (bytes), in table order."""
        found = []
        for mapped, starts, lengths in self._sequences:
            found += [mapped[a:a + n].tobytes() for a, n in zip(starts.tolist(), lengths.tolist())]
        return np.asarray(found, dtype=object)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Features [len(indices), T, D] (stored dtype) of examples `indices`: one copy each, in one call."""
        return self._rows[self.start[indices]].view(self.dtype).reshape(len(indices), *self.shape)

    def decoder(self):
        """A batch of example indices -> dict of tensors (features in the stored dtype, mask, label)."""
        import tensorflow as tf

        stored = tf.dtypes.as_dtype(self.dtype.newbyteorder("="))
        # Masks and labels are small (a few hundred KB for AIST): TensorFlow holds them and gathers them in C++.
        masks, labels = tf.constant(self.masks), tf.constant(self._labels)
        aligned = self._aligned()
        if aligned is not None:
            table, first = aligned
            steps = tf.range(self.width // self.row, dtype=tf.int64)
            split = [-1, *self.shape, self.dtype.itemsize]

            def gathered(indices):  # every row of each example's features, then their bytes seen as values
                rows = tf.reshape(tf.gather(first, indices)[:, None] + steps, [-1])
                return {schema.FEATURES: tf.bitcast(tf.reshape(tf.gather(table, rows), split), stored),
                        schema.MASK: tf.gather(masks, indices), schema.LABEL: tf.gather(labels, indices)}

            return gathered
        if self._unaligned:
            warnings.warn(f"{self._folder} was written before feature rows (or resumed or updated from such a build): "
                          "the mapped reader gathers its features in Python, slower (docs/reading.md); the build "
                          "command run again writes them from the shards' own examples, decoding nothing", stacklevel=3)
        shape, rows, start, buffers = self.shape, self._rows, self.start, _Buffers(self.width)

        def features(indices):
            # Into a pooled buffer TensorFlow takes without a copy: a fresh one costs its page faults, and an
            # unaligned one TensorFlow's copy (together ~0.4x the memmap gather's CPU per example, measured).
            # numpy has no gather from a strided source into a given buffer; np.concatenate copies a list of
            # row views into one, in one call (in tf.data's threads 15.8 against a loop's 18.5 us of CPU per
            # example in one run; level with it in another).
            out = buffers.take(len(indices))
            if len(indices):
                np.concatenate([rows[at] for at in start[indices].tolist()], out=out.reshape(-1))
            return out.view(self.dtype).reshape(len(indices), *shape)

        def decode(indices):  # one Python call per batch, returning one array (two more cost ~100 us, measured)
            gathered = tf.numpy_function(features, [indices], stored, stateful=False)
            return {schema.FEATURES: tf.ensure_shape(gathered, [None, *shape]), schema.MASK: tf.gather(masks, indices),
                    schema.LABEL: tf.gather(labels, indices)}

        return decode

    def _aligned(self):
        """(table, first): TensorFlow's view of the shards' feature rows (uint8 [rows, self.row], no copy) and
        each example's first row there (int64 [examples]), or None when the build is not aligned or this host
        cannot map its files so (then the features are gathered in numpy)."""
        if self.row is None or not self._files:
            return None
        spans = aligned_rows([(path, version) for path, _, version in self._files], self.row)
        if spans is None:
            return None
        import tensorflow as tf

        self._pages, bases = spans
        first = np.concatenate([(base + offsets) // self.row for base, (_, offsets, _) in zip(bases, self._files)])
        table = tf.experimental.dlpack.from_dlpack(self._pages.__dlpack__())  # shares the mapped pages: no copy
        self._pages.flags.writeable = False  # (writable only for DLPack's sake: the pages are read-only)
        self.gathers_in = "tensorflow"
        return table, tf.constant(first.astype(np.int64))


class _Buffers:
    """Batch buffers of `width`-byte rows, aligned as TensorFlow needs to take a numpy result without a
    copy, and reused once nothing holds them: a tensor made from one holds a reference to its memory
    (any view of it refers to the owning array), so an array only the pool refers to is free."""

    ALIGN, KEPT = 64, 16

    def __init__(self, width: int):
        self.width, self.owners, self.lock = width, [], threading.Lock()

    def take(self, rows: int) -> np.ndarray:
        size = rows * self.width
        with self.lock:  # a free buffer is claimed (a view made) before another thread can look at it
            for owner in self.owners:
                if len(owner) == size + self.ALIGN and sys.getrefcount(owner) == 3:  # the list, `owner`, the call
                    return self._rows(owner, rows)
            owner = np.empty(size + self.ALIGN, np.uint8)
            if len(self.owners) < self.KEPT:
                self.owners.append(owner)
            return self._rows(owner, rows)

    def _rows(self, owner: np.ndarray, rows: int) -> np.ndarray:
        skip = -owner.ctypes.data % self.ALIGN
        return owner[skip:skip + rows * self.width].reshape(rows, self.width)


class _Reserved:
    """A range of address space holding files mapped read-only (aligned_rows), as an array
    (numpy's __array_interface__); unmapped when nothing refers to it any more."""

    def __init__(self, libc, address: int, size: int, row: int):
        import weakref

        self.__array_interface__ = {"data": (address, False), "shape": (size // row, row), "typestr": "|u1",
                                    "version": 3}
        # Not at exit: an iterator's thread may still be gathering from it then; the process's end unmaps it.
        weakref.finalize(self, libc.munmap, address, size).atexit = False


_FIXED = 0x10  # Linux's MAP_FIXED (the mmap module does not name it), the same on every architecture


def aligned_rows(files: list, row: int) -> tuple | None:
    """(rows, bases): the local files of `files` ((path, version) pairs, the version the file's check
    recorded: shard_index.checked_version), mapped read-only one after another into one reserved range of
    address space, file k at bases[k] bytes from its start (a multiple of `row` and of the page size), and
    rows a uint8 [range // row, row] array over the range. The bytes between files read as zeros; nothing
    writes any of it (TensorFlow only gathers from it; the array is writable only because DLPack hands
    TensorFlow writable arrays alone). None off 64-bit Linux, or when a file is not the version checked or
    cannot be mapped: the caller gathers from the checked mappings instead."""
    import ctypes
    import math
    import mmap
    import os

    if not sys.platform.startswith("linux") or sys.maxsize < 2**63 - 1 or any(v is None for _, v in files):
        return None
    unit = math.lcm(row, mmap.PAGESIZE)
    sizes = [version[2] for _, version in files]
    bases = np.concatenate([[0], np.cumsum([-(-size // unit) * unit for size in sizes])]).astype(np.int64)
    total = int(bases[-1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.munmap.restype = ctypes.c_void_p, ctypes.c_int
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    anonymous = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    address = libc.mmap(None, total, mmap.PROT_READ, anonymous, -1, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        return None
    reserved = _Reserved(libc, address, total, row)  # from here on, unmapped whatever happens
    for (path, version), base, size in zip(files, bases.tolist(), sizes):
        try:
            handle = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            stat = os.fstat(handle)
            if (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns) != tuple(version):
                return None
            if libc.mmap(address + base, size, mmap.PROT_READ, mmap.MAP_PRIVATE | _FIXED, handle, 0) != address + base:
                # A failed MAP_FIXED may have unmapped the range: taken back, so no other mapping can land in it
                # before the reservation is unmapped whole.
                libc.mmap(address + base, size, mmap.PROT_NONE, anonymous | _FIXED, -1, 0)
                return None
        finally:
            os.close(handle)
    return np.asarray(reserved), bases[:-1]


class _Span:
    """Raw memory [start, start + size) read-only as an array (numpy's __array_interface__)."""

    def __init__(self, address: int, size: int, width: int, owners: list):
        self.owners = owners  # the mappings: an array made from this object keeps it, so them, alive
        self.__array_interface__ = {"data": (address, True), "shape": (size - width + 1, width), "strides": (1, 1),
                                    "typestr": "|u1", "version": 3}


def _spanning_rows(maps: list, counts: list, starts: list, width: int) -> tuple:
    """(rows, start): `rows[start[i]]` is example i's `width` feature bytes, whichever mapping holds them.

    rows is one read-only [span, width] view with a stride of one byte per row, over the address range
    from the lowest mapping to the end of the highest, so a batch from every shard is one fancy index, a
    copy at memory speed (np.take needs a contiguous source; a loop per example or per shard costs
    0.6-0.9x). Only rows that start where the checked index places a record's features are read; the
    bytes between mappings are never touched."""
    live = [(m, s) for m, n, s in zip(maps, counts, starts) if n]
    if not live:
        return np.zeros((0, width), np.uint8), np.zeros(0, np.int64)
    addresses = [m.__array_interface__["data"][0] for m, _ in live]
    base = min(addresses)
    span = max(a + len(m) for a, (m, _) in zip(addresses, live)) - base
    rows = np.asarray(_Span(base, span, width, [m for m, _ in live]))
    start = np.concatenate([s + (a - base) for a, (_, s) in zip(addresses, live)]).astype(np.int64)
    return rows, start


def _placed(values: np.ndarray, counts: list, full: list) -> np.ndarray:
    """`values` (rows of the shards with rows, counts[i] each) with each shard that has none given
    full[i] rows copied from the first row there is (a lost example's place, never read for it)."""
    parts, at = [], 0
    for count, wanted in zip(counts, full):
        parts.append(values[at:at + count] if count else np.repeat(values[:1], wanted, axis=0))
        at += count
    return np.concatenate(parts) if parts else values


def _labels(mapped: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each label's varint, decoded (one byte for labels below 128: one gather)."""
    if not len(starts):
        return np.zeros(0, np.int64)
    if np.all(lengths == 1):
        return mapped[starts].astype(np.int64)
    values = []
    for start, length in zip(starts.tolist(), lengths.tolist()):
        value, end = shard_index.varint(mapped[start:start + length].tobytes(), 0)
        values.append(value if end == length else -1)
    return np.asarray(values, np.int64)
