"""Scratch (issue 30): prototypes of the TensorFlow readers and the ExampleSource loop, outside the
package, measured side by side with the current readers and the memmap-gather limit in one process.
Nothing in dancedata imports this file.

    DANCEDATA_PATH=/tmp/dd_snap python benchmarks/proto_readers.py [--examples 13939] [--shards 12]
        [--batch-sizes 64,32] [--rounds 7] [--only mapped,cached,device,numpy,floor] [--graph]

Every prototype is checked before timing to give the current reader's batches, value for value, for
whole epochs (epoch 0, then 1 and 2: the epoch counter too), in the plain case the benchmark reads
(shuffle, seed, no frame windows, no holdout, no step, no repeat). Printed per row: the best pass's
examples/s and its ratio to the limit's best, the median over rounds of the ratio to the limit's pass
of the same round (steadier on a shared machine), and CPU µs per example (smallest, median).

Rows beyond the readers: "limit, 8 rotating buffers" (the limit's np.take into 8 batch buffers in turn:
what any reader that prefetches writes into, since its buffers cannot all stay in cache) and "floor"
(one batch repeated by tf.data and iterated from Python: the per-batch cost every TensorFlow reader pays
in this benchmark's eager loop before it does any work).

What came out (docs in the report of the session that wrote this): only the device table's flat gather
(device_gather_flat) is a clear gain; the restructured pipelines (assemble), the tail epoch mark, the
bounded in-flight buffers, np.concatenate instead of the copy loop, np.take into a pool for the cache and
the pooled ExampleSource.batch all measured within noise of the current readers or worse.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proto_harness as H  # noqa: E402

import numpy as np  # noqa: E402

AT = None  # tf.data.AUTOTUNE, set in main


# ---------------------------------------------------------------------------------------------------
# Shared pieces


class Pool:
    """Aligned, reused batch buffers (mapped_shards._Buffers, for any row shape and dtype): a buffer is
    handed out again only when nothing but the pool refers to it."""

    ALIGN, KEPT = 64, 16

    def __init__(self, row_shape: tuple, dtype):
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.width = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.owners, self.lock = [], threading.Lock()

    def take(self, rows: int) -> np.ndarray:
        size = rows * self.width
        with self.lock:
            for owner in self.owners:
                if len(owner) == size + self.ALIGN and sys.getrefcount(owner) == 3:
                    return self._view(owner, rows)
            owner = np.empty(size + self.ALIGN, np.uint8)
            if len(self.owners) < self.KEPT:
                self.owners.append(owner)
            return self._view(owner, rows)

    def _view(self, owner, rows):
        skip = -owner.ctypes.data % self.ALIGN
        return owner[skip:skip + rows * self.width].view(self.dtype).reshape(rows, *self.row_shape)


def assemble(sampler, batch_size: int, first: int, decode, *, parallel=None, prefetch=None, mark: str = "counted"):
    """One epoch (no repeat) of decode(indices of batch k) in the sampler's order, as as_dataset gives it:
    epochs(first, repeat=False, counter) -> the epoch's order, a tensor made once per epoch -> batch k's
    slice, in a sequential map inside flat_map -> decode in ONE parallel map per batch (no
    from_tensor_slices(order).batch(B) stage, no separate to_inputs map) -> prefetch -> the epoch mark.

    parallel / prefetch: num_parallel_calls and buffer (default AUTOTUNE); a small bound keeps fewer
    batch buffers in flight, so the pooled ones stay in cache.
    mark: "counted" (pipelines.counted: enumerate + a map with a cond, after prefetch, every batch),
    "tail" (the epoch's batches but the last, prefetched, then the last one made on demand with the
    counter's advance after it: no stage after prefetch on any other batch; the same semantics: the
    epoch counts when the consumer takes its last batch; a peek changes nothing), or "none" (cardinality
    only: the lower bound of what counting costs)."""
    import tensorflow as tf

    from dancedata import pipelines

    parallel = AT if parallel is None else parallel
    prefetch = AT if prefetch is None else prefetch
    examples = sum(sampler.counts)
    count = pipelines.batch_count(examples, batch_size, False)
    counter = pipelines.EpochCounter(first)

    def part(start, stop):
        def with_order(epoch):
            order = tf.numpy_function(lambda e: sampler.order(int(e)), [epoch], tf.int64, stateful=False)
            return tf.ensure_shape(order, [None])

        def one_epoch(order):
            return tf.data.Dataset.range(start, stop).map(lambda k: order[k * batch_size:(k + 1) * batch_size])

        return pipelines.epochs(first, False, counter).map(with_order).flat_map(one_epoch).map(
            decode, num_parallel_calls=parallel, deterministic=True)

    if mark == "counted":
        return pipelines.counted(part(0, count).prefetch(prefetch), counter, count)
    if mark == "none":
        return part(0, count).prefetch(prefetch).apply(tf.data.experimental.assert_cardinality(count))

    def advance(*batch):
        done = tf.numpy_function(counter.advance, [], tf.int64, stateful=True)
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, batch)

    head = part(0, count - 1).prefetch(prefetch)
    tail = part(count - 1, count).map(advance)
    return head.concatenate(tail).apply(tf.data.experimental.assert_cardinality(count))


# ---------------------------------------------------------------------------------------------------
# mapped


def proto_mapped(builder, split: str, batch_size: int, read, concatenate: bool = False, **options):
    """Mapped reader, one tf.data map per batch: the epoch's order is a tensor made once per epoch; batch
    k's slice of it goes straight into one numpy_function that copies features into a pooled aligned
    buffer (as now) and gathers mask and label, returning ((features, mask), label) directly; then
    prefetch and (mark) pipelines.counted. Package change: read.as_dataset's table branch builds this
    instead of pipelines.index_batches(...).map(prepare) when there are no windows."""
    import tensorflow as tf

    paths, sampler = builder.ordered_files(split, read)
    table = builder._table(split, paths, read, False)
    rows, start, masks, labels = table._rows, table.start, table.masks, table._labels
    dtype, shape = table.dtype, table.shape
    pool = Pool(shape, dtype.newbyteorder("="))

    def gather(indices):
        out, starts = pool.take(len(indices)), start[indices]
        flat = out.view(np.uint8).reshape(len(indices), -1)
        if concatenate:  # one C call for the whole batch (64 views made in Python, then one copy loop in C)
            np.concatenate([rows[at:at + 1] for at in starts.tolist()], axis=0, out=flat)
        else:
            for k, at in enumerate(starts.tolist()):
                flat[k] = rows[at]
        return out, masks[indices], labels[indices]

    stored = tf.dtypes.as_dtype(dtype.newbyteorder("="))

    def decode(indices):
        features, mask, label = tf.numpy_function(gather, [indices], (stored, tf.bool, tf.int32), stateful=False)
        return (tf.ensure_shape(features, [None, *shape]), tf.ensure_shape(mask, [None, shape[0]])), \
            tf.ensure_shape(label, [None])

    return assemble(sampler, batch_size, read.epoch, decode, **options)


# ---------------------------------------------------------------------------------------------------
# cached


def cached_table(builder, split: str, read):
    from dancedata.device_table import Table

    paths, sampler = builder.ordered_files(split, read)
    mapped = builder._table(split, paths, read.__class__(**{**read.__dict__, "cache": False}), False)
    return Table(mapped.gather(np.arange(len(mapped.labels))), mapped.masks, mapped.labels.astype(np.int32),
                 mapped.sequences(), {}), sampler


_CONSTANTS: dict = {}


def proto_cached_tf(builder, split: str, batch_size: int, read, table=None, **options):
    """Cached reader, the table in TensorFlow as now (tf.gather in C++), one map per batch (assemble):
    the gathers of features, mask and label run on batch k's slice of the epoch's order."""
    import tensorflow as tf

    if table is None:
        table, sampler = cached_table(builder, split, read)
    else:
        sampler = builder.ordered_files(split, read)[1]
    if id(table) not in _CONSTANTS:  # one TensorFlow copy per table, whatever the batch sizes
        _CONSTANTS[id(table)] = (tf.constant(table.features), tf.constant(table.masks), tf.constant(table.labels))
    features, masks, labels = _CONSTANTS[id(table)]

    def decode(indices):
        return (tf.gather(features, indices), tf.gather(masks, indices)), tf.gather(labels, indices)

    return assemble(sampler, batch_size, read.epoch, decode, **options)


def proto_cached_np(builder, split: str, batch_size: int, read, table=None, **options):
    """Cached reader, the table in NumPy: one np.take(features, indices, axis=0, out=pooled aligned
    buffer, mode="clip") per batch inside one numpy_function (one C call, no Python loop; TensorFlow
    takes the aligned result without a copy), one map per batch (assemble)."""
    import tensorflow as tf

    if table is None:
        table, sampler = cached_table(builder, split, read)
    else:
        sampler = builder.ordered_files(split, read)[1]
    features, masks, labels = table.features, table.masks, table.labels
    pool = Pool(features.shape[1:], features.dtype)

    def gather(indices):
        out = pool.take(len(indices))
        np.take(features, indices, axis=0, out=out, mode="clip")  # indices come from the sampler: in range
        return out, masks[indices], labels[indices]

    stored = tf.dtypes.as_dtype(features.dtype)
    shape = features.shape[1:]

    def decode(indices):
        f, m, l = tf.numpy_function(gather, [indices], (stored, tf.bool, tf.int32), stateful=False)
        return (tf.ensure_shape(f, [None, *shape]), tf.ensure_shape(m, [None, shape[0]])), tf.ensure_shape(l, [None])

    return assemble(sampler, batch_size, read.epoch, decode, **options)


# ---------------------------------------------------------------------------------------------------
# device table


def device_gather_now(features, masks):
    """What training.on_device_table's GatherFromTable.call does today (readers.py emulates it)."""
    import tensorflow as tf

    def gather(inputs, label):
        index, positions = inputs
        return (tf.gather(tf.gather(features, index), positions, batch_dims=1),
                tf.gather(tf.gather(masks, index), positions, batch_dims=1)), label

    return gather


