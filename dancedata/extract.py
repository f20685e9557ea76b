"""Frame features in fixed-size batches through one compiled function.

Every full batch is a [batch_size, S, S, 3] uint8 tensor, so the function is traced once per
process, not once per video. Frames of many videos share a batch (`FrameBatcher`).
"""
from __future__ import annotations

import collections
import hashlib
import importlib

import numpy as np

from dancedata.config import ExtractorConfig
from dancedata.errors import ConfigError, WeightsError

# Backbone name -> the keras.applications module holding its `preprocess_input`.
BACKBONES = {
    "InceptionV3": "inception_v3",
    "InceptionResNetV2": "inception_resnet_v2",
    "Xception": "xception",
    "ResNet50": "resnet",
    "ResNet101": "resnet",
    "ResNet50V2": "resnet_v2",
    "MobileNet": "mobilenet",
    "MobileNetV2": "mobilenet_v2",
    "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3",
    "DenseNet121": "densenet",
    "EfficientNetB0": "efficientnet",
    "EfficientNetV2B0": "efficientnet_v2",
    "ConvNeXtTiny": "convnext",
    "VGG16": "vgg16",
}
OFFLINE_HELP = (
    "Keras downloads ImageNet weights on first use and this machine could not. On a machine with internet, run "
    "`python -c \"import keras; keras.applications.{backbone}(include_top=False, weights='imagenet')\"`, "
    "copy ~/.keras/models/ to this machine, and run again; or pass --weights /path/to/weights.h5, "
    "or --weights none for seeded random weights"
)


def preprocessing_name(backbone: str) -> str:
    return f"keras.applications.{BACKBONES[backbone]}.preprocess_input"


def _gpu_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def build_backbone(config: ExtractorConfig):
    """The headless, average-pooled keras.applications model that `config` names."""
    import keras

    if config.backbone not in BACKBONES:
        raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}; got {config.backbone!r}")
    constructor = getattr(keras.applications, config.backbone)
    use_fp16 = config.mixed_precision == "on" or (config.mixed_precision == "auto" and _gpu_present())
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if use_fp16 else "float32")
    try:
        shape = (config.image_size, config.image_size, 3)
        if config.weights == "none":
            keras.utils.set_random_seed(config.weights_seed)  # same seed -> same random extractor, so predict matches
            return constructor(include_top=False, weights=None, pooling="avg", input_shape=shape)
        try:
            return constructor(include_top=False, weights=config.weights, pooling="avg", input_shape=shape)
        except Exception as error:  # Keras raises bare Exception for a failed download
            if config.weights == "imagenet":
                raise WeightsError(
                    f"cannot load ImageNet weights for {config.backbone} ({error}). "
                    + OFFLINE_HELP.format(backbone=config.backbone)
                ) from None
            raise WeightsError(f"cannot load weights file {config.weights} into {config.backbone}: {error}") from None
    finally:
        keras.config.set_dtype_policy(previous)


def fingerprint(model) -> str:
    """sha256 of all weights: predict checks it to know its features match the shards'."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


class Extractor:
    """uint8 RGB frames [N, S, S, 3] -> float32 features [N, D], in batches of `batch_size` (resolved from the config)."""

    def __init__(self, config: ExtractorConfig):
        import tensorflow as tf

        self.config = config
        self.batch_size = config.batch_size or (64 if _gpu_present() else 8)
        self.model = build_backbone(config)
        self.feature_dim = int(self.model.output_shape[-1])
        self.fingerprint = fingerprint(self.model)
        preprocess = importlib.import_module(f"keras.applications.{BACKBONES[config.backbone]}").preprocess_input
        size = config.image_size

        def features(frames):
            images = preprocess(tf.cast(frames, tf.float32))
            return tf.cast(self.model(images, training=False), tf.float32)

        # Full batches all have one shape: one trace per process. The last, partial batch of a run
        # goes through a second function of dynamic batch size instead of being padded to full size.
        self._full = tf.function(features, input_signature=[tf.TensorSpec([self.batch_size, size, size, 3], tf.uint8)], jit_compile=config.jit_compile)
        self._partial = tf.function(features, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], jit_compile=config.jit_compile)
        self._full(np.zeros((self.batch_size, size, size, 3), np.uint8))  # trace now, as part of setup

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        size = self.batch_size
        out = np.empty((len(frames), self.feature_dim), np.float32)
        for start in range(0, len(frames), size):
            chunk = frames[start : start + size]
            count = len(chunk)
            if count < size and self.config.jit_compile:
                # XLA compiles once per shape, which costs more than computing a padded batch.
                chunk = np.concatenate([chunk, np.zeros((size - count,) + chunk.shape[1:], chunk.dtype)])
            function = self._full if len(chunk) == size else self._partial
            out[start : start + count] = function(chunk).numpy()[:count]
        return out

    def manifest_entry(self) -> dict:
        return {
            "backbone": self.config.backbone,
            "weights": self.config.weights,
            "weights_seed": self.config.weights_seed,
            "image_size": self.config.image_size,
            "batch_size": self.batch_size,
            "preprocessing": preprocessing_name(self.config.backbone),
            "crop": "centre square",
            "color": "RGB",
            "fingerprint": self.fingerprint,
        }


class FrameBatcher:
    """Pools frames of successive videos into full batches. `add` and `flush` return the
    (item, features [n, D]) pairs completed so far, in the order the items were added.

    Holds at most one batch plus one video of frames, however many videos pass through.
    """

    def __init__(self, extractor: Extractor):
        self.extractor = extractor
        self._waiting = collections.deque()  # (item, frame count) not yet fully extracted
        self._frames = []  # frame arrays not yet extracted
        self._buffered = 0
        self._done = []  # feature rows extracted, in order, not yet handed out

    def add(self, item, frames: np.ndarray):
        self._waiting.append((item, len(frames)))
        self._frames.append(frames)
        self._buffered += len(frames)
        size = self.extractor.batch_size
        if self._buffered >= size:
            pooled = np.concatenate(self._frames)
            full = len(pooled) // size * size
            self._done.append(self.extractor(pooled[:full]))
            self._frames = [pooled[full:]] if full < len(pooled) else []
            self._buffered = len(pooled) - full
        return self._ready()

    def flush(self):
        if self._buffered:
            self._done.append(self.extractor(np.concatenate(self._frames)))
            self._frames, self._buffered = [], 0
        return self._ready()

    def _ready(self) -> list:
        ready = []
        done = np.concatenate(self._done) if self._done else np.empty((0, self.extractor.feature_dim), np.float32)
        used = 0
        while self._waiting and self._waiting[0][1] <= len(done) - used:
            item, count = self._waiting.popleft()
            ready.append((item, done[used : used + count]))
            used += count
        self._done = [done[used:]] if used < len(done) else []
        return ready
