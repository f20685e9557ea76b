"""Schema 4's shard format: TFRecord files, each with a small index beside it, checked before use.

The TFRecords are the one copy of every example: TFDS, plain tf.data and the training reader all read
them. `<shard>.index` lets the training reader gather an example's training fields straight from the
memory-mapped TFRecord (one copy per example, no protobuf parsing), as NVIDIA DALI's TFRecord readers
do with their index files. Per record it holds:

    offset    where the record starts in the shard (its uint64 length, then the length's crc)
    length    the serialized Example's length; the data starts at offset + 12
    crc       the record's masked crc32c as the writer stored it (binds the index to these bytes)
    features  where the features' raw bytes sit inside the Example (deterministic serialization
    mask      fixes these for given content; the writer finds them by walking the wire format)
    label, label_length          the label's varint
    sequence, sequence_length    the sequence id's bytes (the hold-out rule hashes them)

Layout: MAGIC, uint32 header length, a JSON header (the shard's name, sha256 and size, the work
unit's key, the record count), the records as uint64 little-endian columns, and a masked crc32c of
everything before it. The manifest records each index's sha256 too.

`check` verifies a shard against its index and the manifest: the index's sha256, its header, that the
records tile the file exactly, and every record's two CRCs (the TFRecord's own), which must also
equal the CRCs the index recorded at build time. So every byte of the shard is covered: a flipped
bit, a cut, a stale or swapped file is found, and the shard is named. It costs one pass at memory
speed (crc32c in hardware) and runs once per process for each version (inode, size, mtime) of a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import threading

import numpy as np

from dancedata import fs, schema
from dancedata.errors import ShardError

SUFFIX = ".index"  # train-00000-of-00004.tfrecord -> train-00000-of-00004.tfrecord.index
MAGIC = b"DDINDEX1"
COLUMNS = ("offset", "length", "crc", "features", "mask", "label", "label_length", "sequence", "sequence_length")
_MAX_HEADER = 1 << 16
_MASK_DELTA = 0xA282EAD8
REBUILD = "Rebuild it (the same build command redoes only damaged shards), or read on without it (skip_bad_shards / --skip-bad-shards)"


def _crc32c():
    import google_crc32c

    return google_crc32c.value


def masked_crc(data) -> int:
    """TFRecord's checksum: crc32c, rotated right by 15 bits, plus a constant (mod 2^32)."""
    crc = _crc32c()(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------
# Where the training fields sit inside a serialized Example (the protobuf wire format).


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes, start: int, end: int):
    """(field number, wire type, payload start, payload end) of a message's fields; only the wire types
    an Example uses (varint, 64-bit, length-delimited, 32-bit)."""
    at = start
    while at < end:
        tag, at = _varint(data, at)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            _, after = _varint(data, at)
            yield number, kind, at, after
        elif kind == 2:
            length, at = _varint(data, at)
            after = at + length
            yield number, kind, at, after
        elif kind in (1, 5):
            after = at + (8 if kind == 1 else 4)
            yield number, kind, at, after
        else:
            raise ValueError(f"unexpected wire type {kind}")
        if after > end:
            raise ValueError("field runs past its message")
        at = after


def locate(data: bytes, keys=(schema.FEATURES, schema.MASK, schema.LABEL, schema.SEQUENCE_ID)) -> dict:
    """{key: (start, end)} of the payload of each key's first value in a serialized Example: a
    BytesList's first bytes, or an Int64List's packed varints."""
    found = {}
    for number, kind, start, end in _fields(data, 0, len(data)):
        if number != 1 or kind != 2:  # Example.features
            continue
        for entry_number, entry_kind, entry_start, entry_end in _fields(data, start, end):
            if entry_number != 1 or entry_kind != 2:  # Features.feature (a map entry)
                continue
            key = value = None
            for field, field_kind, a, b in _fields(data, entry_start, entry_end):
                if field == 1 and field_kind == 2:
                    key = data[a:b].decode("utf-8")
                elif field == 2 and field_kind == 2:
                    value = (a, b)
            if key not in keys or value is None:
                continue
            for list_kind, list_wire, a, b in _fields(data, *value):  # Feature: bytes_list 1, float_list 2, int64_list 3
                for item, item_kind, c, d in _fields(data, a, b):
                    if item == 1 and item_kind == 2:  # a bytes value, or packed int64s
                        found[key] = (c, d)
                        break
    missing = [key for key in keys if key not in found]
    if missing:
        raise ValueError(f"the example has no {', '.join(missing)}")
    return found


