"""Reading row files (schema 3): each shard's training fields as fixed-length records beside it.

`schema.row_layout` declares the layout and `schema.to_row` writes a row; this module checks that a
split's row files are whole and gives the tf.data source over them that `DatasetBuilder` uses for
training, in place of the TFRecords, with the same elements once decoded.
"""
from __future__ import annotations

import warnings

from dancedata import fs, schema
from dancedata.errors import ShardError

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


def reading(folder: str, layout: dict):
    """(source(shard path, start, count) -> its rows, decode(a batch of rows) -> dict of tensors,
    held(row, fraction) -> in the held-out part), as DatasetBuilder._reading gives for TFRecords."""
    import tensorflow as tf

    buffer = 8 << 20 if fs.is_remote(folder) else 256 << 10  # measured: 256 KB beats 8 MB on local files

    def source(path, start, count):
        return tf.data.FixedLengthRecordDataset(path + layout["suffix"], layout["record_bytes"], buffer_size=buffer)

    def decode(rows):
        return schema.decode_rows(rows, layout)

    def held(row, fraction):
        return schema.held_out_bucket(schema.row_holdout_bucket(row, layout), fraction, layout["holdout_buckets"])

    return source, decode, held
