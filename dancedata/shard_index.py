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
import sys
import threading

import numpy as np

from dancedata import fs, schema
from dancedata.errors import ShardError

SUFFIX = ".index"  # train-00000-of-00004.tfrecord -> train-00000-of-00004.tfrecord.index
MAGIC = b"DDINDEX1"
COLUMNS = ("offset", "length", "crc", "features", "mask", "label", "label_length", "sequence", "sequence_length")
_MAX_HEADER = 1 << 16
_MASK_DELTA = 0xA282EAD8
REBUILD = "Rebuild it (the same build command redoes only damaged shards), or read on without its damaged records (on_damage='skip' / --on-damage skip)"


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
        if at >= len(data):
            raise ValueError("a varint runs past the record")
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
    an Example uses (varint, 64-bit, length-delimited, 32-bit). Records travel between people: every
    length is checked against its message before it is handed on."""
    at = start
    while at < end:
        tag, at = varint(data, at)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            _, after = varint(data, at)
        elif kind == 2:
            length, at = varint(data, at)
            after = at + length
        elif kind in (1, 5):
            after = at + (8 if kind == 1 else 4)
        else:
            raise ValueError(f"unexpected wire type {kind}")
        if after > end:
            raise ValueError("field runs past its message")
        yield number, kind, at, after
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


ROW_BYTES = 4096  # a feature row holds as many whole frames as fit in this (at least one)


def feature_row(frames: int, feature_bytes: int) -> int:
    """The row a build's features are aligned to in its shards and gathered in by the mapped reader:
    the bytes of the most frames (a divisor of `frames`) that fit in ROW_BYTES, at least one frame's.
    A row of 4 KB copies at memory speed; a record pads what its other fields leave of a row (3.6 KB, +4.4 %,
    for AIST's [20, 2048] float16)."""
    frame = feature_bytes // frames
    return frame * max(d for d in range(1, frames + 1) if frames % d == 0 and (d == 1 or frame * d <= ROW_BYTES))


def on_rows(table: np.ndarray, frames: int, feature_bytes: int) -> bool:
    """Whether every record of an index table has its features at a multiple of the feature row in its shard."""
    row = feature_row(frames, feature_bytes)
    return bool(np.all((table[:, 0] + np.uint64(12) + table[:, 3]) % np.uint64(row) == 0))


def padding(needed: int, row: int) -> bytes:
    """Example field schema.PADDING_FIELD (its tag, length and zeros) of a length k >= 2 with k = needed
    mod row: put before a record's fields, it moves them k bytes on."""
    tag = bytes([schema.PADDING_FIELD << 3 | 2])
    for total in (needed, needed + row, needed + 2 * row):
        for size in range(1, 6):  # the length's varint bytes
            zeros = total - 1 - size
            if zeros >= 0 and len(_varint_bytes(zeros)) == size:
                return tag + _varint_bytes(zeros) + bytes(zeros)
    raise ValueError(f"no padding of {needed} mod {row} bytes")


def unpadded(data: bytes) -> bytes:
    """A serialized Example without the padding a writer put first in it, if any."""
    if not data or data[0] != schema.PADDING_FIELD << 3 | 2:
        return data
    length, at = varint(data, 1)
    return data[at + length:]


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


class RecordWriter:
    """Writes a TFRecord file and remembers where each record's training fields sit. Each record's
    features start at a multiple of feature_row(frames, feature_bytes) in the file: a record whose
    features would not is written with schema.PADDING_FIELD first (its value unchanged for every parser)."""

    def __init__(self, handle, frames: int, feature_bytes: int):
        self._handle, self.frames, self.feature_bytes = handle, frames, feature_bytes
        self.row = feature_row(frames, feature_bytes)
        self._rows: list = []
        self._offset = 0
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        data = unpadded(data)  # a record copied from a shard: padded for its old place
        where = locate(data)
        if needed := -(self._offset + 12 + where[schema.FEATURES][0]) % self.row:
            data = padding(needed, self.row) + data
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
        return _index_bytes(self._rows, shard, self.sha256, self._offset, unit_key)


def _index_bytes(rows: list, shard: str, sha256: str, size: int, unit_key: str) -> bytes:
    header = json.dumps({"version": 1, "shard": shard, "shard_sha256": sha256, "shard_bytes": size,
                         "unit_key": unit_key, "records": len(rows), "columns": list(COLUMNS)},
                        sort_keys=True).encode("utf-8")
    table = np.asarray(rows, "<u8").reshape(len(rows), len(COLUMNS))
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
        with fs.open_file(path, "rb") as handle:  # no more than the file holds: read(n) sets n bytes aside
            raw = handle.read(min(int(shard["index"]["bytes"]) + 1, fs.size(path)))
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
    _layout(size, table, path, frames, feature_bytes)
    offset, length, crc = table[:, 0], table[:, 1], table[:, 2]
    value = _crc32c()
    for i, (start, n, stored) in enumerate(zip(offset.tolist(), length.tolist(), crc.tolist())):
        head = view[start:start + 8]
        data = view[start + 12:start + 12 + n]
        if (struct.unpack("<Q", head)[0] != n
                or _mask(value(bytes(head))) != struct.unpack("<I", view[start + 8:start + 12])[0]
                or _mask(value(bytes(data))) != stored
                or struct.unpack("<I", view[start + 12 + n:start + 16 + n])[0] != stored):
            raise ShardError(f"shard {path} is corrupted: record {i} of {len(table)} fails its checksum. {REBUILD}")


def _layout(size: int, table: np.ndarray, path: str, frames: int, feature_bytes: int) -> None:
    """Raises ShardError unless the index's records tile a file of `size` bytes and every field it
    places lies inside its record."""
    offset, length = table[:, 0], table[:, 1]
    if np.any(offset > size) or np.any(length > size) or np.any(table[:, 3:] > size):  # before a sum could wrap around
        raise ShardError(f"index of {path} does not describe the file's records. {REBUILD}")
    ends = offset + length + 16
    if len(table) and (offset[0] != 0 or ends[-1] != size or np.any(offset[1:] != ends[:-1])):
        raise ShardError(f"index of {path} does not describe the file's records. {REBUILD}")
    if not len(table) and size:
        raise ShardError(f"shard {path} holds bytes but its index lists no record. {REBUILD}")
    fields_end = np.maximum.reduce([table[:, 3] + feature_bytes, table[:, 4] + frames, table[:, 5] + table[:, 6],
                                    table[:, 7] + table[:, 8]]) if len(table) else length
    if np.any(fields_end > length) or np.any(table[:, 6] == 0) or np.any(table[:, 6] > 10):
        raise ShardError(f"index of {path} places a field outside its record. {REBUILD}")


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
            # Python >= 3.13: no duplicate descriptor per mapping (read._mappable_files counts on it: a split
            # of many shards maps them all without nearing the open-file limit).
            extra = {"trackfd": False} if sys.version_info >= (3, 13) else {}
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ, **extra)
            view = memoryview(mapping)
            try:
                check(view, header, table, path, frames, width)
            finally:
                view.release()
            for old in [k for k in _MAPPED if k[0] == path]:  # an older version of the file: drop it
                del _MAPPED[old]
            array = _MAPPED[key] = np.frombuffer(mapping, np.uint8)
            return array