# ---------------------------------------------------------------------------------------------------
# Writing: TFRecord framing (the bytes tf.io.TFRecordWriter writes) plus the index of what was written.


class RecordWriter:
    """Writes a TFRecord file and remembers where each record's training fields sit."""

    def __init__(self, handle, frames: int, feature_bytes: int):
        self._handle, self.frames, self.feature_bytes = handle, frames, feature_bytes
        self._rows: list = []
        self._offset = 0
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        where = locate(data)
        features, mask, label, sequence = (where[k] for k in (schema.FEATURES, schema.MASK, schema.LABEL, schema.SEQUENCE_ID))
        if features[1] - features[0] != self.feature_bytes or mask[1] - mask[0] != self.frames:
            raise ValueError(f"an example's features or mask have another size than the build's "
                             f"({features[1] - features[0]} and {mask[1] - mask[0]} bytes)")
        header = struct.pack("<Q", len(data))
        crc = masked_crc(data)
        framed = b"".join((header, struct.pack("<I", masked_crc(header)), data, struct.pack("<I", crc)))
        self._handle.write(framed)
        self._digest.update(framed)
        self._rows.append((self._offset, len(data), crc, features[0], mask[0], label[0], label[1] - label[0],
                           sequence[0], sequence[1] - sequence[0]))
        self._offset += len(framed)

    @property
    def num_records(self) -> int:
        return len(self._rows)

    @property
    def size(self) -> int:
        return self._offset

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def index(self, shard: str, unit_key: str) -> bytes:
        """The index file's bytes, bound to this shard (name, sha256, size) and its work unit's key."""
        header = json.dumps({"version": 1, "shard": shard, "shard_sha256": self.sha256, "shard_bytes": self._offset,
                             "unit_key": unit_key, "records": len(self._rows), "columns": list(COLUMNS)},
                            sort_keys=True).encode("utf-8")
        table = np.asarray(self._rows, "<u8").reshape(len(self._rows), len(COLUMNS))
        body = MAGIC + struct.pack("<I", len(header)) + header + table.tobytes()
        return body + struct.pack("<I", masked_crc(body))


def partial_name(name: str) -> str:
    """A temporary name no other writer uses (pid and a random token), so two writers of one shard,
    however they came to run, never delete or finish each other's files."""
    return f"{name}.{os.getpid()}.{secrets.token_hex(4)}.incomplete"


# ---------------------------------------------------------------------------------------------------
# Reading and checking.


def parse(raw: bytes, expected_records: int, path: str) -> tuple[dict, np.ndarray]:
    """(header, table [records, len(COLUMNS)] uint64) of an index file's bytes, each number checked
    before it sizes anything; raises ShardError naming `path`."""
    def bad(why):
        return ShardError(f"index {path} is damaged ({why}). {REBUILD}")

    if len(raw) < len(MAGIC) + 8 or raw[: len(MAGIC)] != MAGIC:
        raise bad("not a dancedata index")
    if masked_crc(raw[:-4]) != struct.unpack("<I", raw[-4:])[0]:
        raise bad("its checksum does not match")
    (length,) = struct.unpack_from("<I", raw, len(MAGIC))
    start = len(MAGIC) + 4
    if length > _MAX_HEADER or start + length > len(raw) - 4:
        raise bad("header length out of range")
    try:
        header = json.loads(raw[start:start + length].decode("utf-8"))
    except ValueError:
        raise bad("unreadable header") from None
    if not isinstance(header, dict) or header.get("version") != 1 or header.get("columns") != list(COLUMNS):
        raise bad("unknown version or columns")
    records = header.get("records")
    if records != expected_records or len(raw) - 4 - start - length != expected_records * len(COLUMNS) * 8:
        raise bad(f"it lists {records!r} records; the manifest says {expected_records}")
    table = np.frombuffer(raw, "<u8", expected_records * len(COLUMNS), start + length).reshape(-1, len(COLUMNS))
    return header, table


