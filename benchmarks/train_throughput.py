"""Training throughput: an epoch fed from shards against the same model fed from numpy, and the input
pipeline alone against what the model consumes.

    python benchmarks/train_throughput.py [--examples 4096] [--batch-size 64]

Writes a synthetic schema-4 build ([20, 2048] float16 features, like InceptionV3 on 20 frames) with
the writer build_shards uses (TFRecords and their indexes), so the reader does exactly its real work.
In one run, the uncached pipeline is measured with the shards memory-mapped and gathered through
their indexes (local files, the default; the first epoch includes the one-time check of every
record's CRCs, reported on its own too) and with the TFRecords streamed (ReadConfig(source="stream"): object storage,
tf.data service, metadata), and the cached pipeline after its first epoch. Every variant checks every
record's CRCs: mapped ones once per process, streamed ones as TFRecordDataset reads them.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

EPOCHS = 30  # train.py's default: the run over which the one-time check is spread


def write_build(folder, features, labels, classes, shards):
    """A schema-4 build of one train split in `folder`: example i holds features[i] ([T, D] float16)
    and labels[i], written by write.ShardWriter in `shards` shards. Returns the manifest."""
    from dancedata import manifest, plan, schema, write

    frames, dim = np.shape(features[0])
    os.makedirs(os.path.join(folder, write.STATE_DIR), exist_ok=True)  # where commit() leaves each shard's record
    examples, entries = len(labels), []
    for index in range(shards):
        name = plan.shard_name("train", index, shards)
        writer = write.ShardWriter(folder, name, frames, frames * dim * 2)
        for i in range(index * examples // shards, (index + 1) * examples // shards):
            row = {"video_id": f"v{i}", "sequence_id": f"v{i}", "genre": f"c{labels[i]}"}
            mask = np.ones(frames, bool)
            example = schema.to_example(features[i], mask, np.arange(frames), labels[i], row, "float16")
            writer.write(schema.serialize(example))
        # A unit key as plan.digest spells one (64 hex digits): the manifest's check refuses any other.
        record = writer.commit({"key": hashlib.sha256(f"synthetic-{name}".encode()).hexdigest()})
        entries.append({key: record[key] for key in ("file", "num_examples", "bytes", "sha256", "index")})
    document = {
        "schema_version": schema.SCHEMA_VERSION, "feature_spec": schema.feature_spec(frames, dim, "float16"),
        "classes": [f"c{i}" for i in range(classes)], "num_frames": frames, "feature_dim": dim,
        "feature_dtype": "float16", "splits": {"train": {"num_examples": examples, "shards": entries}},
    }
    # Sealed as a build seals it: the loader refuses a schema-4 manifest without its checksum.
    document = manifest.sealed(document)
    manifest.write(folder, document)
    return document


@contextlib.contextmanager
def timing_checks():
    """Seconds spent in each shard_index.check call made inside the block (the check a shard gets
    when first mapped in a process): a list that fills as shards are mapped."""
    from dancedata import shard_index

    original, spent = shard_index.check, []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    shard_index.check = timed
    try:
        yield spent
    finally:
        shard_index.check = original


def stage_costs(builder, batch_size, best_of):
    """Microseconds per example that each step of the streamed TFRecord chain adds, measured
    cumulatively; the decode steps are the reader's own (DatasetBuilder.decode)."""
    import tensorflow as tf

    from dancedata import schema

    paths = builder.files("train")
    files = tf.data.Dataset.from_tensor_slices(paths)
    records = files.interleave(  # read as as_dataset reads
        lambda path: tf.data.TFRecordDataset(path, buffer_size=8 << 20), cycle_length=min(len(paths), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    batches = records.batch(batch_size)
    spec = schema.parse_spec({k: v for k, v in builder.manifest["feature_spec"].items() if k in schema.TRAINING_KEYS})
    chains = {
        "read + batch": batches,
        "parse_example": batches.map(lambda s: tf.io.parse_example(s, spec), num_parallel_calls=tf.data.AUTOTUNE),
        "decode_raw": batches.map(lambda s: builder.decode(s, schema.TRAINING_KEYS, cast=False),
                                  num_parallel_calls=tf.data.AUTOTUNE),
        "fp16 -> fp32 cast": batches.map(lambda s: builder.decode(s, schema.TRAINING_KEYS),
                                         num_parallel_calls=tf.data.AUTOTUNE),
    }
    costs, previous = {}, 0.0
    for name, chain in chains.items():
        total = best_of(chain)[1] / builder.info.splits["train"] * 1e6
        costs[name], previous = total - previous, total
    return costs


def passes(make):
    """(seconds of making the dataset and its first pass, seconds of the fastest of five later passes:
    the pipeline's capacity, less this machine's noise). `make` is a dataset or a function giving one."""
    start = time.perf_counter()
    dataset = make() if callable(make) else make
    for _ in dataset:
        pass
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in dataset:
            pass
        best = min(best, time.perf_counter() - start)
    return first, best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=4096, help="synthetic train examples (default 4096: 0.34 GB)")
    parser.add_argument("--shards", type=int, default=4, help="shards they are written in (default 4)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="gru", help="the model whose consumption the pipelines are compared with")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "train.json"),
                        help="where the figures go (default benchmarks/results/train.json)")
    args = parser.parse_args()

    import tensorflow as tf

    from dancedata import DatasetBuilder, ExampleConfig, ReadConfig

    folder = tempfile.mkdtemp(prefix="dancedata-train-bench-")
    try:
        stored = np.random.default_rng(0).standard_normal((args.examples, 20, 2048)).astype(np.float16)
        labels = np.arange(args.examples) % 10
        built = write_build(folder, stored, labels, classes=10, shards=args.shards)
        features = stored.astype(np.float32)
        del stored
        builder = DatasetBuilder(folder)
        options = dict(batch_size=args.batch_size, read_config=ReadConfig(shuffle=True, seed=0))
        half = ExampleConfig(cast=False)

        # (a) First, while nothing in this process has mapped the shards: as_dataset maps them and checks
        # every record's CRCs (once per process per file version), so this first epoch carries the check.
        with timing_checks() as checks:
            mapped = passes(lambda: builder.as_dataset("train", **options, example_config=half))
        if len(checks) != args.shards:
            raise RuntimeError(f"expected one check per shard when first mapped, saw {len(checks)}")
        # (b) The TFRecords streamed by TFRecordDataset, which checks every record's CRCs as it reads it.
        streamed = passes(lambda: builder.as_dataset("train", batch_size=args.batch_size, example_config=half,
                                                     read_config=ReadConfig(shuffle=True, seed=0, source="stream")))
        # (c) train.py keeps the decoded train split in memory when it fits (4096 examples: 0.34 GB).
        cached_dataset = builder.as_dataset("train", batch_size=args.batch_size, example_config=half,
                                            read_config=ReadConfig(shuffle=True, seed=0, cache=True))
        pipelines = {
            "(a) uncached, shards mapped through their indexes (default)": mapped,
            "(b) uncached, TFRecords streamed (source='stream')": streamed,
            "(c) cached (ReadConfig(cache=True))": passes(cached_dataset),
        }
        fits, index_pipeline = consumption(args, builder, options, features, labels, cached_dataset)
        pipelines["indices for --cache device"] = index_pipeline
        stages = stage_costs(builder, args.batch_size, passes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    size = sum(shard["bytes"] for shard in built["splits"]["train"]["shards"])
    gpus = ", ".join(d.name for d in tf.config.list_physical_devices("GPU")) or "none"
    header = (f"machine: {platform.machine()}, {os.cpu_count()} cores, GPU: {gpus}; TensorFlow {tf.__version__}; "
              f"{args.examples} examples of [20, 2048] float16 in {args.shards} shards ({size / 1e9:.2f} GB), "
              f"batch {args.batch_size}, model {args.model}")
    report(header, args.examples, size, fits, pipelines, checks, stages)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"header": header, "examples": args.examples, "shard_bytes": size, "fit_epoch_s": fits,
                   "consumed_examples_per_s": args.examples / min(fits.values()), "check_s": checks,
                   "pipeline_s": {name: {"first_epoch": first, "best_of_5": best}
                                  for name, (first, best) in pipelines.items()},
                   "stage_us_per_example": stages}, handle, indent=2)


