"""Reading the TFRecord shards: each file's records with their count checked against the manifest,
and the error that names a damaged file.

`DatasetBuilder` streams them where its mapped reader cannot serve (metadata wanted, builds before
schema 4, object storage, tf.data service, rows=False); `device_table.load_table` reads them too.
TFRecordDataset checks both CRCs of every record it reads. TFDS and plain tf.data read the same files.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from dancedata import schema
from dancedata.errors import ShardError

# In the message of the error a damaged shard raises inside tf.data; `shard_error` finds it there.
BAD_SHARD = "dancedata: corrupted or truncated shard"
_END = "\0dancedata: end of shard"  # appended to each file's records to check their count; never a real Example


def shard_error(error) -> ShardError | None:
    """The ShardError (naming the file) behind a tf.errors.OpError raised while reading, else None."""
    message = getattr(error, "message", str(error))
    if BAD_SHARD not in message:
        return None
    import re

    found = re.search(r"\[" + re.escape(BAD_SHARD) + r"\] \[(.+?)\] \[holds\] \[(\d+)\] \[[^\]]*\] \[(\d+)\]", message)
    if not found:
        return ShardError(f"a shard is corrupted or truncated ({message.strip().splitlines()[0]})")
    path, held, expected = found.groups()
    return ShardError(
        f"shard {path} is corrupted or truncated: {held} of its {expected} records are readable. Rebuild it "
        "(the same build command redoes only damaged shards), or read on without it (skip_bad_shards / --skip-bad-shards)"
    )


def checked_records(path, expected):
    """The records of one shard file, then a check that all `expected` of them were readable: a
    damaged record ends the file early (ignore_errors), and the check fails naming the file, which
    TFRecordDataset's own error does not."""
    import tensorflow as tf

    records = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors()  # large reads: fewer calls, remote-friendly
    records = records.concatenate(tf.data.Dataset.from_tensors(tf.constant(_END)))

    def count(seen, record):
        at_end = tf.equal(record, _END)
        complete = tf.logical_or(tf.logical_not(at_end), tf.equal(seen, expected))
        check = tf.debugging.Assert(complete, [BAD_SHARD, path, "holds", seen, "readable records; the manifest says", expected])
        with tf.control_dependencies([check]):
            return seen + 1, (tf.logical_not(at_end), record)

    return records.scan(tf.constant(0, tf.int64), count).filter(lambda keep, _: keep).map(lambda _, record: record)


class Reading(NamedTuple):
    """How DatasetBuilder reads a split's examples; this module gives it for streamed TFRecords,
    mapped_shards.MappedShards for mapped ones, with the same examples once decoded."""

    source: Callable  # (shard path, start, count) -> dataset of the shard's elements (start: its first example's index)
    decode: Callable  # a batch of elements -> dict of tensors (schema.decode_batch's, features in the stored dtype)
    select: Callable  # (elements, fraction, holdout, held) -> those outside (holdout: inside) the held-out part
    # (held: None for the hash of each sequence id, or the set of held-out sequence ids)
    parallel: bool  # whether sources wait on I/O, so several are read at once


def reading(decode_batch, keys) -> Reading:
    """The TFRecords' Reading. `decode_batch(serialized, keys, cast)` is DatasetBuilder.decode."""
    import tensorflow as tf

    spec = {schema.SEQUENCE_ID: tf.io.FixedLenFeature([], tf.string)}

    def source(path, start, count):
        return checked_records(path, count)

    def decode(serialized):
        return decode_batch(serialized, keys, cast=False)

    def select(records, fraction, holdout, held_sequences=None):
        table = schema.holdout_table(held_sequences)

        def wanted(serialized):
            sequence = tf.io.parse_single_example(serialized, spec)[schema.SEQUENCE_ID]
            held = schema.held_out(tf.reshape(sequence, [1]), fraction, table)[0]
            return held if holdout else tf.logical_not(held)

        return records.filter(wanted)

    return Reading(source, decode, select, parallel=True)
