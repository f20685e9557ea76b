"""Every reader of a build side by side with what users would write instead, against this machine's limits.

    python benchmarks/readers.py [--examples 13939] [--shards 12] [--batch-sizes 64,32] [--best-of 5]
                                 [--fit-steps 20] [--fit-rounds 5] [--no-fit] [--only REGEX] [--tiny]
                                 [--out benchmarks/results/readers]

Writes a synthetic schema-4 build with the build's own writer (dancedata.write.ShardWriter: TFRecords,
their indexes; a sealed manifest and the TFDS metadata a build writes), all of AIST's size by
default (13,939 examples of [20, 2048] float16 in 12 shards: 1.15 GB of /tmp, and up to five copies in
memory, one per cache), and beside it the same features as one contiguous .npy file. Then, in one
process, interleaved in a shuffled order each round, each pass started once the process is quiet (settle),
the fastest of --best-of shuffled epochs of:

  ours     as_dataset mapped (the default; and as builds before feature rows have it, gathered by a
           numpy_function: the same files with their row alignment ignored), cached (ReadConfig(cache=True)), the device table
           (index_dataset, with the gather the model does on its device done here in a light tf.data map),
           streamed (ReadConfig(source="stream")), the ExampleSource NumPy loop, grain over ExampleSource
           (DataLoader with Batch, as docs/reading.md shows; MapDataset per record and per batch, the latter
           also as docs/reading.md shows it first: grain_batches read with 1 thread, 2 batches ahead), and
           PyTorch's DataLoader over ExampleSource where torch imports;
  users'   plain tf.data per example and per batch, each with and without .cache(), and TFDS's
           builder_from_directory(folder).as_dataset on the same folder;
  limits   np.take from the contiguous memmap into one reused batch (the best a random-access reader
           can do from the page cache), and np.copyto of a large array (memcpy).

Every reader delivers float16 features, a mask and a label per example (what train.py feeds the model)
and runs in this process (loader workers 0), so process CPU time is all of its work. Printed per batch
size: examples/s, the ratio to the memmap gather, the milliseconds to the first batch and the ratio of
the rate after it, CPU microseconds per example, the ratio of each TensorFlow reader drained in graph
(Dataset.reduce: no Python per batch, as fit's traced step takes them), and the input overhead:
Keras `fit` of the GRU classifier fed by each TensorFlow reader, step time divided by the same fit fed
one batch already in memory, repeated, and the same ratio of the process's CPU time per step (steadier
on a shared machine; --no-fit skips both). A JSON and the Markdown go to --out.
The machine is shared and noisy: compare figures within one run only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCHMARKS))

import numpy as np  # noqa: E402

AIST_EXAMPLES = 13939
SHUFFLE = 256  # what as_dataset's windows and the plain pipelines' buffers hold
MEMCPY_BYTES = 256 << 20  # well past every cache, so np.copyto runs at memory bandwidth
LIMIT = "limit: np.take from one contiguous memmap into a reused batch"
ROTATING = 8
ROTATING_LIMIT = f"limit, prefetched: the same np.take into {ROTATING} batch buffers in turn"
REFERENCE = "one batch already in memory, repeated"
TINY = dict(examples=96, shards=3, frames=4, dim=64, batch_sizes=[16], best_of=1, fit_steps=2, fit_rounds=1)


@dataclasses.dataclass
class Reader:
    """One way of reading the build. `epoch(n)` returns an iterable of epoch n's batches; `count(batch)`
    its examples. `dataset` (TensorFlow readers only) gives ((features, mask), label) batches for fit, or
    ((indices, positions), label) where `table` is the device table the model gathers from."""

    name: str
    group: str  # "ours", "users" or "limit"
    epoch: object
    count: object
    dataset: object = None
    table: object = None


def machine() -> dict:
    """What ran the benchmark: commit, CPUs (and the share this process may use), GPUs, versions."""
    import tensorflow as tf

    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=os.path.dirname(BENCHMARKS), capture_output=True, text=True,
                                  timeout=30)
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    quota = ""
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:  # cgroup v2: "quota period" or "max period"
            quota = handle.read().strip()
    except OSError:
        pass
    versions = {}
    for name in ("grain", "tensorflow_datasets", "torch", "keras"):
        try:
            versions[name] = getattr(__import__(name), "__version__", "?")
        except Exception:  # noqa: BLE001  (an optional package that does not import is simply absent)
            versions[name] = None
    return {
        "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "dancedata")),
        "cpu": model or platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cgroup_cpu_max": quota, "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "python": platform.python_version(), "tensorflow": tf.__version__, **versions,
    }


def make_build(folder: str, examples: int, shards: int, frames: int = 20, dim: int = 2048, classes: int = 10,
               distinct: int = 256, dtype: str = "float16") -> str:
    """A build of one train split in `folder` as the build writes it (write.ShardWriter's shards and
    indexes, a sealed manifest, the TFDS metadata) and `features.npy` beside it: the same features as one
    contiguous [N, T, D] array of `dtype`. Examples cycle through `distinct` random ones (any values cost
    the same to move); example i has label i % classes. Returns the .npy path."""
    import hashlib

    from dancedata import manifest, plan, schema, tfds_metadata, write

    pool = np.random.default_rng(0).standard_normal((min(distinct, examples), frames, dim)).astype(dtype)
    os.makedirs(os.path.join(folder, write.STATE_DIR), exist_ok=True)  # where commit() leaves each shard's record
    entries, mask = [], np.ones(frames, bool)
    for index in range(shards):
        name = plan.shard_name("train", index, shards)
        writer = write.ShardWriter(folder, name, frames, frames * dim * np.dtype(dtype).itemsize)
        for i in range(index * examples // shards, (index + 1) * examples // shards):
            row = {"video_id": f"v{i}", "sequence_id": f"v{i}", "genre": f"c{i % classes}"}
            example = schema.to_example(pool[i % len(pool)], mask, np.arange(frames), i % classes, row, dtype)
            writer.write(schema.serialize(example))
        # A build's unit key is a content hash; any hex string stands in for one here.
        record = writer.commit({"key": hashlib.sha256(name.encode()).hexdigest()})
        entries.append({key: record[key] for key in ("file", "num_examples", "bytes", "sha256", "index")})
    document = {
        "schema_version": schema.SCHEMA_VERSION, "feature_spec": schema.feature_spec(frames, dim, dtype),
        "classes": [f"c{i}" for i in range(classes)], "num_frames": frames, "feature_dim": dim,
        "feature_dtype": dtype, "extractor": {"backbone": "synthetic"},
        "splits": {"train": {"num_examples": examples, "shards": entries}},
    }
    tfds_metadata.write(folder, document, {entry["file"]: entry["bytes"] for entry in entries})
    manifest.write(folder, manifest.sealed(document))  # readers refuse a schema-4 manifest without its checksum
    path = os.path.join(folder, "features.npy")
    contiguous = np.lib.format.open_memmap(path, "w+", dtype, (examples, frames, dim))
    for start in range(0, examples, 1024):
        stop = min(start + 1024, examples)
        contiguous[start:stop] = pool[np.arange(start, stop) % len(pool)]
    contiguous.flush()
    del contiguous
    return path


def tf_count(batch) -> int:
    return int(batch[-1].shape[0])  # the label's length: no copy, no device sync


def numpy_count(batch) -> int:
    return len(batch["label"])


class Shared:
    """What several batch sizes' readers can share (caches, the table, the source), made once."""

    def __init__(self, folder: str, features_path: str):
        import tensorflow as tf

        import dancedata
        from dancedata.device_table import load_table

        self.folder = folder
        self.builder = dancedata.DatasetBuilder(folder)
        self.source = dancedata.ExampleSource(folder, "train")
        self.table = load_table(self.builder, ["train"])
        self.memmap = np.load(features_path, mmap_mode="r")
        self.frames, self.dim = self.builder.info.num_frames, self.builder.info.feature_dim
        self.files = self.builder.files("train")
        frames, dim = self.frames, self.dim
        # What a user writes from the TFRecord format alone: the three fields a model needs.
        self.spec = {"features": tf.io.FixedLenFeature([], tf.string),
                     "mask": tf.io.FixedLenFeature([frames], tf.int64), "label": tf.io.FixedLenFeature([], tf.int64)}

        def parse_single(record):
            example = tf.io.parse_single_example(record, self.spec)
            features = tf.reshape(tf.io.decode_raw(example["features"], tf.float16), [frames, dim])
            return (features, example["mask"] > 0), example["label"]

        def parse_batch(records):
            batch = tf.io.parse_example(records, self.spec)
            features = tf.reshape(tf.io.decode_raw(batch["features"], tf.float16), [-1, frames, dim])
            return (features, batch["mask"] > 0), batch["label"]

        self.parse_single, self.parse_batch = parse_single, parse_batch
        autotune = tf.data.AUTOTUNE
        # One cache each, shared by every batch size: the per-example one holds parsed examples, the
        # per-batch one the records (parse_example needs a batch, so it runs after the cache).
        self.parsed_cache = tf.data.TFRecordDataset(self.files).map(parse_single, num_parallel_calls=autotune).cache()
        self.record_cache = tf.data.TFRecordDataset(self.files).cache()
        examples, frames, dim = self.table.features.shape  # frame rows, as the device model holds them
        self.table_features = tf.constant(self.table.features.reshape(examples * frames, dim))
        self.table_masks = tf.constant(self.table.masks.reshape(-1))


