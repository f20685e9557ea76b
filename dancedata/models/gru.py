"""The notebook's classifier: masked GRU(16) -> GRU(8) -> Dropout -> Dense(relu) -> softmax."""
from __future__ import annotations

import keras


def build(inputs, num_classes: int, units=(16, 8), dense: int = 8, dropout: float = 0.4):
    """`inputs` = (standardised features [B, T, D], mask [B, T]); returns class probabilities."""
    x, mask = inputs
    for i, size in enumerate(units):
        last = i == len(units) - 1
        x = keras.layers.GRU(size, return_sequences=not last, name=f"gru_{i}")(x, mask=mask if i == 0 else None)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="genre")(x)