def checked_version(array: np.ndarray) -> tuple | None:
    """(device, inode, size, mtime in ns) of the file version whose checked mapping mapped() returned as
    `array`, or None once a newer version of that file has replaced it: another mapping of the file holds
    the bytes that were checked when its fstat gives that version."""
    with _CHECKING:
        return next((key[1:5] for key, value in _MAPPED.items() if value is array), None)


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


# ---------------------------------------------------------------------------------------------------
# Rebuilding an index from its shard. An index holds nothing its shard does not: the framing says where
# each record starts and what its CRC is, the Example's wire format where its fields sit. So a damaged,
# stale or missing index of an intact shard costs no example: it is derived again, byte for byte the one
# the build wrote when given the same unit key (the manifest's `index.key`, or the old index's header).


def rows(view, frames: int, feature_bytes: int, path: str, skip: bool = False, fields: bool = True):
    """(index rows, sha256) of a whole shard's bytes, walking its framing: each record's length and its
    CRC, then its data's CRC, then where its fields sit. Raises ShardError naming `path`, the record and
    its byte offset at the first one that fails (a cut, appended bytes, a flipped bit).

    skip=True (a reader that leaves out damaged records) returns (rows, sha256, problems, numbers) instead
    of raising: a record whose data fails is left out and the walk goes on past it (its length still
    holds); a length that fails its CRC, or a cut, ends the walk (nothing after it can be found).
    `problems` is [(record number, byte offset, cause)], `numbers` each row's record number.
    fields=False (a shard without an index: builds before schema 4) checks the framing only; a row is
    then (offset, length, crc)."""
    found, numbers, problems, at, size = [], [], [], 0, len(view)
    digest = hashlib.sha256()
    value = _crc32c()
    number = 0

    def fail(message, end=False):
        if not skip:
            raise ShardError(f"shard {path} {message}. {REBUILD}")
        problems.append((number, at, message))
        return end

    while at < size:
        where = f"record {number} (byte {at})"
        if size - at < 16:
            fail(f"ends inside {where}: truncated, or bytes were appended")
            break
        head = bytes(view[at:at + 8])
        (length,) = struct.unpack("<Q", head)
        if _mask(value(head)) != struct.unpack("<I", view[at + 8:at + 12])[0]:
            fail(f"is corrupted: {where} fails its length's checksum")
            break
        if length > size - at - 16:
            fail(f"ends inside {where}: truncated")
            break
        data = bytes(view[at + 12:at + 12 + length])
        crc = _mask(value(data))
        digest.update(view[at:at + 16 + length])
        row = None
        if crc != struct.unpack("<I", view[at + 12 + length:at + 16 + length])[0]:
            fail(f"is corrupted: {where} fails its checksum")
        elif not fields:
            row = (at, length, crc)
        else:
            try:
                place = locate(data)
                features, mask, label, sequence = (place[k] for k in (schema.FEATURES, schema.MASK, schema.LABEL,
                                                                      schema.SEQUENCE_ID))
                if features[1] - features[0] != feature_bytes or mask[1] - mask[0] != frames \
                        or not 0 < label[1] - label[0] <= 10:
                    raise ValueError("its features, mask or label have another size than this build's")
                row = (at, length, crc, features[0], mask[0], label[0], label[1] - label[0], sequence[0],
                       sequence[1] - sequence[0])
            except ValueError as error:
                fail(f"is damaged: {where} is not an example of this build ({error})")
        if row is not None:
            found.append(row)
            numbers.append(number)
        at += 16 + length
        number += 1
    return (found, digest.hexdigest(), problems, numbers) if skip else (found, digest.hexdigest())


