"""Frame features in fixed-size batches through one compiled function.

Every full batch is a [batch_size, S, S, 3] uint8 tensor, so the function is traced once per
process, not once per video. In a build a batch holds whole videos, each in its own slot of T frames
(`VideoBatcher`), and is always padded to the full shape: the same frames give the same features
whatever other videos were decoded that day, so resumed and incremental builds write the same bytes
(a kernel may round a row differently in another batch shape or position; measured, not assumed).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import sys

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
# keras.applications refuses smaller inputs for these (the rest take 32 pixels and up).
MIN_IMAGE_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
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


def device_kind() -> str:
    """What computes the features: the GPU model, or the CPU's architecture. Features computed on
    another kind differ in their last bits (float16 compute, cuDNN, other vector kernels)."""
    import platform

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU {details.get('device_name', 'unknown model')}" + (f" x{len(gpus)}" if len(gpus) > 1 else "")
    return f"CPU {platform.machine()}"


def uses_float16(config: ExtractorConfig) -> bool:
    return config.mixed_precision == "on" or (config.mixed_precision == "auto" and _gpu_present())


def build_backbone(config: ExtractorConfig):
    """The headless, average-pooled keras.applications model that `config` names."""
    import keras

    if config.backbone not in BACKBONES:
        raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}; got {config.backbone!r}")
    smallest = MIN_IMAGE_SIZE.get(config.backbone, 32)
    if config.image_size < smallest:
        raise ConfigError(f"image_size {config.image_size} is too small for {config.backbone}: it needs at least {smallest}")
    constructor = getattr(keras.applications, config.backbone)
    use_fp16 = uses_float16(config)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if use_fp16 else "float32")
    try:
        shape = (config.image_size, config.image_size, 3)
        if config.weights == "none":
            keras.utils.set_random_seed(config.weights_seed)  # same seed -> same random extractor, so predict matches
            return constructor(include_top=False, weights=None, pooling="avg", input_shape=shape)
        try:
            with contextlib.redirect_stdout(_DownloadNotice(sys.stderr)):
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


class _DownloadNotice(io.TextIOBase):
    """Keras' stdout while it loads weights. Its `Downloading data from URL` line is held back until the
    download shows progress, then sent with it to `target` (stderr: a command's stdout is its results);
    a download that fails at once, as offline, leaves only the one-line error that follows."""

    def __init__(self, target):
        self.target, self.held = target, ""

    def write(self, text: str) -> int:
        if self.held is not None:
            if "\n" not in self.held:  # the first line, still being written
                self.held += text
                return len(text)
            self.target.write(self.held)  # more follows it: a download under way
            self.held = None
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:  # Keras' progress bar redraws in place on a terminal
        return self.target.isatty()


def fingerprint(model) -> str:
    """sha256 of all weights: predict checks it to know its features match the shards'."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def resolve_batch(batch_size: int, frames_per_video: int | None, gpu: bool) -> tuple[int, int]:
    """(frames per batch, videos per batch). With frames_per_video, a batch holds whole videos: the
    requested size rounded down to a multiple of T (at least one video). Auto: one video on CPU (about
    as fast per frame as the 8 measured best there), 64 frames' worth of videos on a GPU."""
    if not frames_per_video:
        return batch_size or (64 if gpu else 8), 0
    requested = batch_size or (64 if gpu else frames_per_video)
    videos = max(1, requested // frames_per_video)
    return videos * frames_per_video, videos


def _versions() -> tuple:
    import keras
    import tensorflow as tf

    return tf.__version__, keras.__version__


class Extractor:
    """uint8 RGB frames [N, S, S, 3] -> float32 features [N, D], in batches of `batch_size` (resolved
    from the config; with frames_per_video, whole videos per batch, see resolve_batch)."""

    def __init__(self, config: ExtractorConfig, frames_per_video: int | None = None):
        import tensorflow as tf

        self.config = config
        self.frames_per_video = frames_per_video
        self.batch_size, self.videos_per_batch = resolve_batch(config.batch_size, frames_per_video, _gpu_present())
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

    def full_batch(self, batch: np.ndarray) -> np.ndarray:
        """Exactly one [batch_size, S, S, 3] batch -> [batch_size, D] float32."""
        return self._full(batch).numpy()

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
            "videos_per_batch": self.videos_per_batch,
            "preprocessing": preprocessing_name(self.config.backbone),
            "crop": "centre square",
            "color": "RGB",
            "fingerprint": self.fingerprint,
            # Everything else that changes a stored byte: the compute, the batch slots, what ran it.
            "mixed_precision": "on" if uses_float16(self.config) else "off",
            "jit_compile": bool(self.config.jit_compile),
            "slotting": VideoBatcher.SLOTTING,
            "device": device_kind(),
            "tensorflow": _versions()[0],
            "keras": _versions()[1],
        }


class VideoBatcher:
    """Packs whole videos into the extractor's fixed batches by their position in the work unit: the
    k-th video added since the last flush fills slot k % V of batch k // V (frames slot*T ..
    slot*T+n-1), the rest is zeros, and the batch always has the full shape. A video with no frames
    (reused from an earlier shard, or one that failed to decode) still takes its slot, left empty.
    So a decoded video lands in the same slot of the same-shaped batch in a fresh build, a resume and
    an --update, and its features are the same bytes: kernels may round a row differently by its
    position in a batch, never by the values of the other rows. `add` and `flush` return the
    (item, features [n, D]) pairs completed so far, in the order items were added. Call `flush` at
    the end of each work unit: batches never cross one. An update whose added videos move an
    unchanged video to another slot computes it again (work_unit.Reuse): each shard's record keeps the
    slot every example's features were computed in."""

    SLOTTING = "by position in the shard"  # recorded in the build's identity

    def __init__(self, extractor: Extractor):
        if not extractor.frames_per_video:
            raise ValueError("VideoBatcher needs an Extractor built with frames_per_video")
        self.extractor = extractor
        self._pending: list = []  # (item, frames)

    def add(self, item, frames: np.ndarray) -> list:
        if len(frames) > self.extractor.frames_per_video:
            raise ValueError(f"a video has {len(frames)} frames, more than the {self.extractor.frames_per_video} per video")
        self._pending.append((item, frames))
        return self._run() if len(self._pending) == self.extractor.videos_per_batch else []

    def flush(self) -> list:
        return self._run() if self._pending else []

    def _run(self) -> list:
        extractor, per_video = self.extractor, self.extractor.frames_per_video
        places = []
        batch = None
        for slot, (item, frames) in enumerate(self._pending):
            if len(frames):
                if batch is None:
                    batch = np.zeros((extractor.batch_size,) + frames.shape[1:], np.uint8)
                batch[slot * per_video : slot * per_video + len(frames)] = frames
            places.append((item, slot * per_video, len(frames)))
        features = extractor.full_batch(batch) if batch is not None else np.empty((0, extractor.feature_dim), np.float32)
        self._pending = []
        return [(item, features[start : start + count]) for item, start, count in places]