_CHECKED: dict = {}  # (shard path, device, inode, size, mtime, index sha256) -> True, for this process
_CHECKING = threading.Lock()


def index_path(folder: str, shard: dict) -> str:
    return fs.join(folder, shard["index"]["file"])


def load(folder: str, shard: dict) -> tuple[dict, np.ndarray]:
    """A shard's index as the manifest describes it (sha256 checked), parsed; raises ShardError."""
    path = index_path(folder, shard)
    try:
        with fs.open_file(path, "rb") as handle:
            raw = handle.read(int(shard["index"]["bytes"]) + 1)
    except Exception as error:  # noqa: BLE001 - OSError locally, tf.errors on object storage
        if not fs.exists(path):
            raise ShardError(f"shard {fs.join(folder, shard['file'])}: its index {path} is missing. {REBUILD}") from None
        raise ShardError(f"cannot read index {path}: {error}") from None
    if hashlib.sha256(raw).hexdigest() != shard["index"]["sha256"]:
        raise ShardError(f"index {path} does not match the manifest (damaged, or from another build). {REBUILD}")
    header, table = parse(raw, shard["num_examples"], path)
    if header.get("shard") != shard["file"] or header.get("shard_sha256") != shard["sha256"]:
        raise ShardError(f"index {path} belongs to another shard than the manifest's {shard['file']}. {REBUILD}")
    return header, table


def check(view, header: dict, table: np.ndarray, path: str, frames: int, feature_bytes: int) -> None:
    """Checks a whole shard's bytes (`view`: a memoryview or bytes of the file) against its index:
    the records tile the file, every record's two CRCs hold and equal the index's, and every field
    lies inside its record. Raises ShardError naming `path` and the first bad record."""
    size = len(view)
    if size != header["shard_bytes"]:
        raise ShardError(f"shard {path} holds {size} bytes, not the {header['shard_bytes']} it was built with: "
                         f"truncated or replaced. {REBUILD}")
    offset, length, crc = table[:, 0], table[:, 1], table[:, 2]
    ends = offset + length + 16
    if len(table) and (offset[0] != 0 or ends[-1] != size or np.any(offset[1:] != ends[:-1])):
        raise ShardError(f"index of {path} does not describe the file's records. {REBUILD}")
    if not len(table) and size:
        raise ShardError(f"shard {path} holds bytes but its index lists no record. {REBUILD}")
    fields_end = np.maximum.reduce([table[:, 3] + feature_bytes, table[:, 4] + frames, table[:, 5] + table[:, 6],
                                    table[:, 7] + table[:, 8]]) if len(table) else length
    if np.any(fields_end > length) or np.any(table[:, 6] == 0) or np.any(table[:, 6] > 10):
        raise ShardError(f"index of {path} places a field outside its record. {REBUILD}")
    value = _crc32c()
    for i, (start, n, stored) in enumerate(zip(offset.tolist(), length.tolist(), crc.tolist())):
        head = view[start:start + 8]
        data = view[start + 12:start + 12 + n]
        if (struct.unpack("<Q", head)[0] != n
                or _mask(value(bytes(head))) != struct.unpack("<I", view[start + 8:start + 12])[0]
                or _mask(value(bytes(data))) != stored
                or struct.unpack("<I", view[start + 12 + n:start + 16 + n])[0] != stored):
            raise ShardError(f"shard {path} is corrupted: record {i} of {len(table)} fails its checksum. {REBUILD}")


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def problem(folder: str, manifest: dict, shard: dict) -> str | None:
    """Why a shard of a schema-4 build cannot be used (missing, cut, damaged, stale, or its index so),
    checking every byte; None when it is whole. Local shards are mapped and checked once per process
    (the check the reader makes); others are read whole."""
    path = fs.join(folder, shard["file"])
    try:
        header, table = load(folder, shard)
        if not len(table):  # a shard whose every video failed to decode: an empty file
            _empty(path)
            return None
        if not fs.is_remote(path):
            _mapped(path, header, table, shard, manifest["num_frames"], feature_bytes(manifest))
            return None
        if not fs.exists(path):
            return "missing"
        with fs.open_file(path, "rb") as handle:
            data = handle.read(header["shard_bytes"] + 1)
        check(data, header, table, path, manifest["num_frames"], feature_bytes(manifest))
    except ShardError as error:
        return str(error).split(". Rebuild it")[0]
    return None