def rebuild(shard_path: str, frames: int, feature_bytes: int, unit_key: str = "", data=None) -> bytes:
    """The index of the shard at `shard_path` (or of its bytes `data`), derived from the shard alone; with
    the unit key the build bound it to, byte for byte the index the build wrote. Raises ShardError naming
    the shard when its own bytes are damaged (an index is only ever rebuilt from an intact shard)."""
    if data is None:
        with fs.open_file(shard_path, "rb") as handle:
            data = handle.read()
    found, sha256 = rows(memoryview(data), frames, feature_bytes, shard_path)
    return _index_bytes(found, shard_path.replace("\\", "/").rsplit("/", 1)[-1], sha256, len(data), unit_key)


def recorded_key(raw: bytes) -> str | None:
    """The unit key in an index's header, if that much of it is still readable (a flipped byte in its
    table leaves the header whole)."""
    try:
        if raw[:len(MAGIC)] != MAGIC:
            return None
        (length,) = struct.unpack_from("<I", raw, len(MAGIC))
        header = json.loads(raw[len(MAGIC) + 4:len(MAGIC) + 4 + min(length, _MAX_HEADER)].decode("utf-8"))
        key = header.get("unit_key") if isinstance(header, dict) else None
        return key if isinstance(key, str) and len(key) < 256 else None
    except (ValueError, struct.error):
        return None


