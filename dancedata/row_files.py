"""Reading row files (schema 3): each shard's training fields as fixed-length records beside it.

`schema.row_layout` declares the layout and `schema.to_row` writes a row; this module checks that a
split's row files are whole and gives the tf.data sources over them that `DatasetBuilder` uses for
training, in place of the TFRecords, with the same elements once decoded:

- local files are memory-mapped (`MappedRows`): the pipeline shuffles and batches example indices, and
  each batch's features are copied once, from the page cache into the batch;
- files on object storage, or a pipeline that must be pure graph ops (tf.data service), stream them
  with FixedLengthRecordDataset, which copies each record three times on its way into a batch.
"""
from __future__ import annotations

import os
import sys
import warnings
import weakref

import numpy as np

from dancedata import fs, schema
from dancedata.errors import ShardError
from dancedata.record_files import Reading

MISSING = "is missing"


def problem(folder: str, manifest: dict, shard: dict) -> str | None:
    """Why a shard's row file cannot be read (missing, or not num_examples rows long), else None."""
    import tensorflow as tf

    if "rows" not in shard or "rows" not in manifest:
        return None
    path = f"{folder}/{shard['rows']['file']}"
    expected = shard["num_examples"] * manifest["rows"]["record_bytes"]
    try:
        size = fs.size(path)
    except (OSError, tf.errors.OpError):
        return f"its row file {path} {MISSING}"
    if size != expected:
        return f"its row file {path} holds {size} bytes, not the {expected} of {shard['num_examples']} rows: truncated or damaged"
    return None


def readable(folder: str, manifest: dict, split: str, paths: list) -> bool:
    """Whether the training fields of `paths` (shard files of `split`) can come from their row files:
    the build wrote them and each is there, whole. Their count is checked here, from each file's
    length, once, instead of per record as the TFRecord reader does. A missing one means reading the
    TFRecords, with a warning; one of the wrong length is a damaged shard (ShardError)."""
    if "rows" not in manifest:
        return False
    wanted = set(paths)
    shards = [s for s in manifest["splits"][split]["shards"] if f"{folder}/{s['file']}" in wanted]
    if any("rows" not in shard for shard in shards):
        return False
    for shard in shards:
        found = problem(folder, manifest, shard)
        if found and found.endswith(MISSING):
            warnings.warn(f"{split}: {found}; reading the TFRecords instead, which is slower "
                          "(the same build command writes it again)", stacklevel=4)
            return False
        if found:
            raise ShardError(
                f"shard {folder}/{shard['file']}: {found}. Rebuild it (the same build command redoes only "
                "damaged shards), or read on without it (skip_bad_shards / --skip-bad-shards)"
            )
    return True


def reading(folder: str, layout: dict, paths: list, counts: list, mapped: bool = True) -> Reading:
    """The row files' Reading of `paths` (shards holding `counts` examples).
    mapped=False, remote folders and big-endian hosts stream the rows instead of mapping them."""
    if mapped and not fs.is_remote(folder) and sys.byteorder == "little" and len(paths) <= _mappable_files():
        return MappedRows(layout, paths, counts).reading()
    return streaming(folder, layout)


def _mappable_files() -> int:
    """How many files one reader maps at most. Before Python 3.13 each mapping holds a file descriptor
    open: a quarter of the process's limit leaves room for the rest (a split with more shards than
    that is streamed; 100 MB shards make ~11 for all of AIST)."""
    if sys.version_info >= (3, 13):
        return sys.maxsize
    try:
        import resource
    except ImportError:  # no such limit to respect
        return sys.maxsize
    return max(resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4, 1)


# One mapping per file for the whole process, shared by every dataset that reads it: TensorFlow keeps
# a dataset's numpy_function (and so its MappedRows) registered after the dataset is gone, so a
# mapping per dataset would hold one more descriptor per file for each as_dataset call.
_MAPPED = weakref.WeakValueDictionary()  # (path, device, inode, size, mtime) -> its mmap, while any array uses it


def _map(path: str, rows: int, record_bytes: int) -> np.ndarray:
    """A row file mapped read-only as uint8 [rows, record_bytes] (the one mapping of this file)."""
    import mmap

    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        if stat.st_size != rows * record_bytes:  # changed since readable() checked it
            raise ShardError(f"row file {path} holds {stat.st_size} bytes, not the {rows * record_bytes} of {rows} rows: "
                             "truncated or damaged. Rebuild it (the same build command redoes only damaged shards)")
        key = (path, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)  # a rebuilt file is mapped anew
        mapping = _MAPPED.get(key)
        if mapping is None:
            untracked = {"trackfd": False} if sys.version_info >= (3, 13) else {}
            mapping = _MAPPED[key] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ, **untracked)
    return np.frombuffer(mapping, np.uint8).reshape(rows, record_bytes)


