"""Training helpers train.py uses beyond Keras' fit: a model that gathers its batches from a table on
the device (--cache device), the synchronous loop for MultiWorkerMirroredStrategy (under which Keras
3.15's fit fails), and what makes a run resumable: a checkpoint of everything it needs after each
epoch, and the callback that writes it with the best weights and early stopping."""
from __future__ import annotations

import contextlib
import csv
import os
import re
import types

import keras
import tensorflow as tf

from dancedata.errors import DanceDataError


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


class PeerLost(DanceDataError):
    """A worker of a multi-worker run stopped answering: every worker stops (exit status 1)."""

    exit_status = 1


def fit_in_step(strategy, model, train, val, steps: int, epochs: int, batch_size: int, learning_rate: float, patience: int,
                out: str, best: str | None):
    """The multi-worker training loop: Keras 3.15's fit fails under MultiWorkerMirroredStrategy (it
    reduces a first batch, then the loss, across workers: keras-team/keras#20585), so each step runs
    the replicas with strategy.run, averages the loss over the global batch and lets the optimizer
    all-reduce the gradients.

    Every decision is made once, from the same numbers on every worker: each worker evaluates its own
    share of the validation batches, and the sums are all-reduced, so the best epoch, patience and
    stopping agree by construction (no worker can stop while another waits in the next all-reduce).
    A worker that dies makes the others' next collective fail (the strategy's collective timeout
    bounds it): PeerLost, one line, on every survivor. Returns a Keras-like history; history.csv and
    the best weights are written where `best` is given (the chief)."""
    import tensorflow as tf

    workers, index = worker_position(strategy)
    local = max(1, strategy.num_replicas_in_sync // workers)  # replicas per worker
    with strategy.scope():
        optimizer = keras.optimizers.Adam(learning_rate)
        optimizer.build(model.trainable_variables)

    @tf.function
    def train_step(iterator):
        def replica_step(batch):
            (features, mask), label = batch
            with tf.GradientTape() as tape:
                probabilities = model((features, mask), training=True)
                losses = keras.losses.sparse_categorical_crossentropy(label, probabilities)
                loss = tf.nn.compute_average_loss(losses, global_batch_size=batch_size)
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.cast(tf.argmax(probabilities, -1), label.dtype), label), tf.float32))
            return tf.reduce_sum(losses), correct, tf.cast(tf.size(label), tf.float32)

        totals = strategy.run(replica_step, args=(next(iterator),))
        return [strategy.reduce("SUM", value, axis=None) for value in totals]

    @tf.function
    def all_sum(values):
        def replica(values):  # one replica per worker contributes the worker's sums
            first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group % local, 0)
            return tf.where(first, values, tf.zeros_like(values))

        return strategy.reduce("SUM", strategy.run(replica, args=(values,)), axis=None)

    shard = val.shard(workers, index) if val is not None else None

    def evaluate():
        sums = tf.zeros([3], tf.float32)
        for (features, mask), label in shard:
            probabilities = model((features, mask), training=False)
            sums += tf.stack([tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(label, probabilities)),
                              tf.reduce_sum(tf.cast(tf.argmax(probabilities, -1) == tf.cast(label, tf.int64), tf.float32)),
                              tf.cast(tf.size(label), tf.float32)])
        losses, correct, count = (float(v) for v in all_sum(sums))
        return losses / max(count, 1), correct / max(count, 1)

    history = {"accuracy": [], "loss": []} | ({"val_accuracy": [], "val_loss": []} if val is not None else {})
    iterator, best_accuracy, since_best = iter(train), float("-inf"), 0
    try:
        for epoch in range(epochs):
            sums = [0.0, 0.0, 0.0]
            for _ in range(steps):
                sums = [total + float(value) for total, value in zip(sums, train_step(iterator))]
            history["loss"].append(sums[0] / sums[2])
            history["accuracy"].append(sums[1] / sums[2])
            line = f"epoch {epoch + 1}/{epochs} - accuracy: {history['accuracy'][-1]:.4f} - loss: {history['loss'][-1]:.4f}"
            if val is not None:
                val_loss, val_accuracy = evaluate()
                history["val_loss"].append(val_loss)
                history["val_accuracy"].append(val_accuracy)
                line += f" - val_accuracy: {val_accuracy:.4f} - val_loss: {val_loss:.4f}"
                if val_accuracy > best_accuracy:
                    best_accuracy, since_best = val_accuracy, 0
                    if best:
                        model.save_weights(best)
                else:
                    since_best += 1
            if best:
                print(line, flush=True)
            if patience and since_best >= patience:  # the same all-reduced numbers on every worker: all stop here
                break
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.CancelledError,
            tf.errors.AbortedError, tf.errors.InternalError) as error:
        first = (getattr(error, "message", "") or str(error)).strip().splitlines()[0][:200]
        raise PeerLost(f"a worker of this multi-worker run stopped answering during epoch {epoch + 1} ({first}); every "
                       "worker stops. Start all workers again (with --overwrite on the chief: multi-worker runs do not "
                       "resume yet)") from None
    if best:
        with open(os.path.join(out, "history.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", *sorted(history)])
            for epoch in range(len(history["loss"])):
                writer.writerow([epoch, *(history[key][epoch] for key in sorted(history))])
    return types.SimpleNamespace(history=history)  # what fit returns, as far as train.py reads it


# --- Resuming a run ------------------------------------------------------------------------------------
# Keras' BackupAndRestore keeps the weights, the optimizer and the epoch counter, but not what else a run
# needs to continue as if never stopped: the random state of dropout (Keras' seed generators are not in
# a weights file; measured: without them a resumed run's weights differ), the best-so-far and patience,
# and the data order (the reader gives each epoch's order from (seed, epoch): read.batched). So a run
# keeps one checkpoint of all of it per epoch, committed by one rename of state.json.

STATE = "state.json"


def _seed_states(model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _saved_variables(classifier, fitted) -> dict:
    """Everything a resumed run restores, by kind, in a fixed order (the same code builds the same model)."""
    return {"weights": list(classifier.weights), "optimizer": list(fitted.optimizer.variables),
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


def save_checkpoint(folder: str, state: dict, classifier, fitted) -> dict:
    """Writes the variables after epoch state["epoch"], then commits `state` pointing at them; drops
    the previous checkpoint. Returns the committed state."""
    import numpy as np

    name = f"epoch-{state['epoch']:05d}.npz"
    temporary = os.path.join(folder, f".{name}.{os.getpid()}")
    arrays = {f"{kind}/{i}": np.asarray(v.numpy()) for kind, values in _saved_variables(classifier, fitted).items()
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


def load_checkpoint(folder: str, state: dict, classifier, fitted) -> None:
    """Restores what save_checkpoint wrote into the freshly built `classifier` / `fitted`."""
    import numpy as np

    if not fitted.optimizer.built:
        fitted.optimizer.build(fitted.trainable_variables)
    with np.load(os.path.join(folder, state["checkpoint"])) as saved:
        for kind, values in _saved_variables(classifier, fitted).items():
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