def repair(folder: str, manifest: dict, shard: dict, unit_key: str | None = None) -> bool:
    """Rebuilds a shard's index when it is missing, damaged or stale and the shard itself is the one the
    manifest lists (its sha256); writes it atomically. False when the index was fine. Raises ShardError
    when the shard is damaged, or when no known unit key gives back the recorded index's bytes."""
    path, index = fs.join(folder, shard["file"]), index_path(folder, shard)
    if "index" not in shard:
        return False
    try:
        load(folder, shard)
        return False
    except ShardError:
        pass
    if not fs.exists(path):
        raise ShardError(f"shard {path} is missing: its index cannot be rebuilt without it. {REBUILD}")
    with fs.open_file(path, "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise ShardError(f"shard {path} does not match its sha256 in the manifest: it is damaged, so its index is not "
                         f"rebuilt. {REBUILD}")
    keys = [unit_key, shard["index"].get("key")]
    if fs.exists(index):
        with fs.open_file(index, "rb") as handle:
            keys.append(recorded_key(handle.read(_MAX_HEADER + 16)))
    frames = manifest["num_frames"]
    for key in dict.fromkeys(k for k in keys if k is not None):
        raw = rebuild(path, frames, feature_bytes(manifest), key, data)
        if hashlib.sha256(raw).hexdigest() == shard["index"]["sha256"]:
            write_atomically(index, raw)
            return True
    raise ShardError(f"index {index} cannot be rebuilt as the build wrote it: the unit key it was bound to is not "
                     "recorded here. Run the build command again (it rebuilds indexes from the shards, decoding nothing)")


def write_atomically(path: str, raw: bytes) -> None:
    folder, name = path.rsplit("/", 1)
    partial = fs.join(folder, partial_name(name))
    with fs.open_file(partial, "wb") as handle:
        handle.write(raw)
    fs.sync(partial)
    fs.replace(partial, path)


def framing_problem(path: str, header: dict, table: np.ndarray, frames: int, width: int) -> str | None:
    """What the cheap check finds in a shard (inspect without --verify): its size, that its index's
    records tile it, and each record's 16 bytes of framing (its length, the length's CRC, and the data's
    stored CRC, which must be the one the index recorded). Finds a cut, a swapped or replaced shard and
    any damage to the framing, reading a few bytes a record; a flipped byte inside a record's data takes
    --verify (or the reader's own check) to find."""
    size = fs.size(path)
    if problem := size_problem(path, size, header["shard_bytes"]):
        return problem
    try:
        _layout(size, table, path, frames, width)
    except ShardError as error:
        return str(error).split(". Rebuild it")[0]
    value = _crc32c()
    with fs.open_file(path, "rb") as handle:
        for i, (start, n, stored) in enumerate(zip(table[:, 0].tolist(), table[:, 1].tolist(), table[:, 2].tolist())):
            handle.seek(start)
            head = handle.read(12)
            handle.seek(start + 12 + n)
            tail = handle.read(4)
            if (len(head) < 12 or len(tail) < 4 or struct.unpack("<Q", head[:8])[0] != n
                    or _mask(value(head[:8])) != struct.unpack("<I", head[8:])[0] or struct.unpack("<I", tail)[0] != stored):
                return (f"record {i} of {len(table)} (byte {start}) is not the one its index lists: the shard is damaged, "
                        "or another shard of the same size took its place")
    return None
