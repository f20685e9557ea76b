"""tf.data pipelines in a `dancedata.sampler.Sampler`'s order: batches of example indices for readers
that gather by index (mapped shards, tables in memory or on a device), and streamed TFRecords that read
the sampler's shards in its order and permute its windows with graph ops that compute the sampler's
permutations (`draw` here equals sampler.draw, tested), so every reader gives the same batches. Without
repeat, a dataset's epoch is counted by the consumer (EpochCounter, counted).
"""
from __future__ import annotations

import warnings

import numpy as np

from dancedata import sampler as sampler_lib
from dancedata.light_stages import light_flat_map, light_interleave, light_map
from dancedata.record_files import CHUNK, checked_chunks

GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(z):
    import tensorflow as tf

    def shifted(value, bits):
        return tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, tf.constant(bits, tf.uint64)))

    z = shifted(z, 30) * tf.constant(0xBF58476D1CE4E5B9, tf.uint64)
    z = shifted(z, 27) * tf.constant(0x94D049BB133111EB, tf.uint64)
    return shifted(z, 31)


def _base(seed, epoch, run):
    """sampler.hashes' starting value for (seed, epoch, run), as a uint64 tensor."""
    import tensorflow as tf

    base = tf.constant(0, tf.uint64)
    for number in (seed, epoch, run):
        base = _splitmix64(tf.bitwise.bitwise_xor(base, tf.cast(number, tf.uint64)) + tf.constant(GOLDEN, tf.uint64))
    return base


def draw(seed, epoch, run, count):
    """sampler.draw in graph ops: a permutation of range(count) (int64) for (seed, epoch, run)."""
    import tensorflow as tf

    positions = tf.range(1, tf.cast(count, tf.int64) + 1, dtype=tf.int64)
    keys = _splitmix64(_base(seed, epoch, run) + tf.constant(GOLDEN, tf.uint64) * tf.cast(positions, tf.uint64))
    return tf.cast(tf.argsort(keys, stable=True), tf.int64)


class EpochCounter:
    """The epoch the next iteration of a dataset without repeat reads: its first epoch, plus one for each
    earlier iteration that delivered its last batch. A peek (`next(iter(ds))`) or any iteration left
    before its end changes nothing; Keras, which stops at a dataset's known cardinality, counts each
    epoch it trains. Counted where the consumer takes the batch, after any prefetch (`counted`), so
    reading ahead never counts."""

    def __init__(self, first: int):
        self.value = first

    def read(self) -> np.int64:
        return np.int64(self.value)

    def advance(self) -> np.int64:
        self.value += 1
        return np.int64(self.value)


_release_registered = False


def release_iterators_at_exit() -> None:
    """Registers (once) an atexit hook that destroys every tf.data iterator still alive, while the
    interpreter can still run Python. Our readers call Python from tf.data's threads (the mapped
    reader's gather, the epoch count): an iterator left half-read until the interpreter's own teardown
    (a script that ends after `next(iter(ds))`) was destroyed when Python no longer let those threads
    in, and the process hung at exit (3 runs in 4, TF 2.21, Python 3.11). Destroyed here, it exits."""
    global _release_registered
    if not _release_registered:
        import atexit

        atexit.register(_release_iterators)
        _release_registered = True


def _release_iterators() -> None:
    import gc
    import sys

    iterator_ops = sys.modules.get("tensorflow.python.data.ops.iterator_ops")
    if iterator_ops is None:
        return
    for found in gc.get_objects():
        if isinstance(found, iterator_ops.OwnedIterator) and "_iterator_resource" in vars(found):
            del found._iterator_resource  # the last reference to the C++ iterator: it stops its threads now