def consumption(args, builder, options, features, labels, cached16):
    """({how the model is fed: seconds of its second epoch}, the --cache device index pipeline's
    passes()): what the model consumes, fed five ways."""
    import keras

    from dancedata import ReadConfig, models
    from dancedata.device_table import index_dataset, load_table

    table = load_table(builder, ["train"])
    indices = index_dataset(builder, "train", table, **options)

    def epoch_seconds(fit_args, on_device_table=False):
        keras.utils.set_random_seed(0)
        model = models.build_model(args.model, 10, 20, 2048, np.zeros(2048), np.ones(2048))
        if on_device_table:  # train.py --cache device: the table in variables, a gather per step
            from dancedata.models import training

            model = training.on_device_table(
                model, table, None, lambda m: m.compile("adam", "sparse_categorical_crossentropy") or m)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(**fit_args, epochs=1, verbose=0)  # warm-up: tracing, first-epoch costs, filling the cache
        start = time.perf_counter()
        model.fit(**fit_args, epochs=1, verbose=0)
        return time.perf_counter() - start

    masks = np.ones(features.shape[:2], bool)
    fits = {
        "fit from shards (decoded split cached after epoch 1, float32 to the model)":
            epoch_seconds({"x": builder.as_dataset("train", batch_size=args.batch_size,
                                                     read_config=ReadConfig(shuffle=True, seed=0, cache=True))}),
        "fit from shards read every epoch (--no-cache; mapped)":
            epoch_seconds({"x": builder.as_dataset("train", **options)}),
        "fit from numpy in memory":
            epoch_seconds({"x": (features, masks), "y": labels, "batch_size": args.batch_size, "shuffle": True}),
        "fit from shards cached, float16 to the model (train.py now)": epoch_seconds({"x": cached16}),
        "fit gathering from a table in variables (--cache device)": epoch_seconds({"x": indices}, on_device_table=True),
    }
    return fits, passes(indices)


