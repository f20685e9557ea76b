"""Training helpers train.py uses beyond Keras' fit: a model that gathers its batches from a table on
the device (--cache device), and where this process sits in a cluster (the multi-worker loop itself is
models/multi_worker.py; the run it advances, models/training_run.py)."""
from __future__ import annotations

import os

import keras
import tensorflow as tf


def on_device_table(model, table, seq_len: int | None, compile_model):
    """A model that takes (example indices, frame positions), gathers features and masks from `table`
    held on the device in non-trainable variables, and runs `model` (whose weights it shares) on them.
    Only `model` is saved: the table never reaches model.keras or the checkpoints."""

    examples, frames, dim = table.features.shape

    class GatherFromTable(keras.layers.Layer):
        """The table held as frame rows, [examples * frames, D]: a batch's frames are one gather of rows
        index * frames + position, one copy of the batch (a gather of whole examples, then of their
        frames, moved it twice: 25 -> 18 CPU us per example at batch 64, benchmarks/proto_readers.py)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # autocast=False: a float32 layer would otherwise cast the whole float16 table at every step.
            self.features = self.add_weight(
                shape=(examples * frames, dim), dtype=str(table.features.dtype), autocast=False, trainable=False,
                initializer=lambda shape, dtype: table.features.reshape(examples * frames, dim), name="features")
            self.masks = self.add_weight(shape=(examples * frames,), dtype="uint8", trainable=False, name="masks",
                                         initializer=lambda shape, dtype: table.masks.reshape(-1).astype("uint8"))

        def call(self, index, positions):
            rows = index[:, None] * frames + tf.cast(positions, index.dtype)
            return tf.gather(self.features, rows), tf.gather(self.masks, rows) > 0

    length = seq_len or table.masks.shape[1]
    index = keras.Input((), dtype="int64", name="index")
    positions = keras.Input((length,), dtype="int32", name="positions")
    gathering = keras.Model((index, positions), model(GatherFromTable(name="table")(index, positions)), name="on_device_table")
    compile_model(gathering)
    return gathering


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder: always, except on the workers of a multi-worker
    run other than the chief (or, without one, worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


def worker_position(strategy) -> tuple[int, int]:
    """(workers in the cluster, this worker's index among them: the chief first)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1, 0
    spec = resolver.cluster_spec().as_dict()
    chiefs, workers = len(spec.get("chief", [])), len(spec.get("worker", []))
    index = 0 if resolver.task_type == "chief" else chiefs + int(resolver.task_id)
    return chiefs + workers, index


def say_who_can_reach() -> None:
    """A multi-worker run starts a gRPC server in every worker: say, before it listens, who can reach it."""
    import getpass
    import json
    import sys

    try:
        task = json.loads(os.environ.get("TF_CONFIG", "{}"))
        address = task["cluster"][task["task"]["type"]][int(task["task"]["index"])]
    except (ValueError, KeyError, IndexError, TypeError):
        address = "the port TF_CONFIG gives this task"
    port = str(address).rsplit(":", 1)[-1]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry (a container's arbitrary uid)
        user = f"uid {os.getuid()}"
    print(f"train.py: this worker's TensorFlow server listens on port {port} on every network interface, without "
          f"authentication: anyone who can reach it can run TensorFlow operations (read and write files) as user "
          f"{user}; keep the cluster on a private network (docs/servers.md)", file=sys.stderr)


# What makes a run resumable (its folder, state, checkpoints, best weights and patience) is one object,
# models/training_run.py; RunProgress, its Keras callback, keeps its old address here.
from dancedata.models.training_run import RunProgress  # noqa: E402,F401
