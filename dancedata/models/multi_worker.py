"""The training loop under MultiWorkerMirroredStrategy: Keras 3.15's fit fails there (it reduces a first
batch, then the loss, across workers: keras-team/keras#20585), so each step runs the replicas with
strategy.run, averages the loss over the global batch and lets the optimizer all-reduce the gradients.

Every decision is made once, from the same numbers on every worker: each worker evaluates its own share
of the validation batches and the sums are all-reduced, so the best epoch, patience and stopping agree by
construction. A worker that dies makes the others' next collective fail (the strategy's collective
timeout bounds it): PeerLost, one line, on every survivor.

Resuming: only the chief keeps a run folder (models/training_run.TrainingRun, the same run object Keras'
fit goes through). On a restart every worker receives the chief's state and variables through an
all-reduce to which only the chief contributes (`from_chief`), so all continue from the same step with
the same weights.
"""
from __future__ import annotations

import csv
import os
import sys
import types

import keras
import numpy as np
import tensorflow as tf

from dancedata.errors import DanceDataError
from dancedata.models import training

class PeerLost(DanceDataError):
    """A worker of a multi-worker run stopped answering: every worker stops (exit status 1)."""

    exit_status = 1


def from_chief(strategy, values: list) -> list:
    """The chief's `values` (arrays) on every worker: one all-reduce in which only the chief's first replica
    contributes (float64 carries float32 weights, and integer states below 2**53, exactly)."""
    shapes = [np.shape(value) for value in values]
    flat = tf.constant(np.concatenate([np.ravel(np.asarray(value, np.float64)) for value in values]) if values
                       else np.zeros(0))

    @tf.function
    def reduce(flat):
        def replica(flat):
            first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
            return tf.where(first, flat, tf.zeros_like(flat))

        return strategy.reduce("SUM", strategy.run(replica, args=(flat,)), axis=None)

    summed, found, start = reduce(flat).numpy(), [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        found.append(summed[start:start + size].reshape(shape))
        start += size
    return found


def _append_history(out: str, epoch: int, row: dict) -> None:
    path = os.path.join(out, "history.csv")
    new = epoch == 0 or not os.path.exists(path)
    with open(path, "w" if new else "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["epoch", *sorted(row)])
        writer.writerow([epoch, *(row[key] for key in sorted(row))])


def fit_in_step(strategy, run, model, train, val, epochs: int, batch_size: int, learning_rate: float):
    """Trains `model` through `run` (models/training_run.TrainingRun) from its position to `epochs`;
    `train` must start at that position (ReadConfig(epoch=, step=)). On the chief writes history.csv a
    row per epoch; the run keeps the best weights and the checkpoints. Returns a Keras-like history of the
    epochs it ran."""
    workers, index = training.worker_position(strategy)
    local = max(1, strategy.num_replicas_in_sync // workers)  # replicas per worker
    with strategy.scope():
        optimizer = keras.optimizers.Adam(learning_rate)
        optimizer.build(model.trainable_variables)
    run.track(model, model, optimizer)
    run.restore()

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
    run.say_resuming(file=sys.stdout)
    iterator = iter(train)
    # The epoch's running sums (loss, correct, examples): the checkpoint's inside a cut epoch.
    sums = [float(v) for v in run.resumed_metrics([np.zeros(3)])[0]]
    epoch = run.state.epoch
    try:
        with run.stopping():
            while run.state.status == "training" and run.state.epoch < epochs:
                epoch = run.state.epoch
                run.check_build()
                for step in range(run.state.step, run.steps):
                    sums = [total + float(value) for total, value in zip(sums, train_step(iterator))]
                    run.after_step(step + 1, lambda: [np.array(sums)])
                row = {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2]}
                line = f"epoch {epoch + 1}/{epochs} - accuracy: {row['accuracy']:.4f} - loss: {row['loss']:.4f}"
                if val is not None:
                    row["val_loss"], row["val_accuracy"] = evaluate()
                    line += f" - val_accuracy: {row['val_accuracy']:.4f} - val_loss: {row['val_loss']:.4f}"
                for key, value in row.items():
                    history[key].append(value)
                if run.chief:
                    print(line, flush=True)
                    _append_history(run.out, epoch, row)
                # The same all-reduced numbers on every worker: best, patience and stopping agree.
                run.after_epoch(row.get("val_accuracy"), model.save_weights)
                sums = [0.0, 0.0, 0.0]
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.CancelledError,
            tf.errors.AbortedError, tf.errors.InternalError) as error:
        first = (getattr(error, "message", "") or str(error)).strip().splitlines()[0][:200]
        raise PeerLost(f"a worker of this multi-worker run stopped answering during epoch {epoch + 1} ({first}); every "
                       "worker stops. Run the same command on every worker again: the run continues from its last "
                       "checkpoint") from None
    return types.SimpleNamespace(history=history)  # what fit returns, as far as train.py reads it
