"""Reading the TFRecord shards: each file's records with their count checked against the manifest,
and the error that names a damaged file.

`DatasetBuilder` streams them where neither its mapped reader nor ranged reads (ranged_windows) serve:
metadata wanted, builds before schema 4 or with a damaged index, a tf.data service, held damage, stored
frames; `device_table.load_table` reads them too.
TFRecordDataset checks both CRCs of every record it reads. TFDS and plain tf.data read the same files.
"""
from __future__ import annotations

from dancedata import light_stages, schema
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

    if said := re.search(re.escape(BAD_SHARD) + r": (shard .*)", message):  # ranged_windows.BadShard's own words
        return ShardError(said.group(1).strip())
    found = re.search(r"\[" + re.escape(BAD_SHARD) + r"\] \[(.+?)\] \[holds\] \[(\d+)\] \[[^\]]*\] \[(\d+)\]", message)
    if not found:
        return ShardError(f"a shard is corrupted or truncated ({message.strip().splitlines()[0]})")
    path, held, expected = found.groups()
    rebuild = ("Rebuild it (the same build command redoes only damaged shards), or read on without its damaged records "
               "(on_damage='skip' / --on-damage skip)")
    if int(held) > int(expected):  # counted a chunk at a time: the check stops at the first chunk past the count
        return ShardError(f"shard {path} holds more records than its manifest says (at least {held}, not {expected}): "
                          f"it is not the file this build wrote. {rebuild}")
    return ShardError(f"shard {path} is corrupted or truncated: {held} of its {expected} records are readable. {rebuild}")


CHUNK = 64  # records checked per step: the count check's cost, once a chunk, vanishes beside reading them


def checked_chunks(path, expected, skip=0, held=None, bounds=None):
    """The records of one shard file as [<= CHUNK] string batches, from its record `skip` on, then a
    check that all `expected` were readable: a damaged record ends the file early (ignore_errors), and
    the check fails naming the file, which TFRecordDataset's own error does not. Counted a chunk at a
    time (one function call per CHUNK records, not one per record).

    held, bounds (on_damage="skip"): the records of damaged shards, read once and kept in memory (a
    lost record is b"" there, or a stand-in the reader never asks for); where bounds (start, end) is
    not empty, the shard's records are held[start:end] instead of its file's."""
    import tensorflow as tf

    skip = tf.cast(skip, tf.int64)
    files = path
    if held is not None:  # graph ops only (a tf.data service runs them): no file to read for a held shard
        from_file = tf.equal(bounds[0], bounds[1])
        files = tf.reshape(path, [1])[: tf.cast(from_file, tf.int32)]
        expected = tf.where(from_file, tf.cast(expected, tf.int64), tf.zeros([], tf.int64))
        skip_file = tf.where(from_file, skip, tf.zeros_like(skip))
    else:
        skip_file = skip
    records = _records(files, 8 << 20).ignore_errors()  # large reads: fewer calls, remote-friendly
    # The end is an empty chunk (batch never makes one). batch() fills every chunk but the last, so chunk n
    # ends at record skip + n * CHUNK + its size: no running count (no scan's state) is needed to check it.
    chunks = records.skip(skip_file).batch(CHUNK).concatenate(tf.data.Dataset.from_tensors(tf.zeros([0], tf.string)))
    expected = tf.cast(expected, tf.int64)

    def count(position, chunk):
        size = tf.size(chunk, tf.int64)
        seen = skip_file + position * CHUNK + size
        # A full chunk may not pass the count, a shorter one ends it, and so does the end (after a shorter chunk,
        # which checked the count, its position is past it; with no chunk before it, it must be the count).
        at_end = tf.where(position > 0, seen >= expected, tf.equal(seen, expected))
        complete = tf.where(tf.equal(size, CHUNK), seen <= expected, tf.where(size > 0, tf.equal(seen, expected), at_end))
        check = tf.debugging.Assert(complete, [BAD_SHARD, path, "holds", seen, "readable records; the manifest says", expected])
        with tf.control_dependencies([check]):
            return tf.identity(chunk)

    checked = light_stages.light_map(chunks.enumerate(), count)
    if held is None:
        return checked
    start = tf.minimum(bounds[0] + tf.where(from_file, tf.zeros_like(skip), skip), bounds[1])
    return checked.concatenate(tf.data.Dataset.from_tensor_slices(held[start:bounds[1]]).batch(CHUNK))


def _records(files, buffer_size: int):
    """tf.data.TFRecordDataset(files) (a name, or a vector of names), without the flat_map it adds over the
    names: its function is instantiated and optimized (~3-5 ms) for each shard the streamed reader opens.
    The reader op reads the names itself. Where TensorFlow lacks that private class, TFRecordDataset."""
    import tensorflow as tf

    try:
        from tensorflow.python.data.ops.readers import _TFRecordDataset
    except ImportError:
        return tf.data.TFRecordDataset(files, buffer_size=buffer_size)
    return _TFRecordDataset(files, buffer_size=tf.constant(buffer_size, tf.int64))


def checked_records(path, expected, held=None, bounds=None):
    """The records of one shard file, then a check that all `expected` of them were readable (checked_chunks)."""
    return checked_chunks(path, expected, 0, held, bounds).unbatch()


def records_of(paths: list, counts: list, held=None):
    """The records of the shard files `paths` (counts each, checked), file after file; held: a
    (records, bounds [len(paths), 2]) pair of records kept in memory for damaged shards (checked_chunks)."""
    import tensorflow as tf

    files = (paths, tf.constant(list(counts), tf.int64))
    if held is None:
        return tf.data.Dataset.from_tensor_slices(files).flat_map(checked_records)
    records, bounds = held
    return tf.data.Dataset.from_tensor_slices((*files, bounds)).flat_map(
        lambda path, count, bound: checked_records(path, count, records, bound))


def select(windows, fraction: float, holdout: bool, held_sequences=None):
    """Batches of records (serialized, or decoded: a dict with the sequence id) with only those outside
    (holdout: inside) the held-out part kept: `fraction` of the hash buckets of each sequence id, or with
    `held_sequences`, those sequence ids."""
    import tensorflow as tf

    spec = {schema.SEQUENCE_ID: tf.io.FixedLenFeature([], tf.string)}
    table = schema.holdout_table(held_sequences)

    def wanted(records):
        if not isinstance(records, dict):  # serialized: only the sequence ids are parsed
            records_ids = tf.io.parse_example(records, spec)[schema.SEQUENCE_ID]
        else:
            records_ids = records[schema.SEQUENCE_ID]
        held = schema.held_out(records_ids, fraction, table)
        kept = held if holdout else tf.logical_not(held)
        return tf.nest.map_structure(lambda field: tf.boolean_mask(field, kept), records)

    return windows.map(wanted)