def device_gather_flat(features, masks):
    """One gather instead of two: rows of the [N * T, D] view at index * T + position. The same values
    for any positions (windows too), one copy of the batch instead of two. Package change:
    models/training.py GatherFromTable.call."""
    import tensorflow as tf

    n, t, d = features.shape
    flat_features = tf.reshape(features, [n * t, d])
    flat_masks = tf.reshape(masks, [n * t])

    def gather(inputs, label):
        index, positions = inputs
        rows = index[:, None] * t + tf.cast(positions, index.dtype)
        return (tf.gather(flat_features, rows), tf.gather(flat_masks, rows)), label

    return gather


def proto_device_index(builder, split: str, batch_size: int, read, table, **options):
    """index_dataset for the whole-frames case, one map per batch (assemble): (index, positions) and the
    label's gather in the same map as the slice of the order."""
    import tensorflow as tf

    sampler = builder.ordered_files(split, read)[1]
    offset = table.offsets[split]
    labels = tf.constant(table.labels)
    frames = table.masks.shape[1]

    def to_inputs(index):
        index = index + offset
        positions = tf.broadcast_to(tf.range(frames)[None, :], [tf.shape(index)[0], frames])
        return (index, positions), tf.gather(labels, index)

    return assemble(sampler, batch_size, read.epoch, to_inputs, **options)


