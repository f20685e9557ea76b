"""How a shard is written and committed (the folder it goes into is `build_folder`'s).

A shard is written under a temporary name of its own writer (`shard_index.partial_name`: no two
writers ever share one), flushed to disk; its index is written and renamed first, then the shard, and
only then is the shard's record written to `.build/`. A final shard name therefore means both files
are complete, and a shard counts as built only when its record matches (build_folder.is_built).
"""
from __future__ import annotations

import contextlib
import os

from dancedata import fs, manifest, shard_index
from dancedata.errors import EnvironmentFailure
from dancedata.plan import shard_name  # noqa: F401  (re-exported: the name every reader of shards knows)

STATE_DIR = ".build"
PARTIAL = ".incomplete"



def write_json(path: str, document: dict) -> None:
    """Atomically (temporary name, fsync, rename); a failure is the machine's (output_errors)."""
    folder, name = path.rsplit("/", 1) if fs.is_remote(path) else os.path.split(path)
    with output_errors(path):
        manifest.write(folder, document, name)


@contextlib.contextmanager
def output_errors(path: str):
    """A failure to write output (disk full, read-only, permission denied) is the machine's: one line
    that names the file and says what to do, not a skipped video and not a traceback."""
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
    """One shard and its index: serialized examples go to a temporary file of this writer;
    commit() makes both final. `frames` and `feature_bytes` are what every example must hold."""

    def __init__(self, out: str, name: str, frames: int, feature_bytes: int):
        self.out, self.name = out, name
        self.path = fs.join(out, name)
        self._partial = fs.join(out, shard_index.partial_name(name))
        with output_errors(self._partial):
            self._handle = fs.open_file(self._partial, "wb")
        self._writer = shard_index.RecordWriter(self._handle, frames, feature_bytes)
        self.num_examples = 0

    def write(self, serialized: bytes) -> None:
        with output_errors(self._partial):
            self._writer.write(serialized)
        self.num_examples += 1

    def commit(self, record: dict, unit_key: str | None = None) -> dict:
        """Closes, flushes to disk, writes the index (bound to `unit_key`), renames both to their final names (the index
        first: a final shard name means both are complete), then writes the record. Returns the
        record with `file`, `num_examples`, `sha256`, `bytes` and `index` ({file, sha256, bytes})."""
        import hashlib

        records = self._writer  # a test may wrap it: the counts below come from the RecordWriter itself
        records = getattr(records, "inner", records)
        with output_errors(self._partial):
            self._handle.close()
            fs.sync(self._partial)
        index = records.index(self.name, unit_key or record["key"])
        index_name = self.name + shard_index.SUFFIX
        index_partial = fs.join(self.out, shard_index.partial_name(index_name))
        with output_errors(index_partial):
            with fs.open_file(index_partial, "wb") as handle:
                handle.write(index)
            fs.sync(index_partial)
            fs.replace(index_partial, fs.join(self.out, index_name))
        with output_errors(self.path):
            fs.replace(self._partial, self.path)
        record = {**record, "file": self.name, "num_examples": self.num_examples, "sha256": records.sha256,
                  "bytes": records.size,
                  "index": {"file": index_name, "sha256": hashlib.sha256(index).hexdigest(), "bytes": len(index),
                            "key": unit_key or record["key"]}}  # the key rebuilds the index byte for byte (shard_index.repair)
        write_json(fs.join(self.out, STATE_DIR, self.name + ".json"), manifest.sealed(record))
        return record

    def abort(self) -> None:
        """Leaves no partial file behind (a later run would delete them anyway)."""
        with contextlib.suppress(Exception):
            self._handle.close()
        with contextlib.suppress(Exception):
            fs.remove(self._partial)
