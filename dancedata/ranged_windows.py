"""The streamed reader's windows read by byte range from schema-4 shards, on any filesystem.

A window of an epoch (sampler.window records, consecutive in the shards' reading order) spans one
shard or a few. It is read with one ranged read per shard it spans (per run of adjacent records: with
more input pipelines than shards, per record), each record checked against the shard's index (the
length, both CRCs, the stored CRC equal to the one the build wrote; each file's size against it when the
dataset is made and when a read reaches the file's end), and its training
fields gathered from those bytes straight into the window's permuted order: the bytes are copied once
from storage and once into the window, with no protobuf parsing and no string per record, where
TFRecordDataset and parse_example copy each record three times and the permutation a fourth
(docs/performance.md). The windows are pipelines.streamed_windows' (the same records, the same
permutations: sampler.order), so every reader keeps giving the same batches.

Used by DatasetBuilder.streamed_batches where it can be: schema-4 shards whose indexes load, training
fields only (features, mask, label, sequence id), no shard held in memory for its damage, a
little-endian host, and not through a tf.data service, whose workers run no Python. Elsewhere the
records are streamed (pipelines.streamed_windows).
"""
from __future__ import annotations

import concurrent.futures
import struct
import threading

import numpy as np

from dancedata import fs, schema, shard_index
from dancedata.errors import ShardError
from dancedata.mapped_shards import _labels
from dancedata.record_files import BAD_SHARD

FIELDS = (schema.FEATURES, schema.MASK, schema.LABEL, schema.SEQUENCE_ID)


class BadShard(ValueError):
    """A damaged shard met while reading: a ValueError, so tf.data raises it as InvalidArgumentError,
    as TFRecordDataset does; record_files.shard_error finds the ShardError's message in it."""


def indexes(folder: str, manifest: dict, shards: list, appended_ok: bool = False) -> tuple:
    """(each shard's (header, table) from its index, None): sha256 checked against the manifest, and the
    records tiling the size it was built with, which the file holds (no read is sized by a number the
    file does not back; appended_ok: or more); loaded in parallel (object storage: two requests a shard).
    Or (None, why) when an index cannot be used (damaged, missing, another build's): the records are then
    streamed, checked by their CRCs alone; (None, None) when a file is missing or unreadable, named where
    it is reached. Raises ShardError naming a file of another size than its index's (cut, replaced,
    grown), as the mapped reader does before anything is read."""
    def one(shard):
        header, table = shard_index.load(folder, shard)
        path, built = fs.join(folder, shard["file"]), int(header["shard_bytes"])
        shard_index._layout(built, table, path, manifest["num_frames"], shard_index.feature_bytes(manifest))
        try:
            size = fs.size(path)
        except Exception:  # noqa: BLE001 - OSError locally, tf.errors on object storage: missing or unreadable
            raise _Unread from None
        if size != built and not (appended_ok and size > built):
            raise _WrongSize(f"shard {path} {shard_index.size_problem(path, size, built)}. {shard_index.REBUILD}")
        return header, table.astype(np.int64)

    try:
        with concurrent.futures.ThreadPoolExecutor(min(16, max(1, len(shards)))) as pool:
            return list(pool.map(one, shards)), None
    except _Unread:
        return None, None
    except _WrongSize as error:
        raise ShardError(str(error)) from None
    except ShardError as error:
        return None, str(error).split(". Rebuild it")[0]


class _Unread(Exception):
    """A shard file missing or unreadable."""


class _WrongSize(Exception):
    """A shard file of another size than its index's."""


