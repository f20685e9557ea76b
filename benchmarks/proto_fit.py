"""Scratch (issue 30): the input-overhead column (Keras fit step time fed by a reader ÷ fed by one batch
already in memory) for the current TensorFlow readers and the prototypes of proto_readers.py, in one
process, with benchmarks/readers.py's own pieces (reference_batch, epoch_timer, gru).

    python benchmarks/proto_fit.py [--examples 13939] [--shards 12] [--batch-sizes 64] [--steps 20] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proto_harness as H  # noqa: E402
import proto_readers as P  # noqa: E402
import readers  # noqa: E402

import numpy as np  # noqa: E402


def flat_table_model(classes, frames, dim, table):
    """training.on_device_table's model with GatherFromTable.call gathering once, from the [N * T, D]
    view at index * T + position (proto_readers.device_gather_flat): the package change to
    models/training.py (the rest of the layer as it is there)."""
    import keras
    import tensorflow as tf

    from dancedata import models

    n, t, d = table.features.shape

    class GatherFromTable(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.features = self.add_weight(shape=table.features.shape, dtype=str(table.features.dtype), autocast=False,
                                            initializer=lambda shape, dtype: table.features, trainable=False,
                                            name="features")
            self.masks = self.add_weight(shape=table.masks.shape, dtype="uint8",
                                         initializer=lambda shape, dtype: table.masks.astype("uint8"),
                                         trainable=False, name="masks")

        def call(self, index, positions):
            rows = index[:, None] * t + tf.cast(positions, index.dtype)
            features = tf.gather(tf.reshape(self.features, [n * t, d]), rows)
            return features, tf.gather(tf.reshape(self.masks, [n * t]), rows) > 0

    model = models.build_model("gru", classes, frames, dim, np.zeros(dim), np.ones(dim))
    index = keras.Input((), dtype="int64", name="index")
    positions = keras.Input((t,), dtype="int32", name="positions")
    gathering = keras.Model((index, positions), model(GatherFromTable(name="table")(index, positions)))
    gathering.compile("adam", "sparse_categorical_crossentropy")
    return gathering


def fit_steps(feeds, reference, steps, rounds, factories, seed=0):
    """readers.fit_steps with a model per kind made by factories[kind]()."""
    import keras

    feeds = list(feeds) + [(readers.REFERENCE, reference, "features")]
    rng, best, models = random.Random(seed), {}, {}
    for _ in range(rounds):
        rng.shuffle(feeds)
        for name, dataset, kind in feeds:
            if kind not in models:
                keras.utils.set_random_seed(0)
                models[kind] = factories[kind]()
            timer = readers.epoch_timer()
            models[kind].fit(dataset.repeat(), steps_per_epoch=steps, epochs=2, verbose=0, shuffle=False,
                             callbacks=[timer])
            wall, cpu = (seconds / steps for seconds in timer.seconds[-1])
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], wall), min(old[1], cpu))
    return best


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=13939)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--batch-sizes", default="64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-protos", action="store_true")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from dancedata import ExampleConfig, ReadConfig
    from dancedata.device_table import index_dataset

    P.AT = tf.data.AUTOTUNE
    folder, npy = H.build(args.examples, args.shards)
    shared = readers.Shared(folder, npy)
    builder, table, classes = shared.builder, shared.table, len(shared.builder.info.classes)
    frames, dim = shared.frames, shared.dim
    read = ReadConfig(shuffle=True, seed=0)
    factories = {"features": lambda: readers.gru(classes, frames, dim),
                 "table": lambda: readers.gru(classes, frames, dim, table),
                 "table, flat gather": lambda: flat_table_model(classes, frames, dim, table)}
    ctable = None if args.no_protos else P.cached_table(builder, "train", read)[0]
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        def ours(**kw):
            return builder.as_dataset("train", batch_size=batch_size, example_config=ExampleConfig(cast=False),
                                      read_config=ReadConfig(shuffle=True, seed=0, **kw))

        indices = index_dataset(builder, "train", table, batch_size=batch_size, read_config=read)
        feeds = [("mapped: current", ours(), "features"), ("cached: current", ours(cache=True), "features"),
                 ("device: current (index_dataset, two-step gather in the model)", indices, "table"),
                 ("streamed: current", ours(source="stream"), "features"),
                 ("device: index_dataset, flat gather in the model", indices, "table, flat gather")]
        if not args.no_protos:
            feeds += [
                ("mapped: proto one map, counted", P.proto_mapped(builder, "train", batch_size, read), "features"),
                ("mapped: proto one map, no mark (lower bound)",
                 P.proto_mapped(builder, "train", batch_size, read, mark="none"), "features"),
                ("cached: proto np.take into pool, one map, counted",
                 P.proto_cached_np(builder, "train", batch_size, read, ctable), "features"),
                ("cached: proto tf.gather, one map, counted",
                 P.proto_cached_tf(builder, "train", batch_size, read, ctable), "features"),
                ("device: proto index (one map, counted), flat gather in the model",
                 P.proto_device_index(builder, "train", batch_size, read, table), "table, flat gather"),
            ]
        steps = max(1, min(args.steps, len(shared.source) // batch_size))
        best = fit_steps(feeds, readers.reference_batch(shared, batch_size), steps, args.rounds, factories)
        ref = best[readers.REFERENCE]
        print(f"\nbatch {batch_size}: fit {steps} steps, smallest of {args.rounds} rounds; the GRU fed one in-memory "
              f"batch: {ref[0] * 1e3:.1f} ms/step ({batch_size / ref[0]:,.0f} examples/s)")
        print("| feed | step ms | step ÷ in-memory | CPU/step ÷ in-memory |\n|---|---:|---:|---:|")
        for name, (wall, cpu) in best.items():
            print(f"| {name} | {wall * 1e3:.1f} | {wall / ref[0]:.2f}× | {cpu / ref[1]:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
