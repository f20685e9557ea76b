"""Training throughput: an epoch fed from shards against the same model fed from numpy, and the input
pipeline alone against what the model consumes.

    python benchmarks/train_throughput.py [--examples 4096] [--batch-size 64]

Writes synthetic shards ([20, 2048] float16 features, like InceptionV3 on 20 frames) with the same
schema and writer as build_shards (TFRecords and their row files), so the reader does exactly its real
work; the uncached pipeline is measured from the row files memory-mapped (local files, the default)
and, for comparison in the same run, from the row files streamed (object storage, tf.data service)
and from the TFRecords alone (how builds before schema 3 are read).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def write_shards(folder, examples, frames=20, dim=2048, classes=10, shards=4):
    from dancedata import manifest, plan, schema, write

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, write.STATE_DIR), exist_ok=True)
    features = rng.standard_normal((examples, frames, dim)).astype(np.float16)
    labels = np.arange(examples) % classes
    records, layout = [], schema.row_layout(frames, dim, "float16")
    for index in range(shards):
        writer = write.ShardWriter(folder, plan.shard_name("train", index, shards), layout)
        for i in range(index * examples // shards, (index + 1) * examples // shards):
            row = {"video_id": f"v{i}", "sequence_id": f"v{i}", "genre": f"c{labels[i]}"}
            example = schema.to_example(features[i], np.ones(frames, bool), np.arange(frames), labels[i], row, "float16")
            writer.write(schema.serialize(example))
        records.append({k: v for k, v in writer.commit({}).items() if k in ("file", "num_examples", "sha256", "rows")})
    manifest.write(folder, {
        "schema_version": schema.SCHEMA_VERSION, "feature_spec": schema.feature_spec(frames, dim, "float16"),
        "classes": sorted({f"c{i}" for i in range(classes)}), "num_frames": frames, "feature_dim": dim,
        "feature_dtype": "float16", "rows": layout, "splits": {"train": {"num_examples": examples, "shards": records}},
    })
    return features.astype(np.float32), labels


def stage_costs(builder, batch_size, best_of):
    """Microseconds per example that each step of the uncached chain adds, measured cumulatively;
    the decode steps are the reader's own (DatasetBuilder.decode)."""
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
        "decode_raw": batches.map(lambda s: builder.decode(s, schema.TRAINING_KEYS, cast=False), num_parallel_calls=tf.data.AUTOTUNE),
        "fp16 -> fp32 cast": batches.map(lambda s: builder.decode(s, schema.TRAINING_KEYS), num_parallel_calls=tf.data.AUTOTUNE),
    }
    costs, previous = {}, 0.0
    for name, chain in chains.items():
        total = best_of(chain) / builder.info.splits["train"] * 1e6
        costs[name], previous = total - previous, total
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="gru")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "train.json"))
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    import models
    from dancedata import DatasetBuilder

    folder = tempfile.mkdtemp(prefix="dancedata-train-bench-")
    features, labels = write_shards(folder, args.examples)
    masks = np.ones(features.shape[:2], bool)
    builder = DatasetBuilder(folder)
    # train.py keeps the decoded train split in memory when it fits (it does here: 4096 examples ~ 0.3 GB).
    cached = builder.as_dataset("train", batch_size=args.batch_size, shuffle=True, seed=0, cache=True)
    uncached = builder.as_dataset("train", batch_size=args.batch_size, shuffle=True, seed=0)
    # What train.py feeds now: float16 to the model, which casts on its device.
    cached16 = builder.as_dataset("train", batch_size=args.batch_size, shuffle=True, seed=0, cache=True, cast=False)
    uncached16 = builder.as_dataset("train", batch_size=args.batch_size, shuffle=True, seed=0, cast=False)
    # The row files streamed by FixedLengthRecordDataset, as on object storage or through tf.data service.
    uncached16_streamed = DatasetBuilder(folder, map_rows=False).as_dataset("train", batch_size=args.batch_size, shuffle=True, seed=0, cast=False)
    # The same pipeline reading the TFRecords, as every build before schema 3 (no row files) is read.
    uncached16_records = DatasetBuilder(folder, rows=False).as_dataset("train", batch_size=args.batch_size, shuffle=True, seed=0, cast=False)
    from dancedata.device_table import index_dataset, load_table

    table = load_table(builder, ["train"])
    indices = index_dataset(builder, "train", table, batch_size=args.batch_size, shuffle=True, seed=0)

    def epoch_seconds(fit_args, on_device_table=False):
        keras.utils.set_random_seed(0)
        model = models.build_model(args.model, 10, 20, 2048, np.zeros(2048), np.ones(2048))
        if on_device_table:  # train.py --cache device: the table in variables, a gather per step
            from models import training

            model = training.on_device_table(model, table, None, lambda m: m.compile("adam", "sparse_categorical_crossentropy") or m)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(**fit_args, epochs=1, verbose=0)  # warm-up: tracing, first-epoch costs, filling the cache
        start = time.perf_counter()
        model.fit(**fit_args, epochs=1, verbose=0)
        return time.perf_counter() - start

    def pipeline_seconds(dataset):
        for _ in dataset:  # warm-up (and the cache's first epoch)
            pass
        best = float("inf")
        for _ in range(5):  # best of five passes: the pipeline's capacity, less this machine's noise
            start = time.perf_counter()
            for _ in dataset:
                pass
            best = min(best, time.perf_counter() - start)
        return best

    shards_s = epoch_seconds({"x": cached})
    uncached_s = epoch_seconds({"x": uncached})
    numpy_s = epoch_seconds({"x": (features, masks), "y": labels, "batch_size": args.batch_size, "shuffle": True})
    shards16_s = epoch_seconds({"x": cached16})
    device_s = epoch_seconds({"x": indices}, on_device_table=True)
    pipeline_s, pipeline_uncached_s = pipeline_seconds(cached), pipeline_seconds(uncached)
    pipeline16_s, pipeline16_uncached_s = pipeline_seconds(cached16), pipeline_seconds(uncached16)
    pipeline16_streamed_s = pipeline_seconds(uncached16_streamed)
    pipeline16_records_s = pipeline_seconds(uncached16_records)
    pipeline_index_s = pipeline_seconds(indices)
    stages = stage_costs(builder, args.batch_size, pipeline_seconds)

    n = args.examples
    header = (f"machine: {platform.machine()}, {os.cpu_count()} cores, GPU: "
              f"{', '.join(d.name for d in tf.config.list_physical_devices('GPU')) or 'none'}; TensorFlow {tf.__version__}; "
              f"{n} examples of [20, 2048] float16, batch {args.batch_size}, model {args.model}")
    print(header + "\n")
    print("| measurement | seconds | examples/s |")
    print("|---|---:|---:|")
    print(f"| epoch, fit from shards (train.py: decoded split cached after epoch 1) | {shards_s:.2f} | {n / shards_s:.0f} |")
    print(f"| epoch, fit from shards read every epoch (--no-cache) | {uncached_s:.2f} | {n / uncached_s:.0f} |")
    print(f"| epoch, fit from numpy in memory | {numpy_s:.2f} | {n / numpy_s:.0f} |")
    print(f"| input pipeline alone, cached (shuffle, batch, cast; best of 5) | {pipeline_s:.2f} | {n / pipeline_s:.0f} |")
    print(f"| input pipeline alone, --no-cache (read, shuffle, batch, parse, cast; best of 5) "
          f"| {pipeline_uncached_s:.2f} | {n / pipeline_uncached_s:.0f} |")
    print(f"| epoch, fit from shards cached, float16 to the model (train.py now) | {shards16_s:.2f} | {n / shards16_s:.0f} |")
    print(f"| epoch, fit gathering from a table in variables (--cache device) | {device_s:.2f} | {n / device_s:.0f} |")
    print(f"| input pipeline alone, cached, float16 out (best of 5) | {pipeline16_s:.2f} | {n / pipeline16_s:.0f} |")
    print(f"| input pipeline alone, --no-cache, float16 out, row files mapped (best of 5) "
          f"| {pipeline16_uncached_s:.2f} | {n / pipeline16_uncached_s:.0f} |")
    print(f"| input pipeline alone, --no-cache, float16 out, row files streamed (remote, tf.data service; best of 5) "
          f"| {pipeline16_streamed_s:.2f} | {n / pipeline16_streamed_s:.0f} |")
    print(f"| input pipeline alone, --no-cache, float16 out, TFRecords (schema <= 2; best of 5) "
          f"| {pipeline16_records_s:.2f} | {n / pipeline16_records_s:.0f} |")
    print(f"| input pipeline alone, indices for --cache device (best of 5) | {pipeline_index_s:.2f} | {n / pipeline_index_s:.0f} |")
    consumed = min(shards_s, uncached_s, numpy_s, shards16_s, device_s)  # the model's fastest observed consumption: the conservative ratio
    print(f"\nshards / numpy epoch time: {shards_s / numpy_s:.2f}x cached, {uncached_s / numpy_s:.2f}x uncached (target <= 1.1); "
          f"the pipeline delivers {consumed / pipeline_s:.1f}x what the model consumes in its fastest epoch "
          f"({consumed / pipeline_uncached_s:.1f}x uncached; target >= 10)")
    print(f"float16 out (train.py now): {consumed / pipeline16_s:.1f}x cached (target >= 20), "
          f"{consumed / pipeline16_uncached_s:.1f}x uncached from row files mapped (target >= 10; "
          f"{consumed / pipeline16_streamed_s:.1f}x streamed, {consumed / pipeline16_records_s:.1f}x from the TFRecords); indices for --cache device {consumed / pipeline_index_s:.1f}x")
    print("\nwhere the TFRecord pipeline's time goes, microseconds per example added by each step: "
          + ", ".join(f"{name} {us:.0f}" for name, us in stages.items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"header": header, "shards_epoch_s": shards_s, "shards_uncached_epoch_s": uncached_s,
                   "numpy_epoch_s": numpy_s, "pipeline_s": pipeline_s, "pipeline_uncached_s": pipeline_uncached_s,
                   "shards_float16_epoch_s": shards16_s, "device_cache_epoch_s": device_s, "pipeline_float16_s": pipeline16_s,
                   "pipeline_float16_uncached_s": pipeline16_uncached_s,
                   "pipeline_float16_streamed_s": pipeline16_streamed_s, "pipeline_float16_records_s": pipeline16_records_s,
                   "pipeline_index_s": pipeline_index_s,
                   "examples": n, "stage_us_per_example": stages}, handle, indent=2)


if __name__ == "__main__":
    main()