def each_epoch(first: int, repeat: bool, one_epoch, counter: EpochCounter | None = None):
    """one_epoch(epoch) for epochs first, first + 1, ... (repeat), or for the one epoch `counter` says
    when each iteration starts (without repeat: so fit(..., epochs=N) takes a new order each epoch).
    The counter is read inside the flat_map's own function, not in a stage of its own: each function a
    new iterator instantiates costs it time (see light_map). Every
    reader's pipeline starts here: it registers release_iterators_at_exit."""
    import tensorflow as tf

    release_iterators_at_exit()

    if repeat:
        return light_flat_map(tf.data.Dataset.range(first, 2**62), one_epoch)
    # A Python counter, read each time an iterator starts: no TensorFlow variable, so a dataset made under a
    # tf.distribute strategy's scope does not get a distributed one.
    counter = EpochCounter(first) if counter is None else counter
    return light_flat_map(tf.data.Dataset.from_tensors(np.int64(0)), lambda _: one_epoch(
        tf.ensure_shape(tf.numpy_function(counter.read, [], tf.int64, stateful=True), [])))


def batch_count(examples: int, batch_size: int, drop_remainder: bool) -> int:
    return examples // batch_size if drop_remainder else -(-examples // batch_size)


def counter_advance(counter: EpochCounter):
    """A graph op advancing `counter` (the next iteration reads the next epoch); its new value."""
    import tensorflow as tf

    return tf.ensure_shape(tf.numpy_function(counter.advance, [], tf.int64, stateful=True), [])