def feature_bytes(manifest: dict) -> int:
    return manifest["num_frames"] * manifest["feature_dim"] * np.dtype(manifest["feature_dtype"]).itemsize


# One mapping per file version for the whole process, shared by every dataset that reads it: TensorFlow
# keeps a dataset's numpy_function (and so its MappedShards) alive after the dataset is gone.
_MAPPED: dict = {}


def _mapped(path: str, header: dict, table: np.ndarray, shard: dict, frames: int, width: int) -> np.ndarray:
    """The shard mapped read-only as uint8 [bytes], checked once for this version of the file."""
    import mmap

    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise ShardError(f"shard {path} is missing. {REBUILD}") from None
    with handle:
        stat = os.fstat(handle.fileno())
        key = (path, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, shard["index"]["sha256"])
        with _CHECKING:
            if key in _MAPPED:
                return _MAPPED[key]
            if stat.st_size == 0:
                raise ShardError(f"shard {path} is empty: truncated. {REBUILD}")
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            view = memoryview(mapping)
            try:
                check(view, header, table, path, frames, width)
            finally:
                view.release()
            for old in [k for k in _MAPPED if k[0] == path]:  # an older version of the file: drop it
                del _MAPPED[old]
            array = _MAPPED[key] = np.frombuffer(mapping, np.uint8)
            return array