class RangedWindows:
    """The windows of `sampler`'s epochs over `paths` (the split's shards in manifest order, `loaded`
    their indexes): dicts of `keys` (FIELDS), each field batched over the window's records, features in
    the stored dtype, mask bool, label int64, sequence id bytes."""

    def __init__(self, manifest: dict, paths: list, loaded: list, sampler, keys, appended_ok: bool = False):
        """appended_ok: bytes after a shard's last record are not damage here (on_damage="skip" ignores
        them: its scan has listed them)."""
        self.paths, self.sampler, self.keys = list(paths), sampler, tuple(keys)
        self.appended_ok = appended_ok
        self.headers = [header for header, _ in loaded]
        self.tables = [table for _, table in loaded]
        self.frames, self.dim = manifest["num_frames"], manifest["feature_dim"]
        self.dtype = np.dtype(manifest["feature_dtype"]).newbyteorder("<")
        self.width = shard_index.feature_bytes(manifest)
        self.row = shard_index.feature_row(self.frames, self.width)
        # Records whose features start on the build's feature rows are gathered a row at a time (one call).
        self.on_rows = [len(table) == 0 or shard_index.on_rows(table.astype(np.uint64), self.frames, self.width)
                        for table in self.tables]
        self.starts = sampler.starts
        self._orders: dict = {}
        self._lock = threading.Lock()

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._orders:
                if len(self._orders) > 1:  # this epoch's and the one before: parallel reads may straddle them
                    del self._orders[min(self._orders)]
                self._orders[epoch] = self.sampler.order(epoch)
            return self._orders[epoch]

    def count(self, epoch) -> np.int64:
        """The windows of `epoch`."""
        return np.int64(-(-len(self._order(int(epoch))) // self.sampler.window))

    def read(self, epoch, window) -> tuple:
        """Window `window` of `epoch`, permuted: one array per key."""
        size = self.sampler.window
        examples = self._order(int(epoch))[int(window) * size:(int(window) + 1) * size]
        shards = np.searchsorted(self.starts, examples, side="right") - 1
        records = examples - self.starts[shards]
        count = len(examples)
        features = _aligned(count * self.width).reshape(count, self.width)
        mask = np.empty((count, self.frames), bool)
        label = np.empty(count, np.int64)
        sequence = np.empty(count, object)
        for shard in np.unique(shards).tolist():
            rows = np.flatnonzero(shards == shard)
            self._gather(shard, records[rows], rows, features, mask, label, sequence)
        out = {schema.FEATURES: features.view(self.dtype.newbyteorder("=")).reshape(count, self.frames, self.dim),
               schema.MASK: mask, schema.LABEL: label, schema.SEQUENCE_ID: sequence}
        return tuple(out[key] for key in self.keys)

    def _gather(self, shard: int, records: np.ndarray, rows: np.ndarray, features, mask, label, sequence) -> None:
        """Reads `records` (of `shard`) a run of adjacent ones at a time, checks them and puts their fields at
        `rows`. A window's records of one shard are one run, but with more input pipelines than shards each
        takes every n-th record: one range over them would read (and hold) n times the bytes it uses."""
        by_record = np.argsort(records, kind="stable")
        for run in np.split(by_record, np.flatnonzero(np.diff(records[by_record]) != 1) + 1):
            run = np.sort(run)  # in the window's order: a window of one run is gathered straight into place
            self._gather_run(shard, records[run], rows[run], features, mask, label, sequence)

    def _gather_run(self, shard: int, records: np.ndarray, rows: np.ndarray, features, mask, label, sequence) -> None:
        """Reads the byte range of `records` (of `shard`), checks them and puts their fields at `rows`."""
        table = self.tables[shard]
        first, last = int(records.min()), int(records.max())
        begin, end = int(table[first, 0]), int(table[last, 0] + table[last, 1] + 16)
        if self.on_rows[shard]:  # start on a row: the features then sit on rows of the bytes read too
            begin -= begin % self.row
        data, pooled = self._bytes(shard, begin, end, last == len(table) - 1)
        try:
            self._fields(shard, data, begin, records, rows, features, mask, label, sequence)
        finally:
            if pooled is not None:
                _BUFFERS.give(pooled)

    def _fields(self, shard: int, data: np.ndarray, begin: int, records: np.ndarray, rows: np.ndarray, features, mask,
                label, sequence) -> None:
        """Checks `records` in `data` (their shard's bytes from `begin`) and puts their fields at `rows`."""
        table = self.tables[shard]
        picked = table[records]
        at = picked[:, 0] - begin  # each record's framing, in `data`
        self._check(data, at, picked, records, shard)
        fields = at + 12
        starts = fields + picked[:, 3]
        if self.on_rows[shard]:  # one gather of whole rows, into the window itself where it is all this shard's
            per = self.width // self.row
            whole = data[:len(data) - len(data) % self.row].reshape(-1, self.row)
            taken = ((starts // self.row)[:, None] + np.arange(per)).reshape(-1)
            if len(rows) == len(features):
                np.take(whole, taken, axis=0, out=features.reshape(-1, self.row), mode="clip")
            else:
                features[rows] = np.take(whole, taken, axis=0, mode="clip").reshape(len(rows), self.width)
        else:
            for row, start in zip(rows.tolist(), starts.tolist()):
                features[row] = data[start:start + self.width]
        if schema.MASK in self.keys:
            mask[rows] = data[(fields + picked[:, 4])[:, None] + np.arange(self.frames)] != 0
        if schema.LABEL in self.keys:
            label[rows] = _labels(data, fields + picked[:, 5], picked[:, 6])
        if schema.SEQUENCE_ID in self.keys:
            sequence[rows] = [data[start:start + length].tobytes()
                              for start, length in zip((fields + picked[:, 7]).tolist(), picked[:, 8].tolist())]

    def _bytes(self, shard: int, begin: int, end: int, to_the_end: bool) -> tuple:
        """(bytes begin..end of a shard, read-only uint8; the pooled buffer they are in, for the caller to give
        back, or None); the shard's size checked too when they reach its end."""
        path, built = self.paths[shard], int(self.headers[shard]["shard_bytes"])
        pooled = None
        try:
            if fs.is_remote(path):
                with fs.open_file(path, "rb") as handle:
                    handle.seek(begin)
                    data = np.frombuffer(handle.read(end - begin), np.uint8)
            else:
                pooled = _BUFFERS.take(end - begin)
                data = _read_into(pooled, path, begin, end - begin)
            size = fs.size(path) if to_the_end else built
            if self.appended_ok and size > built:
                size = built
            if len(data) != end - begin:
                raise _bad(f"shard {path} is corrupted or truncated: it ends at byte {begin + len(data)}, "
                           f"not the {built} it was built with")
            if problem := shard_index.size_problem(path, size, built):
                raise _bad(f"shard {path} {problem}")
        except BaseException as error:  # the buffer goes back whatever ends the read (Ctrl-C too)
            if pooled is not None:
                _BUFFERS.give(pooled)
            if isinstance(error, Exception) and not isinstance(error, BadShard) and (
                    isinstance(error, FileNotFoundError) or not fs.exists(path)):  # tf's NotFoundError remotely
                raise _bad(f"shard {path} is missing") from None
            raise  # damage already named, or the machine's failure (I/O, memory)
        return data, pooled

    def _check(self, data: np.ndarray, at: np.ndarray, picked: np.ndarray, records: np.ndarray, shard: int) -> None:
        """Each record's framing as TFRecordDataset checks it, and its CRC the one the build wrote."""
        lengths, crcs = picked[:, 1], picked[:, 2]
        header = data[at[:, None] + np.arange(12)]
        stored = data[(at + 12 + lengths)[:, None] + np.arange(4)].view("<u4")[:, 0]
        good = (header[:, :8].copy().view("<u8")[:, 0] == lengths) & (stored == crcs)
        crc = shard_index._crc32c()
        header_crcs = {int(n): shard_index._mask(crc(struct.pack("<Q", int(n)))) for n in np.unique(lengths)}
        expected_headers = np.array([header_crcs[n] for n in lengths.tolist()], np.uint32)
        good &= header[:, 8:].copy().view("<u4")[:, 0] == expected_headers
        for k, (start, length, expected) in enumerate(zip((at + 12).tolist(), lengths.tolist(), crcs.tolist())):
            if good[k] and shard_index._mask(crc(data[start:start + length])) != expected:
                good[k] = False
        if not good.all():
            bad = int(records[np.flatnonzero(~good)].min())
            raise _bad(f"shard {self.paths[shard]} is corrupted: record {bad} of {len(self.tables[shard])} "
                       "fails its checksum")

    def windows(self, epoch, first=0):
        """tf.data: the windows of `epoch` (an int64 scalar tensor) from window `first` on, read GATHERS at
        once (in order), each a dict of `keys`."""
        import tensorflow as tf

        from dancedata.light_stages import light_map

        types = {schema.FEATURES: tf.dtypes.as_dtype(self.dtype.newbyteorder("=")), schema.MASK: tf.bool,
                 schema.LABEL: tf.int64, schema.SEQUENCE_ID: tf.string}
        shapes = {schema.FEATURES: [None, self.frames, self.dim], schema.MASK: [None, self.frames],
                  schema.LABEL: [None], schema.SEQUENCE_ID: [None]}
        count = tf.ensure_shape(tf.numpy_function(self.count, [epoch], tf.int64, stateful=False), [])

        def read(window):
            values = tf.numpy_function(self.read, [epoch, window], [types[key] for key in self.keys], stateful=False)
            return {key: tf.ensure_shape(value, shapes[key]) for key, value in zip(self.keys, values)}

        return light_map(tf.data.Dataset.range(tf.cast(first, tf.int64), count), read, parallel=True)


def _aligned(size: int) -> np.ndarray:
    """`size` uninitialised bytes at a multiple of 64, as TensorFlow needs to take a numpy_function's result
    without copying it (numpy's large arrays start 16 bytes into a page: each window was copied once more,
    ~12 us an 80 KB example, measured)."""
    owner = np.empty(size + 64, np.uint8)
    skip = -owner.ctypes.data % 64
    return owner[skip:skip + size]


def _read_into(buffer: np.ndarray, path: str, begin: int, count: int) -> np.ndarray:
    """`count` bytes of a local file from `begin` (fewer at its end) read into `buffer` (pooled: a fresh
    one costs the kernel a page fault every 4 KB it writes; reading took 17 against 12 us an 80 KB example,
    measured), as a read-only view."""
    view, got = memoryview(buffer)[:count], 0
    with open(path, "rb", buffering=0) as handle:
        handle.seek(begin)
        while got < count and (step := handle.readinto(view[got:])):
            got += step
    data = buffer[:got]
    data.flags.writeable = False
    return data


def _bad(text: str) -> BadShard:
    return BadShard(f"{BAD_SHARD}: {text}. {shard_index.REBUILD}")


class _Buffers:
    """Read buffers shared by every ranged reader of the process: at most `kept` stay between reads (one per
    window read at once), so what stays is bounded whatever the datasets made (TensorFlow keeps a dataset's
    numpy_function alive after the dataset is gone). Thread-local buffers would not be reused: tf.data's
    threads get a new Python thread state for each call."""

    def __init__(self, kept: int):
        self.kept, self._free, self._lock = kept, [], threading.Lock()

    def take(self, count: int) -> np.ndarray:
        """The smallest free buffer of at least `count` bytes, or a new one."""
        with self._lock:
            fitting = [k for k, buffer in enumerate(self._free) if len(buffer) >= count]
            if fitting:
                return self._free.pop(min(fitting, key=lambda k: len(self._free[k])))
        return np.empty(count, np.uint8)

    def give(self, buffer: np.ndarray) -> None:
        """Back to the pool; beyond `kept` buffers, the smallest goes."""
        with self._lock:
            self._free.append(buffer)
            if len(self._free) > self.kept:
                self._free.pop(min(range(len(self._free)), key=lambda k: len(self._free[k])))


_BUFFERS = _Buffers(4)