# ---------------------------------------------------------------------------------------------------
# ExampleSource NumPy loop


def proto_source_batch(source):
    """ExampleSource.batch with the features copied into a pooled buffer (the tf.data decoder's loop)
    instead of a fresh array from a fancy index (whose page faults are most of the gap): a buffer is
    reused only once the caller dropped every reference to the batch before it, so holding batches is
    safe. Same checks of the keys."""
    from dancedata.read_config import check_indices

    table = source.table
    rows, start, masks, labels = table._rows, table.start, table.masks, table.labels
    pool = Pool(table.shape, table.dtype.newbyteorder("="))
    n = len(source)

    def batch(keys):
        keys = check_indices("keys", keys)
        if len(keys) and (keys.min() < 0 or keys.max() >= n):
            raise IndexError(f"examples must be in 0..{n - 1}")
        out, starts = pool.take(len(keys)), start[keys]
        flat = out.view(np.uint8).reshape(len(keys), -1)
        for k, at in enumerate(starts.tolist()):
            flat[k] = rows[at]
        return {"features": out, "mask": masks[keys], "label": labels[keys]}

    return batch


# ---------------------------------------------------------------------------------------------------
# checks: every prototype gives the current reader's batches


def same_batches(a, b, limit: int = 1000) -> None:
    import tensorflow as tf

    sizes = [0, 0]
    for i, (x, y) in enumerate(zip(a, b)):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y)):
            if not np.array_equal(np.asarray(u), np.asarray(v)):
                raise AssertionError(f"batch {i} differs")
        if i >= limit:
            return
    sizes = [sum(1 for _ in a), sum(1 for _ in b)]  # both at their next epoch now: the same number of batches
    if sizes[0] != sizes[1]:
        raise AssertionError(f"{sizes[0]} batches, not {sizes[1]}")


def graph_consumer(dataset):
    """The epoch consumed inside one graph (dataset.reduce), as fit's step consumes it: no Python per batch."""
    import tensorflow as tf

    def run(epoch):  # a generator: the epoch runs on the clock
        yield int(dataset.reduce(tf.constant(0, tf.int64),
                                 lambda n, *b: n + tf.shape(tf.nest.flatten(b)[-1], tf.int64)[0]))

    return run


def rotating_limit(memmap, source, batch_size: int, buffers: int):
    """The limit's np.take, into `buffers` batch buffers in turn instead of one (which stays in cache)."""
    out = [np.empty((batch_size,) + memmap.shape[1:], memmap.dtype) for _ in range(buffers)]

    def gather(epoch):
        batches = list(source.batches(batch_size, seed=0, epoch=epoch))
        return (np.take(memmap, keys, axis=0, out=out[i % buffers][:len(keys)], mode="clip")
                for i, keys in enumerate(batches))

    return gather


