"""Schema 4's shard format: TFRecord files, each with a small index beside it, checked before use.

The TFRecords are the one copy of every example: TFDS, plain tf.data and the training reader all read
them. `<shard>.index` lets the training reader (mapped_shards.py) gather an example's training fields straight from the
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
    return _mask(_crc32c()(bytes(data)))


# ---------------------------------------------------------------------------------------------------
# Where the training fields sit inside a serialized Example (the protobuf wire format).


def varint(data: bytes, at: int) -> tuple[int, int]:
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
        tag, at = varint(data, at)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            _, after = varint(data, at)
            yield number, kind, at, after
        elif kind == 2:
            length, at = varint(data, at)
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
    if problem := size_problem(path, size, header["shard_bytes"]):
        raise ShardError(f"shard {path} {problem}. {REBUILD}")
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
            empty(path)
            return None
        if not fs.is_remote(path):
            mapped(path, header, table, shard, manifest["num_frames"], feature_bytes(manifest))
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


def mapped(path: str, header: dict, table: np.ndarray, shard: dict, frames: int, width: int) -> np.ndarray:
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


def empty(path: str) -> np.ndarray:
    """The check of a shard of no example: an empty file, present."""
    if not fs.exists(path):
        raise ShardError(f"shard {path} is missing. {REBUILD}")
    if problem := size_problem(path, fs.size(path), 0):
        raise ShardError(f"shard {path} {problem}. {REBUILD}")
    return np.zeros(0, np.uint8)


def size_problem(path: str, size: int, built: int) -> str | None:
    """"holds N bytes, not the M it was built with: ..." when a file's size is not the recorded one."""
    if size == built:
        return None
    return f"holds {size} bytes, not the {built} it was built with: {'truncated or replaced' if built else 'replaced'}"