def make_readers(shared: Shared, batch_size: int) -> list:
    """Every reader at `batch_size`, shuffled with seed 0; the limits last."""
    import tensorflow as tf

    from dancedata import ExampleConfig, ReadConfig
    from dancedata.device_table import index_dataset
    from dancedata.light_stages import light_map

    builder, source, autotune = shared.builder, shared.source, tf.data.AUTOTUNE
    half = ExampleConfig(cast=False)  # float16 out, as train.py feeds the model (it casts on its device)

    def ours(**read):
        dataset = builder.as_dataset("train", batch_size=batch_size, example_config=half,
                                     read_config=ReadConfig(shuffle=True, seed=0, **read))
        return lambda epoch: dataset  # each new iteration of as_dataset takes the next epoch's order

    def gathered_in_numpy():  # the mapped reader of builds before feature rows: one numpy_function per batch
        from dancedata import mapped_shards

        aligned_rows = mapped_shards.aligned_rows
        mapped_shards.aligned_rows = lambda paths, row: None  # the same files, as if their rows were not aligned
        try:
            return ours()
        finally:
            mapped_shards.aligned_rows = aligned_rows

    indices = index_dataset(builder, "train", shared.table, batch_size=batch_size,
                            read_config=ReadConfig(shuffle=True, seed=0))
    features, masks, frames = shared.table_features, shared.table_masks, shared.frames

    def gather(inputs, label):  # what the on-device model does with each batch of indices (training.GatherFromTable)
        index, positions = inputs
        rows = index[:, None] * frames + tf.cast(positions, index.dtype)
        return (tf.gather(features, rows), tf.gather(masks, rows)), tf.cast(label, tf.int64)

    # In training the gather runs inside the model's traced step, optimized once. A Dataset.map would have
    # grappler optimize it again at every epoch's new iterator (~8 ms of a batch-32 epoch's ~120, measured),
    # a cost fit never pays, so the stand-in is a light map: the same ops per batch, GATHERS at once, as the
    # other index readers run theirs. (Its label comes out int64: a light function returns no int32, and
    # only its count is read here; the fit column trains on index_dataset itself.)
    gathered = light_map(indices, gather, parallel=True).prefetch(autotune)

    def numpy_loop(epoch):
        return (source.batch(keys) for keys in source.batches(batch_size, seed=0, epoch=epoch))

    readers = [
        Reader("dancedata mapped (as_dataset, default)", "ours", ours(), tf_count),
        Reader("dancedata mapped, gathered in numpy (builds before feature rows)", "ours", gathered_in_numpy(), tf_count),
        Reader("dancedata cached (ReadConfig(cache=True))", "ours", ours(cache=True), tf_count),
        Reader("dancedata device table (index_dataset + the model's gather)", "ours", lambda epoch: gathered, tf_count,
               dataset=indices, table=shared.table),
        Reader("dancedata streamed (ReadConfig(source=\"stream\"))", "ours", ours(source="stream"), tf_count),
        Reader("ExampleSource.batches + .batch (NumPy loop)", "ours", numpy_loop, numpy_count),
    ]
    readers += grain_readers(source, batch_size) + torch_readers(source, batch_size)

    def plain(chain):
        return lambda epoch: chain

    shuffled = tf.data.TFRecordDataset(shared.files).shuffle(SHUFFLE)
    readers += [
        Reader(f"plain tf.data per example: .shuffle({SHUFFLE}).map(parse_single).batch({batch_size})", "users",
               plain(shuffled.map(shared.parse_single, num_parallel_calls=autotune).batch(batch_size)
                     .prefetch(autotune)),
               tf_count),
        Reader(f"plain tf.data per example, cached: .map(parse_single).cache().shuffle({SHUFFLE}).batch({batch_size})",
               "users", plain(shared.parsed_cache.shuffle(SHUFFLE).batch(batch_size).prefetch(autotune)), tf_count),
        Reader(f"plain tf.data per batch: .shuffle({SHUFFLE}).batch({batch_size}).map(tf.io.parse_example)", "users",
               plain(shuffled.batch(batch_size).map(shared.parse_batch, num_parallel_calls=autotune)
                     .prefetch(autotune)),
               tf_count),
        Reader(f"plain tf.data per batch, cached: .cache().shuffle({SHUFFLE}).batch({batch_size}).map(parse_example)",
               "users", plain(shared.record_cache.shuffle(SHUFFLE).batch(batch_size)
                              .map(shared.parse_batch, num_parallel_calls=autotune).prefetch(autotune)), tf_count),
    ]
    readers += tfds_readers(shared.folder, batch_size)
    readers += limit_readers(shared, batch_size)
    for reader in readers:
        if reader.dataset is None and reader.group != "limit" and reader.count is tf_count:
            reader.dataset = reader.epoch(0)
    return readers