def streaming(folder: str, layout: dict) -> Reading:
    """Whole rows read in file order by FixedLengthRecordDataset."""
    import tensorflow as tf

    buffer = 8 << 20 if fs.is_remote(folder) else 256 << 10  # measured: 256 KB beats 8 MB on local files

    def source(path, start, count):
        return tf.data.FixedLengthRecordDataset(path + layout["suffix"], layout["record_bytes"], buffer_size=buffer)

    def decode(rows):
        return schema.decode_rows(rows, layout)

    def select(rows, fraction, holdout):
        def wanted(row):
            held = schema.held_out_bucket(schema.row_holdout_bucket(row, layout), fraction, layout["holdout_buckets"])
            return held if holdout else tf.logical_not(held)

        return rows.filter(wanted)

    return Reading(source, decode, select, parallel=True)


def select_indices(indices, held: np.ndarray, holdout: bool):
    """A dataset of example indices -> those i with held[i] == holdout, in order. Selected a batch at a
    time: a filter calls its predicate once per element, which costs more than gathering the element."""
    import tensorflow as tf

    held = tf.constant(np.asarray(held, bool))

    def wanted(batch):
        chosen = tf.gather(held, batch)
        return tf.boolean_mask(batch, chosen if holdout else tf.logical_not(chosen))

    return indices.batch(1024).map(wanted).unbatch()


class MappedRows:
    """The row files of some shards (`paths`, holding `counts` examples) memory-mapped as one table:
    example i is row i - start of the shard whose examples start at `start`, in the order given.

    The masks, labels and hold-out buckets (T + 16 bytes a row) are read into memory when the table is
    made (on a cold page cache, readahead around each row's tail may read much of each file then; the
    first epoch finds it in memory). A batch of indices gathers its features with one copy each, from
    the page cache into the batch, where a stream makes three (benchmarks/train_throughput.py). Mapped
    pages count in the process's resident memory but are the page cache's: the kernel reclaims them.
    The mapping is read-only: a row file truncated in place while mapped ends the process (SIGBUS), as
    for any mmap reader; builds never do that (they write new files and rename them over old ones).
    """

    def __init__(self, layout: dict, paths: list, counts: list):
        field = {f["name"]: f for f in layout["fields"]}
        self.layout, self.record_bytes = layout, layout["record_bytes"]
        features = field[schema.FEATURES]
        self.dtype = np.dtype(features["dtype"]).newbyteorder("<")
        self.shape = tuple(features["shape"])
        width = int(np.prod(self.shape)) * self.dtype.itemsize
        maps = [_map(path + layout["suffix"], count, self.record_bytes) if count else None
                for path, count in zip(paths, counts)]
        self.features = [m[:, features["offset"]:features["offset"] + width] if m is not None else None for m in maps]
        self.file = np.repeat(np.arange(len(paths), dtype=np.int32), counts)  # example -> its shard, its row there
        self.row = np.concatenate([np.arange(count, dtype=np.int64) for count in counts] or [np.zeros(0, np.int64)])

        def column(name, dtype):
            f = field[name]
            width = int(np.prod(f["shape"], dtype=np.int64)) * np.dtype(f["dtype"]).itemsize
            parts = [np.ascontiguousarray(m[:, f["offset"]:f["offset"] + width]) for m in maps if m is not None]
            joined = np.concatenate(parts) if parts else np.zeros((0, width), np.uint8)
            return joined.view(np.dtype(dtype).newbyteorder("<")).reshape(-1, *f["shape"])

        self.masks = column(schema.MASK, "uint8") != 0
        self.labels = column(schema.LABEL, "int64")
        self.buckets = column(schema.HOLDOUT_BUCKET, "int64")

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Features [len(indices), T, D] (stored dtype) of examples `indices`: one copy per example."""
        out = np.empty((len(indices), int(np.prod(self.shape)) * self.dtype.itemsize), np.uint8)
        files, rows, features = self.file[indices], self.row[indices], self.features
        for k in range(len(indices)):
            out[k] = features[files[k]][rows[k]]
        return out.view(self.dtype).reshape(len(indices), *self.shape)

    def reading(self) -> Reading:
        """Over example indices (int64 scalars): the sources are ranges, nothing to wait on."""
        import tensorflow as tf

        masks, labels = tf.constant(self.masks), tf.constant(self.labels)
        stored = tf.dtypes.as_dtype(self.dtype.newbyteorder("="))

        def source(path, start, count):
            return tf.data.Dataset.range(start, start + count)

        def decode(indices):
            features = tf.numpy_function(self.gather, [indices], stored, stateful=False)
            features.set_shape([None, *self.shape])
            return {schema.FEATURES: features, schema.MASK: tf.gather(masks, indices),
                    schema.LABEL: tf.gather(labels, indices)}

        def select(indices, fraction, holdout):
            held = schema.held_out_bucket(self.buckets, fraction, self.layout["holdout_buckets"])
            return select_indices(indices, held, holdout)

        return Reading(source, decode, select, parallel=False)
