"""Scratch (issue 30): a prototype of a streamed reader with fewer copies per record, measured side by
side with the current streamed reader, plain tf.data on the same files and the memmap-gather limit.

    python benchmarks/proto_streamed.py [--examples 13939] [--shards 12] [--batch-sizes 64,32] [--rounds 5]

What the prototype changes (pipelines.streamed_windows + read.streamed_batches):

  current   per shard: TFRecordDataset.ignore_errors().batch(64) [copy] .scan(count check per chunk)
            -> interleave -> rebatch(256) [copy] -> gather(permutation) [copy] -> rebatch(B) [copy]
            -> parse_example [copy] -> decode_raw [copy]: with the read, 7 copies of every record
  proto     per shard: zip(TFRecordDataset.ignore_errors(), its rank in the epoch's shard order, its
            position 0, 1, ...) (C++ only, no function per record) -> interleave -> batch(256) [copy]
            -> scan(check of the window's ranks and positions: names the shard) -> map(parse_example
            [copy] + decode_raw [copy] on the whole window) -> the window's B-batches each one
            gather(features, permutation slice) [copy]: 5 copies, and parse runs on 256 records a call.

The count check keeps its meaning: every shard's records arrive complete and in order (a damaged record
ends its file early, ignore_errors), each window is checked against the one before it (the carry is the
last record's (rank, position)), and an empty window at the end checks the last shard; the assertion's
message is record_files.BAD_SHARD's, so shard_error() still names the file and its counts. Every record
read is still CRC-checked by TFRecordDataset.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proto_harness as H  # noqa: E402

import numpy as np  # noqa: E402


def proto_streamed(builder, split: str, batch_size: int, read, parallel_parse: bool = True, cycle: int = 4,
                   stop: str | None = None):
    """((features, mask), label) batches of one epoch in the sampler's order (shuffle, no holdout, no
    step, no windows of frames, one worker), epochs counted as as_dataset counts them."""
    import tensorflow as tf

    from dancedata import pipelines, schema
    from dancedata.record_files import BAD_SHARD

    AT = tf.data.AUTOTUNE
    paths, sampler = builder.ordered_files(split, read)
    window = sampler.window
    counts = np.asarray(sampler.counts, np.int64)
    m = builder.manifest
    frames, dim, dtype = m["num_frames"], m["feature_dim"], m["feature_dtype"]
    spec = schema.parse_spec({k: v for k, v in m["feature_spec"].items() if k in schema.TRAINING_KEYS})

    def one_epoch(epoch):
        shards = tf.range(len(counts), dtype=tf.int64)
        if sampler.shuffle:
            shards = tf.gather(shards, pipelines.draw(sampler.seed, epoch, 0xFFFFFFFF, len(counts)))
        ranked_paths = tf.gather(tf.constant(paths), shards)
        ranked_counts = tf.gather(tf.constant(counts), shards)
        # Rank -1 is "before the first shard"; next_rank[r + 1] is the first non-empty rank after r.
        ranks = tf.range(len(counts), dtype=tf.int64)
        big = tf.constant(len(counts), tf.int64)
        later = tf.where(ranked_counts > 0, ranks, big)
        # suffix_min[r]: the smallest non-empty rank >= r (S: none)
        suffix_min = tf.reverse(tf.scan(tf.minimum, tf.reverse(later, [0]), initializer=big), [0])
        next_rank = tf.concat([suffix_min, [big]], 0)  # next_rank[r + 1] for previous rank r (r = -1..S-1)
        expected_ext = tf.concat([[tf.constant(0, tf.int64)], ranked_counts], 0)
        paths_ext = tf.concat([[tf.constant("(start)")], ranked_paths], 0)
        last_rank = tf.reduce_max(tf.where(ranked_counts > 0, ranks, -1))

        def shard_records(rank, path):
            return tf.data.Dataset.zip((tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors(),
                                        tf.data.Dataset.from_tensors(rank).repeat(), tf.data.Dataset.range(2**62)))

        files = tf.data.Dataset.from_tensor_slices((ranks, ranked_paths))
        if cycle > 1:  # the next shards read ahead in parallel, as now
            records = files.interleave(shard_records, cycle_length=max(1, min(len(counts), cycle)),
                                       block_length=int(counts.max()) if len(counts) else 1,
                                       num_parallel_calls=AT, deterministic=True)
        else:  # shard after shard in this thread; the prefetch at the end reads ahead
            records = files.flat_map(shard_records)
        if stop == "windows":
            return records.batch(window)
        windows = records.batch(window).concatenate(tf.data.Dataset.from_tensors(
            (tf.zeros([0], tf.string), tf.zeros([0], tf.int64), tf.zeros([0], tf.int64))))

        def check(carry, element):
            strings, rank, position = element
            prev_rank = tf.concat([[carry[0]], rank[:-1]], 0)
            prev_pos = tf.concat([[carry[1]], position[:-1]], 0)
            same = tf.equal(rank, prev_rank)
            whole_before = tf.equal(prev_pos, tf.gather(expected_ext, prev_rank + 1) - 1)
            new_ok = tf.equal(rank, tf.gather(next_rank, prev_rank + 1)) & tf.equal(position, 0) & whole_before
            ok = tf.where(same, tf.equal(position, prev_pos + 1), new_ok)
            end = tf.size(rank) == 0
            end_ok = tf.equal(carry[0], last_rank) & tf.equal(carry[1], tf.gather(expected_ext, carry[0] + 1) - 1)
            bad = tf.argmin(tf.cast(ok, tf.int64))  # the first record that breaks the sequence
            failed_rank = tf.where(end, carry[0], tf.gather(prev_rank, bad))
            failed_pos = tf.where(end, carry[1], tf.gather(prev_pos, bad))
            complete = tf.where(end, end_ok | tf.equal(last_rank, -1), tf.reduce_all(ok))
            check_op = tf.debugging.Assert(complete, [BAD_SHARD, tf.gather(paths_ext, failed_rank + 1), "holds",
                                                       failed_pos + 1, "readable records; the manifest says",
                                                       tf.gather(expected_ext, failed_rank + 1)])
            with tf.control_dependencies([check_op]):
                new = tf.cond(end, lambda: carry, lambda: tf.stack([rank[-1], position[-1]]))
                return new, tf.identity(strings)

        checked = windows.scan(tf.constant([-1, -1], tf.int64), check).filter(lambda s: tf.size(s) > 0)
        if stop == "checked":
            return checked

        def parse(run, strings):
            parsed = tf.io.parse_example(strings, spec)
            features = tf.reshape(tf.io.decode_raw(parsed[schema.FEATURES], tf.as_dtype(dtype), little_endian=True),
                                  [-1, frames, dim])
            order = pipelines.draw(sampler.seed, epoch, run, tf.shape(strings, tf.int64)[0]) if sampler.shuffle else \
                tf.range(tf.shape(strings, tf.int64)[0])
            return features, parsed[schema.MASK] > 0, tf.cast(parsed[schema.LABEL], tf.int32), order

        dense = checked.enumerate().map(parse, num_parallel_calls=AT if parallel_parse else None, deterministic=True)
        if stop == "dense":
            return dense
        if window % batch_size == 0:
            def split(features, mask, label, order):
                n = tf.shape(order, tf.int64)[0]

                def batch(j):
                    take = order[j * batch_size:tf.minimum((j + 1) * batch_size, n)]
                    return (tf.gather(features, take), tf.gather(mask, take)), tf.gather(label, take)

                return tf.data.Dataset.range((n + batch_size - 1) // batch_size).map(batch)

            return dense.flat_map(split)

        def permute(features, mask, label, order):
            return (tf.gather(features, order), tf.gather(mask, order)), tf.gather(label, order)

        return dense.map(permute).rebatch(batch_size)

    counter = pipelines.EpochCounter(read.epoch)
    batches = pipelines.epochs(read.epoch, False, counter).flat_map(one_epoch)
    if stop:
        return batches
    batches = batches.prefetch(AT)
    return pipelines.counted(batches, counter, pipelines.batch_count(sum(sampler.counts), batch_size, False))


def proto_streamed_dense(builder, split: str, batch_size: int, read, fused_split: bool = True,
                         fused_check: bool = False):
    """The current chunk pipeline (record_files.checked_chunks: count checked per chunk of 64, the file
    named), but each chunk parsed and decoded inside the interleave, on 64 records a call (a 5 MB working
    set, in the interleave's parallel threads), so windows, permutation and batches move dense float16
    rows: rebatch(256) [copy] -> per window, each B-batch one gather of its permutation slice [copy]
    (fused_split; else gather + rebatch(B), two copies).

    fused_check: no scan stage; each chunk carries its number within its shard (enumerate: C++) and the
    parse map checks it with no state: chunk c must hold 64 records, or, the shard's last, the rest;
    the empty chunk at the end must be number ceil(expected / 64). The same failures found (a shard
    that ends early or holds more), named with the same BAD_SHARD message, in the map that parses."""
    import tensorflow as tf

    from dancedata import pipelines, schema
    from dancedata.record_files import BAD_SHARD, CHUNK, checked_chunks

    AT = tf.data.AUTOTUNE
    paths, sampler = builder.ordered_files(split, read)
    window = sampler.window
    counts = sampler.counts
    m = builder.manifest
    frames, dim, dtype = m["num_frames"], m["feature_dim"], m["feature_dtype"]
    spec = schema.parse_spec({k: v for k, v in m["feature_spec"].items() if k in schema.TRAINING_KEYS})

    def decode(chunk):
        parsed = tf.io.parse_example(chunk, spec)
        features = tf.reshape(tf.io.decode_raw(parsed[schema.FEATURES], tf.as_dtype(dtype), little_endian=True),
                              [-1, frames, dim])
        return features, parsed[schema.MASK] > 0, tf.cast(parsed[schema.LABEL], tf.int32)

    def shard(path, expected):
        if not fused_check:
            return checked_chunks(path, expected).map(decode)
        records = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors()
        chunks = records.batch(CHUNK).concatenate(tf.data.Dataset.from_tensors(tf.zeros([0], tf.string)))

        def checked_decode(number, chunk):
            size = tf.size(chunk, tf.int64)
            whole = -(-expected // CHUNK)
            rest = expected - number * CHUNK
            fine = tf.where(size > 0, tf.equal(size, tf.minimum(rest, CHUNK)) & (number < whole),
                            tf.equal(number, whole))
            check = tf.debugging.Assert(fine, [BAD_SHARD, path, "holds", number * CHUNK + size,
                                               "readable records; the manifest says", expected])
            with tf.control_dependencies([check]):
                return decode(tf.identity(chunk))

        return chunks.enumerate().map(checked_decode)

    def one_epoch(epoch):
        shards = tf.range(len(counts), dtype=tf.int64)
        if sampler.shuffle:
            shards = tf.gather(shards, pipelines.draw(sampler.seed, epoch, 0xFFFFFFFF, len(counts)))
        files = tf.data.Dataset.from_tensor_slices((tf.gather(tf.constant(paths), shards),
                                                    tf.gather(tf.constant(counts, tf.int64), shards)))
        chunks = -(-max(counts, default=1) // CHUNK) + 1
        dense = files.interleave(shard, cycle_length=max(1, min(len(counts), 4)), block_length=chunks,
                                 num_parallel_calls=AT, deterministic=True)
        windows = dense.rebatch(window).enumerate()

        def order(run, n):
            return pipelines.draw(sampler.seed, epoch, run, n) if sampler.shuffle else tf.range(n)

        if fused_split and window % batch_size == 0:
            def split(run, element):
                features, mask, label = element
                n = tf.shape(label, tf.int64)[0]
                permutation = order(run, n)

                def batch(j):
                    take = permutation[j * batch_size:tf.minimum((j + 1) * batch_size, n)]
                    return (tf.gather(features, take), tf.gather(mask, take)), tf.gather(label, take)

                return tf.data.Dataset.range((n + batch_size - 1) // batch_size).map(batch)

            return windows.flat_map(split)

        def permute(run, element):
            features, mask, label = element
            take = order(run, tf.shape(label, tf.int64)[0])
            return (tf.gather(features, take), tf.gather(mask, take)), tf.gather(label, take)

        return windows.map(permute).rebatch(batch_size)

    counter = pipelines.EpochCounter(read.epoch)
    batches = pipelines.epochs(read.epoch, False, counter).flat_map(one_epoch).prefetch(AT)
    return pipelines.counted(batches, counter, pipelines.batch_count(sum(counts), batch_size, False))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=13939)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--batch-sizes", default="64,32")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import tensorflow as tf

    import dancedata
    from dancedata import ExampleConfig, ReadConfig

    AT = tf.data.AUTOTUNE
    folder, npy = H.build(args.examples, args.shards)
    builder = dancedata.DatasetBuilder(folder)
    source = dancedata.ExampleSource(folder, "train")
    memmap = np.load(npy, mmap_mode="r")
    n = len(source)
    files = builder.files("train")
    frames, dim = builder.info.num_frames, builder.info.feature_dim
    spec = {"features": tf.io.FixedLenFeature([], tf.string), "mask": tf.io.FixedLenFeature([frames], tf.int64),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse_batch(records):
        batch = tf.io.parse_example(records, spec)
        features = tf.reshape(tf.io.decode_raw(batch["features"], tf.float16), [-1, frames, dim])
        return (features, batch["mask"] > 0), batch["label"]

    read = ReadConfig(shuffle=True, seed=0)
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        current = builder.as_dataset("train", batch_size=batch_size, example_config=ExampleConfig(cast=False),
                                     read_config=ReadConfig(shuffle=True, seed=0, source="stream"))
        proto = proto_streamed(builder, "train", batch_size, read)
        proto_flat = proto_streamed(builder, "train", batch_size, read, cycle=1)
        dense = proto_streamed_dense(builder, "train", batch_size, read)
        dense_rebatch = proto_streamed_dense(builder, "train", batch_size, read, fused_split=False)
        dense_check = proto_streamed_dense(builder, "train", batch_size, read, fused_check=True)
        # Same batches, in the same order, as the current streamed reader (and so as every reader).
        for other in (proto, dense, dense_rebatch, dense_check):
            for i, (a, b) in enumerate(zip(current, other)):
                for u, v in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
                    assert np.array_equal(np.asarray(u), np.asarray(v)), f"batch {i} differs"
                if i > 40:
                    break
        plain_shuffled = (tf.data.TFRecordDataset(files).shuffle(256).batch(batch_size)
                          .map(parse_batch, num_parallel_calls=AT).prefetch(AT))
        plain_parallel = (tf.data.TFRecordDataset(files, num_parallel_reads=AT).batch(batch_size)
                          .map(parse_batch, num_parallel_calls=AT).prefetch(AT))
        plain_parallel_shuffled = (tf.data.TFRecordDataset(files, num_parallel_reads=AT).shuffle(256)
                                   .batch(batch_size).map(parse_batch, num_parallel_calls=AT).prefetch(AT))
        rows = {
            "limit": H.limit_row(memmap, source, batch_size),
            "streamed: current": lambda e: current,
            "streamed: proto (5 copies, window check)": lambda e: proto,
            "streamed: proto, shards read by flat_map (no parallel interleave)": lambda e: proto_flat,
            "streamed: proto dense (chunks parsed in the interleave, fused split)": lambda e: dense,
            "streamed: proto dense (chunks parsed in the interleave, gather + rebatch)": lambda e: dense_rebatch,
            "streamed: proto dense, fused split, count check fused into the parse map": lambda e: dense_check,
            "plain: TFRecordDataset(files).shuffle(256).batch(B).map(parse) (readers.py's)": lambda e: plain_shuffled,
            "plain: TFRecordDataset(files, num_parallel_reads=AT).batch(B).map(parse)": lambda e: plain_parallel,
            "plain: TFRecordDataset(files, num_parallel_reads=AT).shuffle(256).batch(B).map(parse)":
                lambda e: plain_parallel_shuffled,
        }
        best = H.bench(rows, args.rounds, expected=n)
        print(H.table(best, "limit", f"\nbatch {batch_size}, {n} examples, best of {args.rounds}"), flush=True)


if __name__ == "__main__":
    main()