def grain_readers(source, batch_size: int) -> list:
    try:
        import grain.python as grain
    except ImportError:
        return []

    def loader(epoch):  # docs/reading.md's loader, with grain's Batch
        sampler = source.grain_sampler(seed=0, num_epochs=1, first_epoch=epoch)
        return grain.DataLoader(data_source=source, sampler=sampler, operations=[grain.Batch(batch_size)],
                                shard_options=grain.NoSharding(), worker_count=0)

    per_record = grain.MapDataset.source(source).shuffle(seed=0).batch(batch_size)

    def per_batch(epoch):  # grain over whole batches: one ExampleSource.batch call each, grain's read options
        return grain.MapDataset.source(list(source.batches(batch_size, seed=0, epoch=epoch))).map(source.batch)

    # What docs/reading.md shows first. grain's default ReadOptions (16 threads, 500 elements ahead) hold up to
    # 500 fresh batches, each paid for in page faults: at batch 64 the row above swung 22,000-107,000
    # examples/s between runs on the 2-core VM, with 4-7 minor faults per example (measured).
    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)

    def documented(epoch):
        return source.grain_batches(batch_size, seed=0, first_epoch=epoch).to_iter_dataset(options)

    return [
        Reader(f"grain DataLoader(ExampleSource, Batch({batch_size})), docs/reading.md", "ours", loader, numpy_count),
        Reader(f"grain MapDataset.source(ExampleSource).shuffle().batch({batch_size}) (per record)", "ours",
               lambda epoch: per_record, numpy_count),
        Reader("grain MapDataset of index batches .map(ExampleSource.batch)", "ours", per_batch, numpy_count),
        Reader("grain ExampleSource.grain_batches, ReadOptions(num_threads=1, prefetch_buffer_size=2), docs/reading.md",
               "ours", documented, numpy_count),
    ]