def epochs_by_index(sampler: sampler_lib.Sampler, first: int, batch_size: int, drop_remainder: bool, keep,
                    seeds: bool, counter: EpochCounter, count: int, values, inputs=None):
    """A reader by index without repeat, whose epochs have `count` batches: each iteration one epoch
    (the one `counter` says as it starts, read once), each batch the rows of `values` (a structure of
    tensors [N, ...], one row per example) at its indices, or with `inputs` (a function of a batch of
    indices, with seeds also its window seed [2]) (inputs(batch), values' rows): inputs in a light_map,
    prefetched, and values taken whole by slicing (sliced), with no function between them and the
    consumer. The counter advances as the consumer takes the epoch's last batch. This replaces counted's
    stage, which ran a function per batch on the consumer's thread (~100 us at any batch size, measured)
    and had to return the int32 labels, so it could not be a light one (see _SINGLE_DEVICE)."""
    import tensorflow as tf

    def numbers(epoch):
        order = sampler.order(int(epoch), keep)
        return order, sampler.batch_seeds(int(epoch), -(-len(order) // batch_size))

    def one_epoch(epoch):
        order, batch_seeds = tf.numpy_function(numbers, [epoch], (tf.int64, tf.int64), stateful=False)
        order, batch_seeds = tf.ensure_shape(order, [None]), tf.ensure_shape(batch_seeds, [None, 2])
        rows = sliced(tf.nest.map_structure(lambda tensor: tf.gather(tensor, order), values), batch_size, drop_remainder)

        def last(_):  # runs as the consumer asks for the epoch's last batch: this epoch is read
            with tf.control_dependencies([counter_advance(counter)]):
                return rows.skip(count - 1)

        rows = rows.take(count - 1).concatenate(light_flat_map(tf.data.Dataset.from_tensors(np.int64(0)), last))
        if inputs is None:
            return rows
        indices = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder)
        if seeds:
            indices = tf.data.Dataset.zip((indices, tf.data.Dataset.from_tensor_slices(batch_seeds)))
        # A prefetch inside the epoch's dataset still runs in a thread of its own.
        return tf.data.Dataset.zip(light_map(indices, inputs, parallel=True).prefetch(tf.data.AUTOTUNE), rows)

    epochs = each_epoch(first, False, one_epoch, counter).apply(tf.data.experimental.assert_cardinality(count))
    # The zip ends the stream after assert_cardinality's error (an epoch cut short by a failed batch):
    # without it, a user's ignore_errors() got that error again on every call, without end.
    return unrewritten(tf.data.Dataset.zip(epochs))


def counted(batches, counter: EpochCounter, count: int | None):
    """The final stage of a dataset without repeat: its cardinality is `count` batches (None: unknown),
    and `counter` advances when the consumer takes the last one (or, count unknown, asks past the end)."""
    import tensorflow as tf

    def advance():
        return counter_advance(counter)

    if count is not None:
        batches = batches.apply(tf.data.experimental.assert_cardinality(count))

        def mark(position, batch):
            done = tf.cond(tf.equal(position, count - 1), advance, lambda: tf.constant(0, tf.int64))
            with tf.control_dependencies([done]):
                return tf.nest.map_structure(tf.identity, batch)

        return batches.enumerate().map(mark)

    def nothing(_):  # no element, with the batches' structure: the end's marker only
        return tf.nest.map_structure(lambda spec: tf.zeros([0 if d is None else d for d in spec.shape], spec.dtype),
                                     batches.element_spec)

    end = tf.data.Dataset.from_tensors(np.int64(0)).map(lambda _: advance()).filter(lambda _: False).map(nothing)
    return batches.concatenate(end)


def exactly(batches, steps: int | None, step=0, whole=None):
    """One epoch's batches as exactly `steps` of them (None: as they are): cycled when fewer, cut when more.
    Started at batch `step` (> 0: see first_batch), `batches` are the epoch's from its batch step % n and
    `whole` the epoch's from its start, read for the cycles after."""
    if steps is None:
        return batches
    if whole is None:
        return batches.repeat().take(steps)
    return batches.concatenate(whole.repeat()).take(steps - step)


def started(dataset):
    """`dataset` without tf.data's no-op elimination: with the skips and takes a start position adds,
    whose counts are computed from the epoch number, it crashed the process (segfault in
    IsConstNodeWithValue, TF 2.21, the streamed reader with a holdout). All it removes is stages such
    as skip(0), which cost next to nothing."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_optimization.noop_elimination = False
    return dataset.with_options(options)


# The rewrites tf.data applies by default. Any of them makes an iterator's first use serialize the pipeline and
# run it again from the graph, which copies every tensor its functions capture (TF 2.21, all of AIST: the view
# of the mapped shards became 1.15 GB of the process's own memory, a cache of 1.15 GB took 2.3 GB, and the
# first batch came 0.5 s later).
DEFAULT_REWRITES = ("map_parallelization", "noop_elimination", "map_and_batch_fusion", "parallel_batch",
                    "inject_prefetch", "shuffle_and_repeat_fusion")


def unrewritten(dataset):
    """`dataset` with tf.data's default rewrites off, so a large tensor its functions capture (a cache, the
    mapped reader's view of the shards) is not copied. What they would do, our pipelines do already: maps
    are parallel, batches are of indices, and each pipeline ends in its own prefetch (level within this
    machine's noise, measured). A stage a user appends (a .map) is not parallelized for them:
    `num_parallel_calls` does that; turning a rewrite back on (Dataset.with_options) brings the copy back.
    Autotuning is off too: the iterator it tunes took 30-150 ms, now and then 500, to go away at the end
    of an epoch (waiting on its model's thread; a plain tf.data pipeline as well, TF 2.21), on the
    consumer's clock, every epoch fit reads afresh. Without it our gathers run GATHERS at once, and
    prefetch grows its buffer while the consumer finds it empty: per batch the same (measured)."""
    import tensorflow as tf

    options = tf.data.Options()
    for name in DEFAULT_REWRITES:
        setattr(options.experimental_optimization, name, False)
    options.autotune.enabled = False
    return dataset.with_options(options)


def first_batch(step: int, steps: int | None, examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Batch `step` of an epoch of `examples` is its batch first_batch(...): the same one, or with
    steps_per_epoch (epochs cycled to `steps` batches) that one modulo the epoch's batches."""
    count = batch_count(examples, batch_size, drop_remainder)
    return step % count if steps is not None and count else step


def sliced(values, batch_size: int, drop_remainder: bool):
    """from_tensor_slices(values).batch(batch_size, drop_remainder) of a structure of tensors of one length,
    each batch one slice of a reshape instead of batch_size steps of its own (a few us a batch)."""
    import tensorflow as tf

    length = tf.shape(tf.nest.flatten(values)[0], out_type=tf.int64)[0]
    whole = length // batch_size * batch_size

    def batched(tensor):
        return tf.reshape(tensor[:whole], tf.concat([[-1, batch_size], tf.shape(tensor, out_type=tf.int64)[1:]], 0))

    batches = tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(batched, values))
    if drop_remainder:
        return batches
    rest = tf.data.Dataset.from_tensors(tf.nest.map_structure(lambda tensor: tensor[whole:], values))
    return batches.concatenate(rest.take(tf.cast(length > whole, tf.int64)))


def index_batches(sampler: sampler_lib.Sampler, first: int, repeat: bool, batch_size: int, drop_remainder: bool,
                  keep: np.ndarray | None = None, seeds: bool = False, steps: int | None = None, step: int = 0,
                  counter: EpochCounter | None = None):
    """Batches of example indices [B] int64 in the sampler's order (seeds: (indices, window seed [2])),
    each epoch `steps` batches when given (see exactly); epoch `first` from its batch `step`: a slice of
    its order and its seeds, whatever the step costs the same. Without repeat, `counter` gives the epoch."""
    import tensorflow as tf

    def numbers(epoch):
        order = sampler.order(int(epoch), keep)
        skipped = step if epoch == first else 0
        return (order, sampler.batch_seeds(int(epoch), -(-len(order) // batch_size)), np.int64(skipped),
                np.int64(first_batch(skipped, steps, len(order), batch_size, drop_remainder)))

    def batched(order, batch_seeds):
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder)
        return tf.data.Dataset.zip((batches, tf.data.Dataset.from_tensor_slices(batch_seeds))) if seeds else batches

    def one_epoch(epoch):
        order, batch_seeds, skipped, start = tf.numpy_function(numbers, [epoch], (tf.int64,) * 4, stateful=False)
        order, batch_seeds = tf.ensure_shape(order, [None]), tf.ensure_shape(batch_seeds, [None, 2])
        if not step:
            return exactly(batched(order, batch_seeds), steps)
        rest = batched(order[start * batch_size:], batch_seeds[start:])
        return rest if steps is None else exactly(rest, steps, skipped, batched(order, batch_seeds))

    batches = each_epoch(first, repeat, one_epoch, counter)
    return started(batches) if step else batches


def streamed_windows(sampler: sampler_lib.Sampler, paths: list, epoch, afresh: bool = False, entry=None, held=None,
                     decode=None):
    """The records of one epoch (an int64 scalar tensor) in the sampler's order, as its windows: string
    batches of up to sampler.window records, each already permuted (the caller rebatches them, which
    copies each record once; splitting them into single records costs a step per record). Read shard
    after shard, each shard's record count checked a chunk at a time (record_files.checked_chunks).
    Graph ops only: the tf.data service can run it. afresh: windows permuted by a random draw each time
    they are read instead (a service job is the same graph every epoch; without it every epoch would
    repeat one order). entry: a sampler.Entry's (shards, records, phase, window) as int64 tensors: the
    epoch from that window on, its first shards not read (the caller drops the window's first `dropped`).
    held: (records, bounds) of damaged shards kept in memory (record_files.checked_chunks), their lost
    records b"" in the windows (the caller leaves them out). decode: a function of a string batch to a
    dict of batched tensors, applied to each chunk where it is read (in the interleave's threads, so
    shards are parsed in parallel), the windows then dicts: each record is parsed once and from then on
    moved as dense rows, not copied as an 80 KB string at each stage (not with held: a lost record has
    nothing to parse)."""
    import tensorflow as tf

    count = len(sampler.counts)
    shards = tf.range(count, dtype=tf.int64)
    if sampler.shuffle:
        shards = tf.gather(shards, draw(sampler.seed, epoch, sampler_lib.SHARD_RUN, count))
    if count >= sampler.workers:
        shards = shards[sampler.worker::sampler.workers]
    skipped, records_skipped, phase, window = entry if entry is not None else (0, 0, sampler.worker, 0)
    if entry is not None:
        shards = shards[skipped:]
    # The records before the entry's window are all in the first shard read: skipped there, still counted.
    skips = tf.zeros_like(shards)
    if entry is not None:
        skips = tf.concat([tf.reshape(tf.cast(records_skipped, tf.int64), [1]), skips], 0)[:tf.size(shards)]
    columns = (tf.gather(tf.constant(paths), shards), tf.gather(tf.constant(sampler.counts, tf.int64), shards), skips)
    if decode is not None and held is not None:
        raise ValueError("streamed_windows: decode and held exclude each other (a lost record cannot be parsed)")
    if held is None:
        def read(path, expected, skip):
            chunks = checked_chunks(path, expected, skip)
            return chunks if decode is None else light_map(chunks, decode)
    else:
        columns += (tf.gather(tf.constant(held[1], tf.int64), shards),)

        def read(path, expected, skip, bounds):
            return checked_chunks(path, expected, skip, held[0], bounds)
    files = tf.data.Dataset.from_tensor_slices(columns)
    # Shard after shard, whole: a block as long as the longest shard's chunks takes each one out before the next,
    # while the parallel interleave reads the following shards ahead (remote latency, parsing on several cores).
    # It opens no shard beyond those 4 ahead of time: at a fresh iterator's start the 4 more it opened by default
    # were read alongside the first, whose first window then came ~200 ms after the start instead of ~80 (measured).
    chunks = -(-max(sampler.counts, default=1) // CHUNK) + 1  # and its end's check, an empty chunk (a held shard: first)
    records = light_interleave(files, read, max(1, min(count, 4)), chunks)
    if count < sampler.workers:
        windows = records.unbatch().shard(sampler.workers, phase).batch(sampler.window)
    else:
        windows = records.rebatch(sampler.window)
    if not sampler.shuffle:
        return windows

    def permute(run, window):
        if afresh:
            run = fresh_run(run)
        order = draw(sampler.seed, epoch, run, records_in(window))
        return tf.nest.map_structure(lambda field: tf.gather(field, order), window)

    if afresh and _op_determinism():
        afresh = False
        warnings.warn("op determinism is enabled (tf.config.experimental.enable_op_determinism or "
                      "TF_DETERMINISTIC_OPS=1), which refuses an unseeded draw: through the tf.data service every "
                      "epoch now reads its windows in one order, not a fresh one", stacklevel=5)
    return light_map(windows.enumerate(window), permute)


def fresh_run(run):
    """A run number drawn from the operating system's entropy each time the op runs, whatever the global
    seed: tf.random.uniform without a seed takes one from it where one is set (train.py --seed), and every
    tf.data service job then drew the same numbers, one order every epoch. Refused under op determinism."""
    import tensorflow as tf

    drawn = tf.raw_ops.RandomUniformInt(shape=tf.constant([], tf.int32), minval=tf.constant(0, tf.int64),
                                        maxval=tf.constant(2**62, tf.int64), seed=0, seed2=0)
    return tf.bitwise.bitwise_xor(drawn, tf.cast(run, tf.int64))


def _op_determinism() -> bool:
    try:
        from tensorflow.python.framework import config
    except ImportError:
        return False
    return bool(getattr(config, "is_op_determinism_enabled", lambda: False)())


def records_in(batch):
    """The records in a batch of them: a string batch, or a dict of batched fields (streamed_windows' decode)."""
    import tensorflow as tf

    return tf.shape(tf.nest.flatten(batch)[0], tf.int64)[0]


def batch_seeds(sampler: sampler_lib.Sampler, epoch, first=0):
    """sampler.batch_seeds(epoch, ...) as an endless dataset of [2] int64 seeds, batch after batch from
    batch `first`."""
    import tensorflow as tf

    golden, base = tf.constant(GOLDEN, tf.uint64), _base(sampler.seed, epoch, sampler_lib.SEED_RUN)

    def seed(batch):
        positions = tf.cast(2 * batch + tf.constant([1, 2], tf.int64), tf.uint64)
        return tf.cast(tf.bitwise.right_shift(_splitmix64(base + golden * positions), tf.constant(1, tf.uint64)), tf.int64)

    return tf.data.Dataset.range(first, 2**62).map(seed)
