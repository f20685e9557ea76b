"""What damage costs a reader: ReadConfig(on_damage="stop") stops at the first damaged file, naming it;
on_damage="skip" leaves out exactly the records that fail their checks and reads everything else.

A record is lost when its bytes fail their CRCs (its length's, its data's, or the CRC its index recorded
at build time), when the file ends before it (a cut), or when its shard is missing; a shard replaced by
another (same size or not) fails every record's recorded CRC. An index is never a reason to lose a
record: a damaged, stale or missing index of a shard is derived again in memory from the shard's own
framing (shard_index.rows). Only when a shard and its index are both damaged are records trusted on
their own CRCs alone, and a break in the framing then loses the records after it.

`split_damage(builder, split)` scans a split once per builder: every shard is checked whole (the check
every reader makes anyway: shard_index.problem); only damaged ones are walked record by record
(`salvage`). Readers take its `intact` mask as a `keep` over the sampler's order, so the examples read
are the intact build's, in its order, minus the lost ones. The mapped readers gather the salvaged
records from the shard's mapping; streamed readers and caches of streamed shards take them from memory
(`records`), a damaged shard's intact records read once.
"""
from __future__ import annotations

import dataclasses
import struct
import warnings

import numpy as np

from dancedata import fs, shard_index
from dancedata.errors import ShardError
from dancedata.read_config import ON_DAMAGE  # noqa: F401  (the policies, named where ReadConfig checks them)


@dataclasses.dataclass
class Salvage:
    """What is left of one damaged shard of `expected` records: `data` its bytes (None when missing),
    `table` an index row per record (shard_index.COLUMNS; framing only for shards built without an
    index; a lost record's row points at an intact record's, never read for it), `intact` which records
    passed every check, `problems` [(record or None, byte offset or None, cause)]: each lost record, and
    damage that cost none (an index derived again, bytes appended after the last record)."""

    path: str
    data: np.ndarray | None
    table: np.ndarray
    intact: np.ndarray
    problems: list

    def records(self) -> list:
        """Each record's serialized Example, b"" for a lost one."""
        data = self.data
        return [data[int(at) + 12:int(at) + 12 + int(n)].tobytes() if ok else b""
                for (at, n), ok in zip(self.table[:, :2], self.intact)]


def _short(error: ShardError) -> str:
    return str(error).split(". Rebuild it")[0]


def _bytes(path: str) -> np.ndarray:
    """A shard's bytes: mapped when local (the page cache's copy), else read whole."""
    if not fs.is_remote(path):
        import mmap

        with open(path, "rb") as handle:
            if not fs.size(path):
                return np.zeros(0, np.uint8)
            return np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    with fs.open_file(path, "rb") as handle:
        return np.frombuffer(handle.read(), np.uint8)


def _checked(data: np.ndarray, table: np.ndarray, built: int) -> tuple[np.ndarray, list]:
    """(intact [records], problems) of a shard's bytes against the index that was built with it: each
    record where the index places it, its framing and both CRCs, which must be the CRC the index recorded."""
    value, size = shard_index._crc32c(), len(data)
    intact, problems = np.zeros(len(table), bool), []
    for i, (at, n, stored) in enumerate(zip(table[:, 0].tolist(), table[:, 1].tolist(), table[:, 2].tolist())):
        if at + n + 16 > size:
            problems.append((i, at, "the file ends before this record's end: truncated"))
            continue
        head, tail = data[at:at + 12].tobytes(), data[at + 12 + n:at + 16 + n].tobytes()
        if (struct.unpack("<Q", head[:8])[0] != n or shard_index._mask(value(head[:8])) != struct.unpack("<I", head[8:])[0]
                or struct.unpack("<I", tail)[0] != stored or shard_index._mask(value(data[at + 12:at + 12 + n].tobytes())) != stored):
            problems.append((i, at, "fails its checksum (corrupted, or another shard's bytes)"))
            continue
        intact[i] = True
    if size > built:
        problems.append((None, built, f"{size - built} bytes after its last record (appended): ignored"))
    return intact, problems


def _walked(data: np.ndarray, expected: int, manifest: dict | None, path: str, why: str) -> tuple:
    """(table, intact, problems) of a shard read by walking its own framing, for want of a usable index
    (`why`): its records numbered as they come, each trusted on its CRCs (and with `manifest`, on being
    an example of this build); the walk stops where a length fails or the file is cut."""
    frames = manifest["num_frames"] if manifest else 0
    width = shard_index.feature_bytes(manifest) if manifest else 0
    found, sha256, walk_problems, numbers = shard_index.rows(memoryview(data), frames, width, path, skip=True,
                                                        fields=manifest is not None)
    columns = len(shard_index.COLUMNS) if manifest else 3
    table, intact = np.zeros((expected, columns), np.uint64), np.zeros(expected, bool)
    problems = [(None, None, f"{why}: its records were found from the shard's own framing")]
    causes = {number: (at, cause) for number, at, cause in walk_problems}
    for number, row in zip(numbers, found):
        if number < expected:
            table[number], intact[number] = row, True
    for number in range(expected):
        if not intact[number]:
            at, cause = causes.get(number, (None, "lies after a break in the shard's framing (a cut or a damaged length)"))
            problems.append((number, at, cause))
    extra = max(numbers, default=-1) + 1 - expected
    if extra > 0:
        problems.append((None, None, f"{extra} records beyond the {expected} the manifest lists: ignored"))
    return table, intact, problems, sha256


