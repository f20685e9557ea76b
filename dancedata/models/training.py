"""Training helpers train.py uses beyond Keras' fit: a model that gathers its batches from a table on
the device (--cache device), where this process sits in a cluster (the multi-worker loop itself is
models/multi_worker.py), and what makes a run resumable: a checkpoint of everything it needs after each
epoch, and the callback that writes it with the best weights and early stopping."""
from __future__ import annotations

import contextlib
import os
import re

import keras
import tensorflow as tf


def on_device_table(model, table, seq_len: int | None, compile_model):
    """A model that takes (example indices, frame positions), gathers features and masks from `table`
    held on the device in non-trainable variables, and runs `model` (whose weights it shares) on them.
    Only `model` is saved: the table never reaches model.keras or the checkpoints."""

    class GatherFromTable(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # autocast=False: a float32 layer would otherwise cast the whole float16 table at every step.
            self.features = self.add_weight(shape=table.features.shape, dtype=str(table.features.dtype), autocast=False,
                                            initializer=lambda shape, dtype: table.features, trainable=False, name="features")
            self.masks = self.add_weight(shape=table.masks.shape, dtype="uint8",
                                         initializer=lambda shape, dtype: table.masks.astype("uint8"), trainable=False, name="masks")

        def call(self, index, positions):
            # A batch-dims gather: keras.ops.take_along_axis built a [B, T, D] index (2.5x slower per epoch).
            features = tf.gather(tf.gather(self.features, index), positions, batch_dims=1)
            return features, tf.gather(tf.gather(self.masks, index), positions, batch_dims=1) > 0

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


# --- Resuming a run ------------------------------------------------------------------------------------
# Keras' BackupAndRestore keeps the weights, the optimizer and the epoch counter, but not what else a run
# needs to continue as if never stopped: the random state of dropout (Keras' seed generators are not in
# a weights file; measured: without them a resumed run's weights differ), the best-so-far and patience,
# and the data order (the reader gives each epoch's order from (seed, epoch): dancedata.sampler). So a run
# keeps one checkpoint of all of it per epoch, committed by one rename of state.json.

STATE = "state.json"


def _seed_states(model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _saved_variables(classifier, fitted, optimizer=None) -> dict:
    """Everything a resumed run restores, by kind, in a fixed order (the same code builds the same model);
    `optimizer`: the one that trains it when it is not fit's (the multi-worker loop's)."""
    return {"weights": list(classifier.weights), "optimizer": list((optimizer or fitted.optimizer).variables),
            "seeds": _seed_states(fitted)}


def read_state(folder: str) -> dict | None:
    """The run's last committed state ({"epoch", "status", "config", ...}), or None."""
    import json

    try:
        with open(os.path.join(folder, STATE)) as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        return None
    if state.get("checkpoint") is not None and not re.fullmatch(r"epoch-\d{5}\.npz", str(state["checkpoint"])):
        return None  # names only the checkpoints save_checkpoint writes, never another path
    return state


def write_state(folder: str, state: dict) -> None:
    """Atomically (temporary name, fsync, rename): a kill leaves the old state or the new one."""
    import json

    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{STATE}.{os.getpid()}")
    with open(temporary, "w") as handle:
        json.dump(state, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(folder, STATE))


def save_checkpoint(folder: str, state: dict, classifier, fitted, optimizer=None) -> dict:
    """Writes the variables after epoch state["epoch"], then commits `state` pointing at them; drops
    the previous checkpoint. Returns the committed state."""
    import numpy as np

    name = f"epoch-{state['epoch']:05d}.npz"
    temporary = os.path.join(folder, f".{name}.{os.getpid()}")
    arrays = {f"{kind}/{i}": np.asarray(v.numpy()) for kind, values in _saved_variables(classifier, fitted, optimizer).items()
              for i, v in enumerate(values)}
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(folder, name))
    previous = read_state(folder)
    state = {**state, "checkpoint": name}
    write_state(folder, state)
    if previous and previous.get("checkpoint") not in (None, name):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, previous["checkpoint"]))
    return state


def load_checkpoint(folder: str, state: dict, classifier, fitted, optimizer=None) -> None:
    """Restores what save_checkpoint wrote into the freshly built `classifier` / `fitted`."""
    import numpy as np

    optimizer = optimizer or fitted.optimizer
    if not optimizer.built:
        optimizer.build(fitted.trainable_variables)
    with np.load(os.path.join(folder, state["checkpoint"])) as saved:
        for kind, values in _saved_variables(classifier, fitted, optimizer).items():
            count = sum(1 for key in saved.files if key.startswith(kind + "/"))
            if count != len(values):
                raise ValueError(f"the checkpoint holds {count} {kind} variables, the model {len(values)}")
            for i, variable in enumerate(values):
                variable.assign(saved[f"{kind}/{i}"])


class RunProgress(keras.callbacks.Callback):
    """After each epoch, in this order: keeps the classifier's best weights (on val_accuracy), commits
    the resume checkpoint (variables, epoch, best so far, epochs since), then stops early once
    `patience` epochs passed without improvement. Runs after the loggers (last in the list), so an
    epoch's history row and logs exist before its checkpoint does."""

    def __init__(self, classifier, folder: str, state: dict, patience: int, best_path: str | None):
        super().__init__()
        self.classifier, self.folder, self.state = classifier, folder, dict(state)
        self.patience, self.best_path = patience, best_path

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_accuracy")
        best, since = self.state.get("best"), self.state.get("since_best", 0)
        if value is not None and self.best_path:
            if best is None or value > best:
                best, since = float(value), 0
                self.classifier.save_weights(self.best_path)
            else:
                since += 1
        stop = bool(self.patience and value is not None and since >= self.patience)
        self.state = save_checkpoint(self.folder, {**self.state, "epoch": epoch + 1, "best": best, "since_best": since,
                                                   "status": "stopped early" if stop else "training"},
                                     self.classifier, self.model)
        if stop:
            self.model.stop_training = True
