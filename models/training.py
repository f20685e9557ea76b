"""Training helpers train.py uses beyond Keras' fit: a model that gathers its batches from a table on
the device (--cache device), a callback that keeps the best weights of the classifier alone, and the
synchronous loop for MultiWorkerMirroredStrategy, under which Keras 3.15's fit fails."""
from __future__ import annotations

import csv
import os
import types

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


def best_weights(target, path: str):
    """A callback that saves `target`'s weights whenever val_accuracy beats its best so far
    (ModelCheckpoint would save the fitted model's, which with --cache device include the table)."""

    class BestWeights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = float("-inf")

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_accuracy")
            if value is not None and value > self.best:
                self.best = value
                target.save_weights(path)

    return BestWeights()


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder: always, except on the workers of a multi-worker
    run other than the chief (or, without one, worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


def fit_in_step(strategy, model, train, val, steps: int, epochs: int, batch_size: int, learning_rate: float, patience: int,
                out: str, best: str | None):
    """The multi-worker training loop: Keras 3.15's fit fails under MultiWorkerMirroredStrategy (it
    reduces a first batch, then the loss, across workers: keras-team/keras#20585), so each step runs
    the replicas with strategy.run, averages the loss over the global batch and lets the optimizer
    all-reduce the gradients. Validation runs on each worker's own copy of the (identical) weights, no
    collective needed. Returns a Keras-like history; history.csv and the best weights are written
    where `best` is given (the chief)."""
    import tensorflow as tf

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

    def evaluate(dataset):
        losses = correct = count = 0.0
        for (features, mask), label in dataset:
            probabilities = model((features, mask), training=False)
            losses += float(tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(label, probabilities)))
            correct += float(tf.reduce_sum(tf.cast(tf.argmax(probabilities, -1) == tf.cast(label, tf.int64), tf.float32)))
            count += int(label.shape[0])
        return losses / max(count, 1), correct / max(count, 1)

    history = {"accuracy": [], "loss": []} | ({"val_accuracy": [], "val_loss": []} if val is not None else {})
    iterator, best_accuracy, since_best = iter(train), float("-inf"), 0
    for epoch in range(epochs):
        sums = [0.0, 0.0, 0.0]
        for _ in range(steps):
            sums = [total + float(value) for total, value in zip(sums, train_step(iterator))]
        history["loss"].append(sums[0] / sums[2])
        history["accuracy"].append(sums[1] / sums[2])
        line = f"epoch {epoch + 1}/{epochs} - accuracy: {history['accuracy'][-1]:.4f} - loss: {history['loss'][-1]:.4f}"
        if val is not None:
            val_loss, val_accuracy = evaluate(val)
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
        if patience and since_best >= patience:  # every worker sees the same val_accuracy: they stop together
            break
    if best:
        with open(os.path.join(out, "history.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", *sorted(history)])
            for epoch in range(len(history["loss"])):
                writer.writerow([epoch, *(history[key][epoch] for key in sorted(history))])
    return types.SimpleNamespace(history=history)  # what fit returns, as far as train.py reads it
