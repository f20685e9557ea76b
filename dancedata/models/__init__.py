"""Classifiers for dancedata features, not imported by `import dancedata` (so it pulls no Keras model code in).

Every model takes (features [B, T, D], mask [B, T] bool), standardises the features with training-split
statistics held inside the model (so a saved model needs nothing else), and outputs class probabilities.
"""
from __future__ import annotations

import keras
import numpy as np

from dancedata.models import gru, transformer

ARCHITECTURES = {"gru": gru.build, "transformer": transformer.build}


def build_model(name: str, num_classes: int, num_frames: int, feature_dim: int, mean: np.ndarray, variance: np.ndarray, **sizes):
    """A compiled-ready functional model; `sizes` go to the architecture (e.g. units=(32, 16) for gru)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"model must be one of {', '.join(ARCHITECTURES)}; got {name!r}")
    features = keras.Input((num_frames, feature_dim), name="features")
    mask = keras.Input((num_frames,), dtype="bool", name="mask")
    # Untrained backbones give features of scale ~1e-4; standardising makes them trainable.
    standardised = keras.layers.Normalization(axis=-1, mean=mean, variance=variance, name="standardise")(features)
    outputs = ARCHITECTURES[name]((standardised, mask), num_classes, **sizes)
    return keras.Model((features, mask), outputs, name=f"dancedata_{name}")
