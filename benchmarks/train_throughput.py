"""Training throughput: an epoch fed from shards against the same model fed from numpy, and the input
pipeline alone against what the model consumes.

    python benchmarks/train_throughput.py [--examples 4096] [--batch-size 64]

Writes synthetic shards ([20, 2048] float16 features, like InceptionV3 on 20 frames) with the same
schema and writer as build_shards, so the reader does exactly its real work.
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
    import pandas as pd

    from dancedata import manifest, schema, write

    rng = np.random.default_rng(0)
    videos = pd.DataFrame({"split": "train", "video_id": [f"v{i}" for i in range(examples)]})
    videos["sequence_id"], videos["genre"] = videos.video_id, [f"c{i % classes}" for i in range(examples)]
    example_bytes = frames * dim * 2
    ordered = write.plan(videos, 0, example_bytes, shard_mb=example_bytes * examples / shards / 1e6)
    os.makedirs(os.path.join(folder, write.STATE_DIR), exist_ok=True)
    sequence = write.ShardSequence(folder, ordered)
    features = rng.standard_normal((examples, frames, dim)).astype(np.float16)
    labels = np.arange(examples) % classes
    for row in ordered.to_dict("records"):
        i = int(row["video_id"][1:])
        example = schema.to_example(features[i], np.ones(frames, bool), np.arange(frames), labels[i], row, "float16")
        sequence.get(row["split"], row["shard"]).write(example, row["genre"])
    sequence.close()
    manifest.write(folder, {
        "schema_version": schema.SCHEMA_VERSION, "feature_spec": schema.feature_spec(frames, dim, "float16"),
        "classes": sorted({f"c{i}" for i in range(classes)}), "num_frames": frames, "feature_dim": dim,
        "feature_dtype": "float16", "splits": {"train": {"num_examples": examples, "shards": sequence.records["train"]}},
    })
    return features.astype(np.float32), labels


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
    dataset = builder.as_dataset("train", batch_size=args.batch_size, shuffle=True, seed=0)

    def epoch_seconds(fit_args):
        keras.utils.set_random_seed(0)
        model = models.build_model(args.model, 10, 20, 2048, np.zeros(2048), np.ones(2048))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(**fit_args, epochs=1, verbose=0)  # warm-up: tracing and first-epoch costs
        start = time.perf_counter()
        model.fit(**fit_args, epochs=1, verbose=0)
        return time.perf_counter() - start

    shards_s = epoch_seconds({"x": dataset})
    numpy_s = epoch_seconds({"x": (features, masks), "y": labels, "batch_size": args.batch_size, "shuffle": True})
    for _ in dataset:  # warm-up
        pass
    pipeline_s = float("inf")
    for _ in range(3):  # best of three passes: the pipeline's capacity, less this machine's noise
        start = time.perf_counter()
        for _ in dataset:
            pass
        pipeline_s = min(pipeline_s, time.perf_counter() - start)

    n = args.examples
    header = (f"machine: {platform.machine()}, {os.cpu_count()} cores, GPU: "
              f"{', '.join(d.name for d in tf.config.list_physical_devices('GPU')) or 'none'}; TensorFlow {tf.__version__}; "
              f"{n} examples of [20, 2048] float16, batch {args.batch_size}, model {args.model}")
    print(header + "\n")
    print("| measurement | seconds | examples/s |")
    print("|---|---:|---:|")
    print(f"| epoch, fit from shards (tf.data) | {shards_s:.2f} | {n / shards_s:.0f} |")
    print(f"| epoch, fit from numpy in memory | {numpy_s:.2f} | {n / numpy_s:.0f} |")
    print(f"| input pipeline alone (read, shuffle, batch, parse, cast; best of 3) | {pipeline_s:.2f} | {n / pipeline_s:.0f} |")
    consumed = min(shards_s, numpy_s)  # the model's fastest observed consumption: the conservative ratio
    print(f"\nshards / numpy epoch time: {shards_s / numpy_s:.2f}x (target <= 1.1); "
          f"pipeline delivers {consumed / pipeline_s:.1f}x what the model consumes in its faster epoch (target >= 10)")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"header": header, "shards_epoch_s": shards_s, "numpy_epoch_s": numpy_s, "pipeline_s": pipeline_s}, handle, indent=2)


if __name__ == "__main__":
    main()