class MappedShards:
    """The shards `paths` (holding `counts` examples) of a schema-4 build, memory-mapped and checked,
    as one table: example i is record i - start of the shard whose examples start at `start`.

    Masks, labels and sequence ids are read into memory when the table is made; a batch of indices
    gathers its features with one copy each, from the page cache into the batch. Mapped pages count in
    the process's resident memory but belong to the page cache, which reclaims them. A shard truncated
    in place while mapped ends the process (SIGBUS), as for any mmap reader; builds never do that
    (they write new files and rename them over old ones)."""

    def __init__(self, folder: str, manifest: dict, shards: list):
        self.frames = manifest["num_frames"]
        self.dtype = np.dtype(manifest["feature_dtype"]).newbyteorder("<")
        self.shape = (self.frames, manifest["feature_dim"])
        self.width = feature_bytes(manifest)
        self.maps, starts, masks, labels, self._sequences = [], [], [], [], []
        classes = len(manifest["classes"])
        for shard in shards:
            path = fs.join(folder, shard["file"])
            header, table = load(folder, shard)
            mapped = _mapped(path, header, table, shard, self.frames, self.width) if len(table) else _empty(path)
            data = table[:, 0].astype(np.int64) + 12
            self.maps.append(mapped)
            starts.append(data + table[:, 3].astype(np.int64))
            masks.append(mapped[(data + table[:, 4].astype(np.int64))[:, None] + np.arange(self.frames)] if len(table)
                         else np.zeros((0, self.frames), np.uint8))
            labels.append(_labels(mapped, data + table[:, 5].astype(np.int64), table[:, 6]))
            self._sequences.append((mapped, data + table[:, 7].astype(np.int64), table[:, 8].astype(np.int64)))
            if np.any(masks[-1] > 1) or (len(labels[-1]) and (labels[-1].min() < 0 or labels[-1].max() >= classes)):
                raise ShardError(f"shard {path} holds a mask or label this build cannot have written. {REBUILD}")
        self.file = np.repeat(np.arange(len(shards), dtype=np.int32), [len(s) for s in starts])
        self.start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.masks = (np.concatenate(masks) if masks else np.zeros((0, self.frames), np.uint8)) != 0
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)

    def sequences(self) -> np.ndarray:
        """Every example's sequence id (bytes), in table order."""
        found = []
        for mapped, starts, lengths in self._sequences:
            found += [mapped[a:a + n].tobytes() for a, n in zip(starts.tolist(), lengths.tolist())]
        return np.asarray(found, dtype=object)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Features [len(indices), T, D] (stored dtype) of examples `indices`: one copy per example."""
        out = np.empty((len(indices), self.width), np.uint8)
        files, starts, maps, width = self.file[indices], self.start[indices], self.maps, self.width
        for k in range(len(indices)):
            start = starts[k]
            out[k] = maps[files[k]][start:start + width]
        return out.view(self.dtype).reshape(len(indices), *self.shape)

    def reading(self, holdout_buckets: int = schema.HOLDOUT_BUCKETS):
        """The table as record_files.Reading over example indices: sources are ranges, nothing to wait on."""
        import tensorflow as tf

        from dancedata.record_files import Reading

        masks, labels = tf.constant(self.masks), tf.constant(self.labels)
        stored = tf.dtypes.as_dtype(self.dtype.newbyteorder("="))
        shape = self.shape

        def source(path, start, count):
            return tf.data.Dataset.range(start, start + count)

        def decode(indices):
            features = tf.numpy_function(self.gather, [indices], stored, stateful=False)
            features.set_shape([None, *shape])
            return {schema.FEATURES: features, schema.MASK: tf.gather(masks, indices), schema.LABEL: tf.gather(labels, indices)}

        def select(indices, fraction, holdout, held_sequences=None):
            held = schema.held_out(self.sequences().astype(bytes), fraction, schema.holdout_table(held_sequences)).numpy()
            return select_indices(indices, held, holdout)

        return Reading(source, decode, select, parallel=False)


def _empty(path: str) -> np.ndarray:
    """The check of a shard of no example: an empty file, present."""
    if not fs.exists(path):
        raise ShardError(f"shard {path} is missing. {REBUILD}")
    if fs.size(path):
        raise ShardError(f"shard {path} holds {fs.size(path)} bytes, not the 0 it was built with: replaced. {REBUILD}")
    return np.zeros(0, np.uint8)


def _labels(mapped: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each label's varint, decoded (one byte for labels below 128: one gather)."""
    if not len(starts):
        return np.zeros(0, np.int64)
    if np.all(lengths == 1):
        return mapped[starts].astype(np.int64)
    values = []
    for start, length in zip(starts.tolist(), lengths.tolist()):
        value, end = _varint(mapped[start:start + length].tobytes(), 0)
        values.append(value if end == length else -1)
    return np.asarray(values, np.int64)


def select_indices(indices, held: np.ndarray, holdout: bool):
    """A dataset of example indices -> those i with held[i] == holdout, in order. Selected a batch at a
    time: a filter calls its predicate once per element, which costs more than gathering the element."""
    import tensorflow as tf

    held = tf.constant(np.asarray(held, bool))

    def wanted(batch):
        chosen = tf.gather(held, batch)
        return tf.boolean_mask(batch, chosen if holdout else tf.logical_not(chosen))

    return indices.batch(1024).map(wanted).unbatch()
