"""A stronger option: frame projection + learned positions -> self-attention blocks -> masked mean pool."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dancedata")
class MaskedMeanPool(keras.layers.Layer):
    def call(self, x, mask):
        weights = ops.cast(ops.expand_dims(mask, -1), x.dtype)
        return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


@keras.saving.register_keras_serializable(package="dancedata")
class PositionEmbedding(keras.layers.Layer):
    def build(self, input_shape):
        self.positions = self.add_weight(shape=(input_shape[1], input_shape[2]), initializer="zeros", name="positions")

    def call(self, x):
        return x + ops.cast(self.positions, x.dtype)


def build(inputs, num_classes: int, width: int = 128, heads: int = 4, blocks: int = 2, dropout: float = 0.2):
    x, mask = inputs
    x = keras.layers.Dense(width)(keras.layers.Dropout(dropout)(x))
    x = PositionEmbedding()(x)
    attention_mask = ops.logical_and(ops.expand_dims(mask, 1), ops.expand_dims(mask, 2))
    for _ in range(blocks):
        attended = keras.layers.MultiHeadAttention(heads, width // heads, dropout=dropout)(x, x, attention_mask=attention_mask)
        x = keras.layers.LayerNormalization()(x + attended)
        hidden = keras.layers.Dense(width * 2, activation="gelu")(x)
        x = keras.layers.LayerNormalization()(x + keras.layers.Dense(width)(hidden))
    x = MaskedMeanPool()(x, mask)
    x = keras.layers.Dropout(dropout)(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="genre")(x)