def main(argv=None):
    global AT
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=13939)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--batch-sizes", default="64,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="mapped,cached,device,numpy,floor")
    parser.add_argument("--graph", action="store_true", help="also each TF reader consumed in-graph (reduce)")
    args = parser.parse_args(argv)
    import tensorflow as tf

    import dancedata
    from dancedata import ExampleConfig, ReadConfig
    from dancedata.device_table import index_dataset, load_table

    AT = tf.data.AUTOTUNE
    folder, npy = H.build(args.examples, args.shards)
    builder = dancedata.DatasetBuilder(folder)
    source = dancedata.ExampleSource(folder, "train")
    memmap = np.load(npy, mmap_mode="r")
    n = len(source)
    only = set(args.only.split(","))
    half = ExampleConfig(cast=False)
    read = ReadConfig(shuffle=True, seed=0)
    table = ctable = None
    if "cached" in only:
        ctable, _ = cached_table(builder, "train", read)
    if "device" in only:
        table = load_table(builder, ["train"])
        tfeatures, tmasks = tf.constant(table.features), tf.constant(table.masks)
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        rows = {"limit": H.limit_row(memmap, source, batch_size),
                "limit, 8 rotating buffers (what a prefetching reader writes into)": rotating_limit(memmap, source,
                                                                                                  batch_size, 8)}
        tfrows = {}

        def ours(**kw):
            return builder.as_dataset("train", batch_size=batch_size, example_config=half,
                                      read_config=ReadConfig(shuffle=True, seed=0, **kw))

        if "mapped" in only:
            tfrows["mapped: current"] = ours()
            tfrows["mapped: proto one map"] = proto_mapped(builder, "train", batch_size, read)
            tfrows["mapped: proto one map, np.concatenate(views, out=) instead of the loop"] = proto_mapped(
                builder, "train", batch_size, read, concatenate=True)
            tfrows["mapped: proto one map, no epoch mark (lower bound)"] = proto_mapped(
                builder, "train", batch_size, read, mark="none")
        if "cached" in only:
            tfrows["cached: current"] = ours(cache=True)
            tfrows["cached: proto tf.gather, one map"] = proto_cached_tf(builder, "train", batch_size, read, ctable)
            tfrows["cached: proto np.take into pool, one map"] = proto_cached_np(builder, "train", batch_size, read,
                                                                                 ctable)
        if "device" in only:
            indices = index_dataset(builder, "train", table, batch_size=batch_size, read_config=read)
            now, flat = device_gather_now(tfeatures, tmasks), device_gather_flat(tfeatures, tmasks)
            tfrows["device: current (index_dataset + two-step gather)"] = indices.map(now, num_parallel_calls=AT).prefetch(AT)
            tfrows["device: index_dataset + flat gather (one copy)"] = indices.map(flat, num_parallel_calls=AT).prefetch(AT)
            tfrows["device: index_dataset alone (host side)"] = indices
        if "floor" in only:
            batch = next(iter(ours()))
            tfrows["floor: from_tensors(one batch).repeat() (tf.data eager iteration, no work)"] = \
                tf.data.Dataset.from_tensors(batch).repeat(-(-n // batch_size))
        for name, dataset in tfrows.items():
            rows[name] = (lambda d: lambda e: d)(dataset)
        if args.graph:
            for name, dataset in tfrows.items():
                rows[name + " [in-graph]"] = graph_consumer(dataset)
        if "numpy" in only:
            fast = proto_source_batch(source)
            rows["numpy: ExampleSource.batches + .batch (current)"] = \
                lambda e: (source.batch(k) for k in source.batches(batch_size, seed=0, epoch=e))
            rows["numpy: proto pooled batch"] = \
                lambda e: (fast(k) for k in source.batches(batch_size, seed=0, epoch=e))
        # Same batches as the current readers (a few of each), before timing.
        # Every reader gives the same batches by construction: the mapped reader (no table copy) is the
        # reference for every prototype; for the device rows it is gathered as the model would.
        reference = {"mapped": lambda: ours(), "cached": lambda: ours(), "device": lambda: ours().map(
            lambda inputs, label: ((inputs[0], inputs[1]), label))}
        for name in tfrows:  # every prototype gives the current reader's batches: whole epochs 0, then 1 and 2
            if "alone" not in name and "current" not in name and "floor" not in name:
                current = reference[name.split(":")[0]]()
                try:
                    same_batches(current, tfrows[name])
                    if "lower bound" not in name:  # (that one never counts epochs: every iteration is its first)
                        same_batches(current, tfrows[name])
                except AssertionError as error:
                    raise AssertionError(f"{name}: {error}") from None
        best = H.bench(rows, args.rounds, expected=n)
        print(H.table(best, "limit", f"\nbatch {batch_size}, {n} examples, best of {args.rounds}"), flush=True)


if __name__ == "__main__":
    main()