def report(header, n, size, fits, pipelines, checks, stages):
    consumed = min(fits.values())  # the model's fastest observed epoch: the conservative ratio
    print(header + "\n")
    print("| what the model consumes: one epoch | seconds | examples/s |")
    print("|---|---:|---:|")
    for name, seconds in fits.items():
        print(f"| {name} | {seconds:.2f} | {n / seconds:.0f} |")
    print(f"\nthe GRU consumes {n / consumed:.0f} examples/s (its fastest epoch above)\n")
    print("| input pipeline alone, float16 out (train.py) | first epoch s | s (best of 5) | examples/s | x GRU |")
    print("|---|---:|---:|---:|---:|")
    for name, (first, best) in pipelines.items():
        print(f"| {name} | {first:.2f} | {best:.3f} | {n / best:.0f} | {consumed / best:.1f} |")
    (first, mapped), (_, streamed), (_, cached) = list(pipelines.values())[:3]
    check = sum(checks)
    # The check runs once per process, before the first batch: a run pays it once, not every epoch.
    spread, paying = consumed / (mapped + check / EPOCHS), consumed / (mapped + check)
    print(f"\nfirst epoch = as_dataset (tracing; for (a) also mapping and checking) + one pass; (c)'s fills the "
          f"cache. (a)'s one-time check of every record's CRCs: {check:.3f} s for {len(checks)} shards "
          f"({size / check / 1e9:.1f} GB/s, page cache warm), {check / first:.0%} of its first epoch")
    print(f"targets, checking on: uncached {spread:.1f}x the GRU with the check spread over {EPOCHS} epochs "
          f"(>= 10: {'met' if spread >= 10 else 'NOT met'}; {consumed / mapped:.1f}x without it, {paying:.1f}x in "
          f"the one epoch that pays it whole); cached {consumed / cached:.1f}x "
          f"(>= 20: {'met' if consumed / cached >= 20 else 'NOT met'}); streamed {consumed / streamed:.1f}x")
    print("\nwhere the streamed pipeline's time goes, microseconds per example added by each step: "
          + ", ".join(f"{name} {us:.0f}" for name, us in stages.items()))


if __name__ == "__main__":
    main()