def salvage(folder: str, manifest: dict, shard: dict) -> Salvage:
    """What of one shard (a manifest entry) can be read, each record checked on its own."""
    path, expected = fs.join(folder, shard["file"]), int(shard["num_examples"])
    table = why = None
    if "index" in shard:
        try:
            header, table = shard_index.load(folder, shard)
        except ShardError as error:
            why = _short(error)
    if not fs.exists(path):
        offsets = table[:, 0] if table is not None else [None] * expected
        return Salvage(path, None, np.zeros((expected, len(shard_index.COLUMNS)), np.uint64), np.zeros(expected, bool),
                       [(i, None if at is None else int(at), "its shard is missing") for i, at in enumerate(offsets)])
    data = _bytes(path)
    if table is not None:
        intact, problems = _checked(data, table, int(header["shard_bytes"]))
        table = table.copy()
    elif "index" not in shard:  # built before schema 4: its records' own CRCs are all there is to check
        table, intact, problems, _ = _walked(data, expected, None, path, "it has no index (built before schema 4)")
    else:
        table, intact, problems, sha256 = _walked(data, expected, manifest, path, why)
        if sha256 == shard["sha256"] and intact.all():
            problems = [(None, None, f"{why}: derived again in memory from the intact shard, no record lost "
                                     "(`python -m dancedata.inspect FOLDER --repair` writes it)")]
        else:  # which of its records are this build's, no index and no sha256 can say
            intact[:] = False
            problems = [(i, None, f"{why}, and the shard does not match its sha256: its records cannot be told "
                                  "from another shard's") for i in range(expected)]
    if intact.any():
        table[~intact] = table[np.flatnonzero(intact)[0]]
    return Salvage(path, data if intact.any() else None, table, intact, problems)


@dataclasses.dataclass
class SplitDamage:
    """The damage found in one split: `intact` per example in manifest order (None: nothing lost),
    `salvaged` {shard position: Salvage} for each damaged shard, `problems` as damage() lists them."""

    split: str
    examples: int
    intact: np.ndarray | None
    salvaged: dict
    problems: list

    @property
    def lost(self) -> int:
        return 0 if self.intact is None else int(self.examples - self.intact.sum())

    def keep(self, kept: np.ndarray | None) -> np.ndarray | None:
        """A reader's keep mask (a holdout's, or None) with the lost examples left out too."""
        if self.intact is None:
            return kept
        return self.intact if kept is None else np.asarray(kept, bool) & self.intact


def split_damage(folder: str, manifest: dict, split: str) -> SplitDamage:
    """Every shard of `split` checked (shard_index.problem, or every record's CRCs for builds before
    schema 4), the damaged ones salvaged record by record."""
    shards = manifest["splits"][split]["shards"]
    counts = [int(shard["num_examples"]) for shard in shards]
    salvaged, problems = {}, []
    for position, shard in enumerate(shards):
        path = fs.join(folder, shard["file"])
        if "index" in shard and shard_index.problem(folder, manifest, shard) is None:
            continue
        if "index" not in shard and fs.exists(path) and not _stream_problem(path, counts[position]):
            continue
        found = salvaged[position] = salvage(folder, manifest, shard)
        problems += [{"split": split, "file": path, "record": record, "offset": offset, "cause": cause}
                     for record, offset, cause in found.problems]
    intact = None
    if any(not found.intact.all() for found in salvaged.values()):
        intact = np.ones(sum(counts), bool)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        for position, found in salvaged.items():
            intact[starts[position]:starts[position + 1]] = found.intact
    return SplitDamage(split, sum(counts), intact, salvaged, problems)


def _stream_problem(path: str, expected: int) -> bool:
    """Whether a shard without an index fails TFRecordDataset's read of every record, or its count."""
    import tensorflow as tf

    from dancedata import record_files

    try:
        for _ in record_files.checked_records(path, expected):
            pass
    except tf.errors.OpError:
        return True
    return False


def warn(damage: SplitDamage, said: set, stacklevel: int = 4) -> None:
    """One warning per damaged file (once per `said`, a builder's): how many records it cost and why."""
    by_file: dict = {}
    for problem in damage.problems:
        by_file.setdefault(problem["file"], []).append(problem)
    for path, found in by_file.items():
        lost = [p for p in found if p["record"] is not None]
        first = (lost or found)[0]
        where = f"record {first['record']}" + (f" (byte {first['offset']})" if first["offset"] is not None else "") \
            if first["record"] is not None else ""
        cause = f"{where}: {first['cause']}" if where else first["cause"]
        message = (f"damaged shard {path}: {len(lost)} of its records left out" if lost else
                   f"damaged shard {path}: no record lost") + f" ({cause}" + \
            (f"; and {len(found) - 1} more" if len(found) > 1 else "") + ")"
        if message not in said:
            said.add(message)
            warnings.warn(message, stacklevel=stacklevel)
    if damage.intact is not None and not damage.intact.any():
        raise ShardError(f"every record of split {damage.split} is damaged; rebuild with the same build command")
