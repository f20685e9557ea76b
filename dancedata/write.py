"""What a build keeps on disk, and how a shard is committed.

    OUT/train-00000-of-00004.tfrecord ...   finished shards (final names appear only when complete)
    OUT/train-00000-of-00004.tfrecord.rows  the same examples' training fields, fixed-length (schema.row_layout)
    OUT/manifest.json                       written last, when every shard is committed
    OUT/build_info.json                     timings and host: the only file that differs between runs
    OUT/.build/plan.json                    the build's identity and input list (refuse-to-mix, --update)
    OUT/.build/<shard>.json                 one record per committed shard: its unit key, sha256, videos
    OUT/.build/reuse/                       shards of an earlier plan whose features an update reuses

A shard is written under `<name>.incomplete`, flushed to disk, renamed, and only then recorded; a
shard counts as built only when its record's key matches the plan and its bytes match the record's
sha256. Whatever a kill leaves half-done is therefore redone, never taken as complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import re

from dancedata import fs, manifest, schema, tfds_metadata
from dancedata.errors import EnvironmentFailure, InputError
from dancedata.plan import shard_name  # noqa: F401  (re-exported: the name every reader of shards knows)

STATE_DIR = ".build"
PARTIAL = ".incomplete"
PLAN_FILE = "plan.json"
REUSE_DIR = "reuse"
BUILD_INFO = "build_info.json"
# What a finished build writes beside its shards (all rewritten by every finalize).
FOLDER_FILES = (manifest.FILENAME, BUILD_INFO, manifest.STATISTICS, *tfds_metadata.FILES)
SHARD_NAME = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.rows)?$")  # a shard or its row file
TEMPORARY = re.compile(r"^(.+)\.\d+\.\d+\.incomplete$")  # fs.write_text's temporary names


sha256 = fs.sha256


def write_json(path: str, document: dict) -> None:
    """Atomically (temporary name, fsync, rename)."""
    folder, name = path.rsplit("/", 1) if fs.is_remote(path) else os.path.split(path)
    manifest.write(folder, document, name)


def read_json(path: str):
    import tensorflow as tf

    try:
        with fs.open_file(path) as handle:
            return json.load(handle)
    except (OSError, ValueError, tf.errors.OpError):
        return None


@contextlib.contextmanager
def output_errors(path: str):
    """A failure to write output (disk full, read-only, permission denied) is the machine's: one line
    that says what to do, not a skipped video and not a traceback."""
    import tensorflow as tf

    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        text = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
        raise EnvironmentFailure(
            f"cannot write {path}: {text}. Committed shards are kept; free space or fix the folder, "
            "then run the same command to resume"
        ) from None


class ShardWriter:
    """One shard: serialized examples go to `<name>.incomplete`, and with a row layout (schema.row_layout)
    their rows to `<name>.rows.incomplete`; commit() makes both final."""

    def __init__(self, out: str, name: str, layout: dict | None = None):
        import tensorflow as tf

        self.out, self.name, self.layout = out, name, layout
        self.path = fs.join(out, name)
        self._partial = self.path + PARTIAL
        self._rows_partial = self.path + schema.ROWS_SUFFIX + PARTIAL
        self._rows = None
        with output_errors(self._partial):
            self._writer = tf.io.TFRecordWriter(self._partial)
        if layout is not None:
            with output_errors(self._rows_partial):
                self._rows = fs.open_file(self._rows_partial, "wb")
        self.num_examples = 0

    def write(self, serialized: bytes) -> None:
        with output_errors(self._partial):
            self._writer.write(serialized)
        if self._rows is not None:
            with output_errors(self._rows_partial):
                self._rows.write(schema.to_row(serialized, self.layout))
        self.num_examples += 1

    def commit(self, record: dict) -> dict:
        """Closes, flushes to disk, renames to the final names (the row file first: a final shard name
        means both are complete), then writes the record. Returns the record with `file`,
        `num_examples`, `sha256`, `bytes` and, with rows, `rows` ({file, sha256, bytes}) added."""
        if self._rows is not None:
            with output_errors(self._rows_partial):
                self._rows.close()
                fs.sync(self._rows_partial)
                rows = {"file": self.name + schema.ROWS_SUFFIX, "sha256": sha256(self._rows_partial),
                        "bytes": fs.size(self._rows_partial)}
                fs.replace(self._rows_partial, self.path + schema.ROWS_SUFFIX)
            record = {**record, "rows": rows}
        with output_errors(self._partial):
            self._writer.close()
            fs.sync(self._partial)
            record = {**record, "file": self.name, "num_examples": self.num_examples, "sha256": sha256(self._partial),
                      "bytes": fs.size(self._partial)}
            fs.replace(self._partial, self.path)
            write_json(fs.join(self.out, STATE_DIR, self.name + ".json"), record)
        return record

    def abort(self) -> None:
        """Leaves no partial file behind (a later run would delete them anyway)."""
        for handle, path in ((self._writer, self._partial), (self._rows, self._rows_partial)):
            with contextlib.suppress(Exception):
                handle.close()
            with contextlib.suppress(Exception):
                fs.remove(path)


class OutputFolder:
    """The state an earlier build left in `out`, and the only code that deletes files there."""

    def __init__(self, out: str):
        fs.check(out)
        if fs.exists(out) and not fs.isdir(out):
            raise InputError(f"output {out} is a file, not a folder; pass --out with a folder path")
        self.out = out
        self.state = fs.join(out, STATE_DIR)
        self.reuse = fs.join(self.state, REUSE_DIR)
        self.plan = read_json(fs.join(self.state, PLAN_FILE))
        self.manifest = read_json(fs.join(out, manifest.FILENAME))

    def current_plan(self) -> dict | None:
        """The plan file as it is now (another machine of a partitioned build may have written it)."""
        return read_json(fs.join(self.state, PLAN_FILE))

    def is_empty(self) -> bool:
        return not [n for n in fs.listdir(self.out) if not n.startswith(".")]

    def ours(self) -> set:
        """Names in `out` that a dancedata build wrote (per its plan and manifest), and may delete; a
        shard's row file goes with it."""
        names = set(FOLDER_FILES)
        if self.plan:
            names.update(self.plan.get("files", []))
        if self.manifest:
            names.update(s["file"] for split in self.manifest.get("splits", {}).values() for s in split.get("shards", []))
        return names

    def records(self) -> dict:
        """{shard name: record} of the committed shards of the current plan generation."""
        found = {}
        for name in sorted(fs.listdir(self.state)):
            if name.endswith(".tfrecord.json"):
                record = read_json(fs.join(self.state, name))
                if record:
                    found[name[: -len(".json")]] = record
        return found

    def record(self, name: str) -> dict | None:
        """The committed record of one shard, or None (one file read, not the whole state folder)."""
        return read_json(fs.join(self.state, name + ".json"))

    def reuse_records(self) -> list:
        """(path of an earlier shard, its record) for the shards kept for an update."""
        pairs = []
        for name in sorted(fs.listdir(self.reuse)):
            if name.endswith(".json"):
                record = read_json(fs.join(self.reuse, name))
                shard = fs.join(self.reuse, name[: -len(".json")] + ".tfrecord")
                if record and fs.exists(shard):
                    pairs.append((shard, record))
        return pairs

    def is_built(self, name: str, key: str, record: dict | None, rows: bool = True) -> bool:
        """A shard is built when its record is for this unit and its bytes (and its row file's) are the
        recorded ones. rows=False: whether its examples are intact, whatever became of its row file."""
        def intact(path, entry):
            return fs.exists(path) and fs.size(path) == entry.get("bytes") and sha256(path) == entry.get("sha256")

        if record is None or record.get("key") != key or not intact(fs.join(self.out, name), record):
            return False
        return not rows or "rows" not in record or intact(fs.join(self.out, record["rows"]["file"]), record["rows"])

    def keep_for_reuse(self, name: str, record: dict) -> None:
        """Moves a committed shard of an earlier plan aside, named by its key, so an update can read
        its examples while the new plan writes shards that may have the same name. Another part of a
        partitioned build may have moved it already."""
        import tensorflow as tf

        fs.makedirs(self.reuse)
        base = fs.join(self.reuse, record["key"][:32])
        with contextlib.suppress(FileNotFoundError, tf.errors.NotFoundError):
            fs.replace(fs.join(self.out, name), base + ".tfrecord")
            fs.replace(fs.join(self.state, name + ".json"), base + ".json")
        fs.remove(fs.join(self.out, name + schema.ROWS_SUFFIX))  # rows are written again from the examples

    def forget(self, name: str) -> None:
        """Drops a shard (its row file and its record) that no plan needs any more."""
        for path in (fs.join(self.out, name), fs.join(self.out, name + schema.ROWS_SUFFIX), fs.join(self.state, name + ".json")):
            fs.remove(path)

    def remove_partials(self, names: set | None = None) -> None:
        """`.incomplete` files are never finished work: a killed build left them. With `names`, only
        those shards' (a part of a partitioned build leaves the other parts' work in progress alone)."""
        for name in fs.listdir(self.out):
            if not name.endswith(PARTIAL):
                continue
            shard = name[: -len(PARTIAL)]
            if names is not None:
                ours = shard.removesuffix(schema.ROWS_SUFFIX) in names
            else:
                temporary = TEMPORARY.match(name)
                ours = (SHARD_NAME.match(shard) or shard.removesuffix(schema.ROWS_SUFFIX) in self.ours()
                        or (temporary and temporary.group(1) in FOLDER_FILES))
            if ours:
                fs.remove(fs.join(self.out, name))

    def clear(self) -> None:
        """--overwrite: deletes what earlier builds wrote here, and nothing else."""
        for name in self.ours():
            fs.remove(fs.join(self.out, name))
            fs.remove(fs.join(self.out, name + schema.ROWS_SUFFIX))
        self.remove_partials()
        fs.rmtree(self.state)
        self.plan = self.manifest = None

    def start(self, plan_document: dict) -> None:
        """Creates the folders and records the plan before any shard is written."""
        fs.makedirs(self.state)
        write_json(fs.join(self.state, PLAN_FILE), plan_document)
        self.plan = plan_document

    def finish(self) -> None:
        fs.rmtree(self.reuse)
