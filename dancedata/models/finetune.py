"""The backbone and the sequence model trained together on frames (`train.py --finetune`).

    (frames uint8 [B, T, S, S, 3], mask [B, T]) -> preprocess_input -> backbone per frame -> [B, T, D]
        -> the sequence model of dancedata.models (its standardise layer holds the build's statistics)

The backbone is the build's (extract.build_backbone with the manifest's extractor entry: with
--weights none the same seeded random one, checked by its fingerprint), so training starts from the
features the frozen-feature GRU sees. Its batch normalisation stays in inference mode (the build's
statistics; batches of a few videos would only add noise to them), as Keras' transfer-learning guide
advises; its weights train at a fraction of the head's learning rate (ScaledAdam: Adam's step does not
scale with the gradient, so a lower rate is the only way to move the backbone less). Optional frozen
first epochs train the head alone; the backbone then joins with a fresh optimizer.
"""
from __future__ import annotations

import importlib

import keras

from dancedata.config import ExtractorConfig

SCOPE = "backbone"  # the name scope of the backbone's variables: their paths start with "backbone/"


@keras.saving.register_keras_serializable(package="dancedata")
class Preprocess(keras.layers.Layer):
    """uint8 frames -> the float input the backbone was trained on: keras.applications'
    `preprocess_input` of its family (as extract.Extractor applies it)."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.backbone = backbone

    def call(self, frames):
        from dancedata.extract import BACKBONES

        module = importlib.import_module(f"keras.applications.{BACKBONES[self.backbone]}")
        return module.preprocess_input(keras.ops.cast(frames, "float32"))

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="dancedata")
class PerFrame(keras.layers.Wrapper):
    """[B, T, S, S, 3] -> [B, T, D]: the backbone on all B * T frames as one batch, always in inference
    mode (see the module docstring). keras.layers.TimeDistributed would unroll a Python loop over T:
    T copies of the backbone in the graph (ResNet50, 6 frames: a first training step of 39 s instead of 12)."""

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build((None, *input_shape[2:]))
        self.built = True

    def call(self, frames, training=None):
        flat = keras.ops.reshape(frames, (-1, *frames.shape[2:]))
        features = self.layer(flat, training=False)
        return keras.ops.reshape(features, (keras.ops.shape(frames)[0], keras.ops.shape(frames)[1], *features.shape[1:]))

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape((None, *input_shape[2:]))
        return (input_shape[0], input_shape[1], *inner[1:])


@keras.saving.register_keras_serializable(package="dancedata")
class ScaledAdam(keras.optimizers.Adam):
    """Adam whose step for the variables whose path starts with `prefix` uses `multiplier` times the
    learning rate. (Scaling their gradients would change nothing: Adam divides by their magnitude.)
    The paths are those build() gives; a model loaded from model.keras has others, so to train one
    further, build it again and load its weights."""

    def __init__(self, learning_rate=1e-3, *, multiplier: float = 0.1, prefix: str = SCOPE + "/", **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.multiplier, self.prefix = float(multiplier), prefix
        self._scaled: set = set()

    def build(self, variables):
        super().build(variables)
        self._scaled = {self._get_variable_index(v) for v in variables if v.path.startswith(self.prefix)}

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in self._scaled:
            learning_rate = keras.ops.multiply(learning_rate, self.multiplier)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "multiplier": self.multiplier, "prefix": self.prefix}


def extractor_config(entry: dict, mixed_precision: str = "auto") -> ExtractorConfig:
    """The ExtractorConfig of a manifest's (or dataset.json's) extractor entry."""
    return ExtractorConfig(backbone=entry["backbone"], weights=entry["weights"], image_size=entry["image_size"],
                           weights_seed=entry.get("weights_seed", 0), mixed_precision=mixed_precision)


def build(extractor: ExtractorConfig, architecture: str, num_classes: int, num_frames: int, mean, variance, *,
          seed: int, fingerprint: str | None = None):
    """The end-to-end model; `fingerprint` (the manifest's) is checked against the backbone built here."""
    from dancedata import extract, models
    from dancedata.errors import ManifestError

    with keras.name_scope(SCOPE):
        backbone = extract.build_backbone(extractor)  # seeds Keras with weights_seed: the build's random weights
    if fingerprint and extract.fingerprint(backbone) != fingerprint:
        raise ManifestError(f"the {extractor.backbone} weights here (weights={extractor.weights}) differ from those the "
                            "shards were built with: fine-tuning would not start from the build's features")
    keras.utils.set_random_seed(seed)  # the head's initial weights and dropout: the run's seed
    head = models.build_model(architecture, num_classes, num_frames, int(backbone.output_shape[-1]), mean, variance)
    size = extractor.image_size
    frames = keras.Input((num_frames, size, size, 3), dtype="uint8", name="frames")
    mask = keras.Input((num_frames,), dtype="bool", name="mask")
    pixels = Preprocess(extractor.backbone, name="preprocess")(frames)
    features = PerFrame(backbone, name="frame_features")(pixels)
    features = keras.layers.Activation("linear", dtype="float32", name="to_float32")(features)  # float16 under mixed precision
    return keras.Model((frames, mask), head((features, mask)), name=f"dancedata_finetune_{architecture}")


def compiled_model(cfg, info, num_frames: int, mean, variance, position: tuple):
    """train.py's end-to-end model, compiled, its backbone frozen when the run (re)starts at `position`
    (epoch, step) within its frozen epochs (so a checkpoint's optimizer fits it)."""
    model = build(extractor_config(info.extractor, cfg.mixed_precision), cfg.model, len(info.classes), num_frames, mean,
                  variance, seed=cfg.seed, fingerprint=info.extractor.get("fingerprint"))
    compile_phase(model, cfg.learning_rate, cfg.backbone_lr_multiplier, not starts_frozen(*position, cfg.freeze_epochs))
    return model


def backbone_of(model):
    return model.get_layer("frame_features").layer


def compile_phase(model, learning_rate: float, multiplier: float, train_backbone: bool) -> None:
    """(Re)compiles `model` with a fresh optimizer, training the backbone or not. Loss scaling when the
    backbone computes in float16 (mixed precision), so its small gradients do not flush to zero."""
    backbone = backbone_of(model)
    backbone.trainable = train_backbone
    optimizer = ScaledAdam(learning_rate, multiplier=multiplier)
    if backbone.dtype_policy.name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def starts_frozen(epoch: int, step: int, freeze_epochs: int) -> bool:
    """Whether a run (re)started at step `step` of epoch `epoch` (0-based) compiles its model with the
    backbone frozen: in its frozen epochs, and just after the last one, whose checkpoint holds the
    frozen phase's optimizer (the backbone joins when fit starts, phases())."""
    return 0 < freeze_epochs and (epoch, step) <= (freeze_epochs, 0)


def phases(cfg) -> list:
    """[(train until epoch, what to do first or None)]: the frozen epochs, then all of them with the
    backbone joining (with a fresh optimizer, as a run never stopped does at that epoch)."""
    def unfreeze(model):
        if not backbone_of(model).trainable:
            compile_phase(model, cfg.learning_rate, cfg.backbone_lr_multiplier, True)

    if not cfg.freeze_epochs:
        return [(cfg.epochs, None)]
    return [(cfg.freeze_epochs, None), (cfg.epochs, unfreeze)]