def torch_readers(source, batch_size: int) -> list:
    try:
        import torch
    except ImportError:
        return []

    def loader(epoch):  # docs/reading.md's loader, in this process: its CPU time is counted
        return torch.utils.data.DataLoader(source, batch_sampler=list(source.batches(batch_size, seed=0, epoch=epoch)),
                                           num_workers=0)

    return [Reader("PyTorch DataLoader(ExampleSource, batch_sampler=batches)", "ours", loader, numpy_count)]


def tfds_readers(folder: str, batch_size: int) -> list:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return []
    import tensorflow as tf

    def to_inputs(example):
        return (example["features"], example["mask"] > 0), example["label"]

    autotune = tf.data.AUTOTUNE
    dataset = (tfds.builder_from_directory(folder).as_dataset(split="train", shuffle_files=True)
               .map(to_inputs, num_parallel_calls=autotune).shuffle(SHUFFLE).batch(batch_size).prefetch(autotune))
    return [Reader("TFDS builder_from_directory(folder).as_dataset(split=\"train\")", "users", lambda epoch: dataset,
                   tf_count)]


def limit_readers(shared: Shared, batch_size: int) -> list:
    memmap, examples = shared.memmap, len(shared.memmap)
    reused = np.empty((batch_size,) + memmap.shape[1:], memmap.dtype)

    def gather(epoch):
        batches = list(shared.source.batches(batch_size, seed=0, epoch=epoch))  # the readers' order: the same pages
        # mode="clip": mode="raise" gathers into a temporary buffer first, then copies into `out`.
        return (np.take(memmap, keys, axis=0, out=reused[:len(keys)], mode="clip") for keys in batches)

    example_bytes = memmap[0].nbytes
    size = min(MEMCPY_BYTES, examples * example_bytes)
    source, target = np.ones(size, np.uint8), np.empty(size, np.uint8)

    def copy(epoch):  # one element: the examples' worth of bytes moved (a generator: it copies on the clock)
        np.copyto(target, source)
        yield size / example_bytes

    # A prefetching reader has several batches in flight: the same copy into ROTATING buffers in turn, none of
    # which stays in the CPU's cache as the one reused batch does.
    rotating = [np.empty_like(reused) for _ in range(ROTATING)]

    def gather_rotating(epoch):
        batches = list(shared.source.batches(batch_size, seed=0, epoch=epoch))
        return (np.take(memmap, keys, axis=0, out=rotating[k % ROTATING][:len(keys)], mode="clip")
                for k, keys in enumerate(batches))

    import tensorflow as tf

    one = tf.data.Dataset.from_tensors((tf.zeros([batch_size, 1], tf.float16),)).repeat()

    def floor(epoch):  # a tf.data loop from Python with no work in it: what every tf.data reader pays per batch
        return one.take(-(-examples // batch_size))

    return [Reader(LIMIT, "limit", gather, len),
            Reader(ROTATING_LIMIT, "limit", gather_rotating, len),
            Reader(f"memcpy: np.copyto of {size / 2**20:.3g} MiB", "limit", copy, lambda moved: moved),
            Reader("tf.data floor: a batch of nothing, looped over from Python (not a limit: a per-batch cost)",
                   "limit", floor, tf_count)]


def run_pass(reader: Reader, epoch: int) -> tuple:
    """(seconds, process CPU seconds, examples, seconds to the first batch, examples in it) of one epoch of
    `reader` (made before the clock starts; its iterator is made on the clock, as each epoch makes one)."""
    batches = reader.epoch(epoch)
    cpu, start, examples, first = time.process_time(), time.perf_counter(), 0, None
    for batch in batches:
        examples += reader.count(batch)
        if first is None:
            first = (time.perf_counter() - start, examples)
    first = first or (0.0, 0)
    return time.perf_counter() - start, time.process_time() - cpu, examples, *first


def run_in_graph(reader: Reader, epoch: int) -> tuple:
    """run_pass's figures of one epoch of a TensorFlow reader drained by
    Dataset.reduce: no Python per batch, as fit's traced step takes its batches (a Python loop pays
    TensorFlow's eager cost per batch, the tf.data floor's row, on top of the reader's own work)."""
    import tensorflow as tf

    dataset = reader.epoch(epoch)
    cpu, start = time.process_time(), time.perf_counter()
    seen = int(dataset.reduce(tf.constant(0, tf.int64),
                              lambda count, *batch: count + tf.shape(tf.nest.flatten(batch)[-1], tf.int64)[0]))
    seconds = time.perf_counter() - start
    return seconds, time.process_time() - cpu, seen, seconds, seen  # no first batch seen apart: run_pass's shape


def after_first(result: tuple) -> float | None:
    """Examples/s of a pass after its first batch (tfds.benchmark's "first excluded"): the rate once the
    iterator is made and its buffers filled; None for a pass of one batch."""
    seconds, _, examples, first_seconds, first_examples = result
    if examples <= first_examples or seconds <= first_seconds:
        return None
    return (examples - first_examples) / (seconds - first_seconds)


def settle(quiet: float = 0.1, window: float = 0.02, limit: float = 2.0) -> None:
    """Waits (at most `limit` seconds) until this process uses under `quiet` of a core over `window` seconds,
    after a garbage collection: the reader timed before may still be winding down (an iterator's threads
    ending, its buffers freed) on the clock of the one timed next. Without it the NumPy loop read 0.86-0.91x
    the limit among every reader, 0.92-0.94x with only the limits beside it (same machine, same session)."""
    import gc

    gc.collect()
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        cpu, start = time.process_time(), time.perf_counter()
        time.sleep(window)
        if time.process_time() - cpu < quiet * (time.perf_counter() - start):
            return


def throughput(readers: list, examples: int, best_of: int, seed: int = 0, run=run_pass) -> tuple:
    """({name: (seconds, CPU seconds, examples, first-batch seconds, its examples) of its fastest pass},
    {name: its fastest rate after the first batch, or None}): one untimed pass each first (caches
    filled, functions traced, shards mapped and checked), then best_of rounds, each in a new random order.
    `run` times one pass (run_pass: a Python loop; run_in_graph: Dataset.reduce)."""
    rng, best, steady = random.Random(seed), {}, {}
    for reader in readers:
        seen = run(reader, 0)[2]
        if reader.group != "limit" and seen != examples:
            raise RuntimeError(f"{reader.name} gave {seen} examples in an epoch, not {examples}")
    for round_ in range(best_of):
        order = list(readers)
        rng.shuffle(order)
        for reader in order:
            settle()
            result = run(reader, round_ + 1)
            if reader.name not in best or result[0] / result[2] < best[reader.name][0] / best[reader.name][2]:
                best[reader.name] = result
            rate = after_first(result)
            if rate is not None and (steady.get(reader.name) is None or rate > steady[reader.name]):
                steady[reader.name] = rate
            steady.setdefault(reader.name, None)
    return best, steady


def epoch_timer():
    """A Keras callback keeping each epoch's (wall seconds, process CPU seconds) in `.seconds`."""
    import keras

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self._start = [], (0.0, 0.0)

        def on_epoch_begin(self, epoch, logs=None):
            self._start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append((time.perf_counter() - self._start[0], time.process_time() - self._start[1]))

    return EpochTimes()


def gru(classes: int, frames: int, dim: int, table=None):
    """The GRU classifier compiled as train_throughput compiles it; with `table`, train.py's --cache device model."""
    from dancedata import models

    model = models.build_model("gru", classes, frames, dim, np.zeros(dim), np.ones(dim))
    if table is not None:
        from dancedata.models import training

        return training.on_device_table(model, table, None,
                                        lambda m: m.compile("adam", "sparse_categorical_crossentropy") or m)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def fit_steps(readers: list, reference, steps: int, rounds: int, classes: int, frames: int, dim: int, models: dict,
              seed: int = 0) -> dict:
    """{name: (wall seconds, process CPU seconds) per step} of fit fed by each TensorFlow reader (and by
    `reference`, one batch in memory repeated, under REFERENCE): each round fits every one in a new
    random order for two epochs of `steps` steps and times the second (the first starts the iterator,
    and the first time also traces the step); the smallest of the rounds is kept, for each figure.
    CPU time is the steadier of the two on a shared machine (another job's burst stretches a step's wall
    time, not this process's CPU), and on a CPU-only machine it counts the reader's work and the model's
    alike. One model serves every reader of the same kind (features, or indices into a table): a step
    costs the same whichever reader fed the last one, and each trace is paid once. `models` keeps them
    across calls."""
    import keras

    feeds = [(reader.name, reader.dataset, reader.table) for reader in readers if reader.dataset is not None]
    feeds.append((REFERENCE, reference, None))
    rng, best = random.Random(seed), {}
    for _ in range(rounds):
        rng.shuffle(feeds)
        for name, dataset, table in feeds:
            kind = "table" if table is not None else "features"
            if kind not in models:
                keras.utils.set_random_seed(0)
                models[kind] = gru(classes, frames, dim, table)
            timer = epoch_timer()
            models[kind].fit(dataset.repeat(), steps_per_epoch=steps, epochs=2, verbose=0, shuffle=False,
                             callbacks=[timer])
            wall, cpu = (seconds / steps for seconds in timer.seconds[-1])
            previous = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(previous[0], wall), min(previous[1], cpu))
    return best


def reference_batch(shared: Shared, batch_size: int):
    """One batch as the mapped reader gives it, as constant tensors, repeated: fit fed with no input work."""
    import tensorflow as tf

    from dancedata import ExampleConfig, ReadConfig

    mapped = shared.builder.as_dataset("train", batch_size=batch_size, example_config=ExampleConfig(cast=False),
                                       read_config=ReadConfig(shuffle=True, seed=0))
    batch = next(iter(mapped))

    def unknown_batch(tensor):  # the readers' batch dimension is unknown: the same traced step for all (no copy)
        return tf.compat.v1.placeholder_with_default(tensor, [None, *tensor.shape[1:]])

    return tf.data.Dataset.from_tensors(batch).map(lambda *element: tf.nest.map_structure(unknown_batch, element))


def measure(shared: Shared, batch_size: int, best_of: int, steps: int | None, models: dict, fit_rounds: int = 5,
            classes: int = 10, fed_only: bool = False, only: str | None = None) -> dict:
    """The figures of one batch size: {"rows": [...], "limit_examples_per_s", "fit_reference_step_s", ...};
    fed_only: only the readers fit can be fed (TensorFlow's), and the limits; only: the readers whose name
    matches that regular expression, and the limits."""
    import re

    readers = [reader for reader in make_readers(shared, batch_size)
               if reader.group == "limit" or ((not fed_only or reader.dataset is not None)
                                              and (only is None or re.search(only, reader.name)))]
    examples = len(shared.source)
    best, steady = throughput(readers, examples, best_of)
    # Each TensorFlow reader and the tf.data floor once more, drained in graph (run_in_graph)
    drained = throughput([reader for reader in readers if reader.count is tf_count], examples, best_of, 1, run_in_graph)[0]
    limit = best[LIMIT][2] / best[LIMIT][0]
    steady_limit = steady[LIMIT]
    prefetched = best[ROTATING_LIMIT][2] / best[ROTATING_LIMIT][0]
    steps_taken = fits = None
    if steps:
        steps_taken = max(1, min(steps, examples // batch_size))
        fits = fit_steps(readers, reference_batch(shared, batch_size), steps_taken, fit_rounds, classes, shared.frames,
                         shared.dim, models)
    rows = []
    for reader in readers:
        seconds, cpu, seen, first_seconds, _ = best[reader.name]
        rate, rate_after_first = seen / seconds, steady[reader.name]
        step, step_cpu = fits.get(reader.name, (None, None)) if fits else (None, None)
        graph_seconds, graph_cpu, graph_seen = drained.get(reader.name, (None, None, None))[:3]
        graph_rate = graph_seen / graph_seconds if graph_seconds else None
        rows.append({"in_graph_examples_per_s": graph_rate, "in_graph_ratio_to_limit": graph_rate and graph_rate / limit,
                     "in_graph_cpu_us_per_example": graph_cpu / graph_seen * 1e6 if graph_seconds else None,
                     "reader": reader.name, "group": reader.group, "examples_per_s": rate,
                     "ratio_to_limit": rate / limit, "ratio_to_prefetched_limit": rate / prefetched,
                     "cpu_us_per_example": cpu / seen * 1e6, "seconds": seconds,
                     "first_batch_s": first_seconds, "after_first_examples_per_s": rate_after_first,
                     "after_first_ratio_to_limit": rate_after_first / steady_limit if rate_after_first else None,
                     "examples": seen,
                     "fit_step_s": step, "fit_step_ratio": step / fits[REFERENCE][0] if step else None,
                     "fit_step_cpu_s": step_cpu, "fit_cpu_ratio": step_cpu / fits[REFERENCE][1] if step else None})
    result = {"batch_size": batch_size, "examples": examples, "limit_examples_per_s": limit,
              "after_first_limit_examples_per_s": steady_limit, "rows": rows,
              "fit_steps": steps_taken, "fit_rounds": fit_rounds if steps else None}
    if fits:
        result.update(fit_reference_step_s=fits[REFERENCE][0], fit_reference_step_cpu_s=fits[REFERENCE][1],
                      gru_examples_per_s=batch_size / fits[REFERENCE][0])
    return result


def markdown(result: dict) -> str:
    """One batch size's table."""
    lines = [f"batch {result['batch_size']}, {result['examples']} examples an epoch, fastest of the passes"
             + (f"; fit: {result['fit_steps']} steps, smallest of {result['fit_rounds']} rounds, the GRU fed "
                f"{REFERENCE} consumes {result['gru_examples_per_s']:,.0f} examples/s"
                if result.get("fit_reference_step_s") else ""),
             "", "| reader | examples/s | × limit | × prefetched limit | first batch ms "
             "| × limit, first batch excluded | CPU µs/example | × limit, drained in graph | fit step ÷ in-memory "
             "| fit CPU/step ÷ in-memory |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        fit = f"{row['fit_step_ratio']:.2f}×" if row["fit_step_ratio"] else ""
        fit_cpu = f"{row['fit_cpu_ratio']:.2f}×" if row["fit_cpu_ratio"] else ""
        steady = f"{row['after_first_ratio_to_limit']:.2f}" if row["after_first_ratio_to_limit"] else ""
        graph = f"{row['in_graph_ratio_to_limit']:.2f}" if row["in_graph_ratio_to_limit"] else ""
        lines.append(f"| {row['reader']} | {row['examples_per_s']:,.0f} | {row['ratio_to_limit']:.2f} | "
                     f"{row['ratio_to_prefetched_limit']:.2f} | {row['first_batch_s'] * 1e3:.1f} | {steady} | "
                     f"{row['cpu_us_per_example']:.0f} | {graph} | {fit} | {fit_cpu} |")
    return "\n".join(lines)


def skipped() -> dict:
    """{row: why} for the readers this machine cannot run."""
    missing = {}
    for module, row in (("torch", "PyTorch DataLoader"), ("grain", "grain readers"),
                        ("tensorflow_datasets", "TFDS")):
        try:
            __import__(module)
        except ImportError:
            missing[row] = f"{module} does not import here"
    return missing


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=AIST_EXAMPLES,
                        help=f"synthetic train examples (default {AIST_EXAMPLES}, all of AIST at 20 frames: 1.15 GB)")
    parser.add_argument("--shards", type=int, default=12, help="shards they are written in (default 12, as AIST's)")
    parser.add_argument("--batch-sizes", default="64,32", help="comma-separated (default 64,32)")
    # 5, not 3: on the 2-core VM one reader's epochs in one process spread 0.56-0.91x the limit at batch 32
    # (the same code, interleaved), so the fastest of 3 still moved by more than a target's margin run to run.
    parser.add_argument("--best-of", type=int, default=5, help="timed rounds, each reader's fastest kept (default 5)")
    parser.add_argument("--fit-steps", type=int, default=20, help="steps of each timed fit epoch (default 20)")
    parser.add_argument("--fit-rounds", type=int, default=5,
                        help="timed fit rounds, smallest kept (default 5: fit's steps swing most on a shared machine)")
    parser.add_argument("--no-fit", action="store_true", help="skip the fit column (the input overhead)")
    parser.add_argument("--only", metavar="REGEX",
                        help="only the readers whose name this regular expression finds (the limits always run)")
    parser.add_argument("--out", default=os.path.join(BENCHMARKS, "results", "readers"),
                        help="folder for readers.json and readers.md (default benchmarks/results/readers)")
    parser.add_argument("--tiny", action="store_true",
                        help="a few tiny examples, one round, two fit steps: checks that every reader runs (CI)")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    args.frames, args.dim = 20, 2048
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    return args


def run(args, folder: str) -> dict:
    """Builds into `folder` and measures every batch size; the JSON document."""
    start = time.perf_counter()
    features_path = make_build(folder, args.examples, args.shards, args.frames, args.dim)
    written = time.perf_counter() - start
    shared = Shared(folder, features_path)
    models, results = {}, []
    for batch_size in args.batch_sizes:
        results.append(measure(shared, batch_size, args.best_of, None if args.no_fit else args.fit_steps, models,
                               args.fit_rounds, only=args.only))
    size = sum(os.path.getsize(path) for path in shared.files)
    return {"machine": machine(), "examples": args.examples, "shards": args.shards, "frames": args.frames,
            "feature_dim": args.dim, "shard_bytes": size, "write_s": written, "best_of": args.best_of,
            "skipped": skipped(), "results": results, "seconds": time.perf_counter() - start}


def report(document: dict) -> str:
    m = document["machine"]
    modified = " (dancedata/ modified)" if m["dirty"] else ""
    header = (f"commit {m['commit'] or 'unknown (not a git checkout)'}{modified}; {m['cpu']}, {m['usable_cpus']} of "
              f"{m['cpus']} CPUs usable (cgroup cpu.max: {m['cgroup_cpu_max'] or 'n/a'}), GPU: "
              f"{', '.join(m['gpus']) or 'none'}; TensorFlow {m['tensorflow']}, grain {m['grain']}, "
              f"TFDS {m['tensorflow_datasets']}, torch {m['torch']}; {document['examples']} examples of "
              f"[{document['frames']}, {document['feature_dim']}] float16 in {document['shards']} shards "
              f"({document['shard_bytes'] / 1e9:.2f} GB, page cache warm), best of {document['best_of']}")
    parts = [header] + [markdown(result) for result in document["results"]]
    if document["skipped"]:
        parts.append("not run: " + "; ".join(f"{row} ({why})" for row, why in document["skipped"].items()))
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    args = parse_args(argv)
    folder = tempfile.mkdtemp(prefix="dancedata-readers-")
    try:
        document = run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = report(document)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "readers.json"), "w") as handle:
        json.dump(document, handle, indent=1)
    with open(os.path.join(args.out, "readers.md"), "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
