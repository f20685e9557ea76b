"""Flat, typed configuration. Each field is one CLI flag (`image_size` <-> `--image-size`), so the
Python API and the command line cannot disagree; `__post_init__` rejects bad values with the field's
name and the value received."""
from __future__ import annotations

import argparse
import dataclasses
import numbers
import os

from dancedata.errors import ConfigError

SAMPLINGS = ("uniform", "first", "stride")
SPLITS = ("sequence", "dancer", "random", "crossmodal")
LAYOUTS = ("auto", "aist", "folders", "csv")
DTYPES = ("float16", "float32")
RUNNERS = ("local", "beam")
FRAME_FORMATS = ("jpeg", "png")  # frames.FORMATS (config imports nothing heavy)


def flag(text: str, custom: bool = False, **kwargs):
    """A config field and its CLI flag; custom=True: the command adds the flag itself (add_flags skips it)."""
    return dataclasses.field(metadata={"help": text, "custom": custom}, **kwargs)


def _got(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _is_bool(value) -> bool:
    """bool or numpy's bool_ (which is no int); numpy itself is not imported for the question."""
    return isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b"


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None, *, optional: bool = False):
    """`value` as a Python int (None if optional and None), else ConfigError naming `name` and what it
    accepts. numpy integers count; bool does not (True is no batch size), nor does 2.0 (a float here is
    almost always a computation that went wrong, and rounding it would hide that)."""
    if value is None and optional:
        return None
    span = ("" if minimum is None else "positive" if minimum == 1 else f"{minimum} or more") \
        if maximum is None else f"in {minimum}..{'2**63-1' if maximum == 2**63 - 1 else maximum}"
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        accepts = "a positive integer" if span == "positive" else f"an integer {span}" if span else "an integer"
        raise ConfigError(f"{name} must be {accepts}{' or None' if optional else ''}, got {_got(value)}")
    value = int(value)
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be {span}, got {value}")
    return value


def check_number(name: str, value, *, optional: bool = False):
    """`value` if it is an int or float (numpy's become Python floats; bool is refused), else ConfigError.
    A Python int stays an int: options are written into a build's identity, where 1 and 1.0 differ."""
    if value is None and optional:
        return None
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number{' or None' if optional else ''}, got {_got(value)}")
    return value if type(value) in (int, float) else float(value)


def check_bool(name: str, value, *, optional: bool = False):
    """`value` as a bool, else ConfigError: "yes", 1 and "False" are refused (bool("False") is True)."""
    if value is None and optional:
        return None
    if not _is_bool(value):
        raise ConfigError(f"{name} must be True or False{' or None' if optional else ''}, got {_got(value)}")
    return bool(value)


def check_str(name: str, value, *, optional: bool = False):
    """`value` if it is a string; a path (pathlib.Path) becomes its string, as a folder option wants."""
    if value is None and optional or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ConfigError(f"{name} must be a string{' or None' if optional else ''}, got {_got(value)}")


def check_indices(name: str, value):
    """`value` (a sequence or array of integers) as a 1-D int64 numpy array, else ConfigError: a float
    or string example number is refused rather than truncated or parsed."""
    import numpy as np

    if isinstance(value, (list, tuple)):  # each item checked: numpy would turn [1, "a"] into strings
        for item in value:
            if _is_bool(item) or not isinstance(item, numbers.Integral):
                raise ConfigError(f"{name} must be integers (example numbers), got {_got(item)} among them")
        return np.asarray(value, np.int64).reshape(-1)
    array = np.asarray(value)
    if array.size and array.dtype.kind not in "iu":
        raise ConfigError(f"{name} must be integers (example numbers), got {array.dtype} values "
                          f"such as {array.reshape(-1)[0].item()!r}")
    return array.astype(np.int64, copy=False).reshape(-1)  # no copy of int64 keys: ExampleSource.batch's hot path


_CHECKS = {"bool": check_bool, "int": check_int, "float": check_number, "str": check_str}


def check_types(config, prefix: str = "", ranges: dict | None = None) -> None:
    """Each field of a config dataclass checked against its annotation ("int", "bool | None", ...),
    integers against their (minimum, maximum) in `ranges`, and numpy scalars made Python values: a
    field added later is checked by declaring it. Called first in __post_init__, so the range checks
    after it compare values of the right type."""
    for field in dataclasses.fields(config):
        kind, _, rest = field.type.partition(" | ")
        if kind in _CHECKS and rest in ("", "None"):
            span = (ranges or {}).get(field.name, ())
            value = _CHECKS[kind](prefix + field.name, getattr(config, field.name), *span, optional=rest == "None")
            object.__setattr__(config, field.name, value)


def _positive(name: str, value, allow_zero: bool = False):
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")


def check_choice(name: str, value, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Which frames of a video become the [T, D] feature sequence."""

    frames: int = flag("frames per video (T); shorter videos are padded and masked", default=20)
    sampling: str = flag(
        "uniform: spread over the whole clip; first: the first N (the notebook); "
        "stride: every k-th frame (--stride) or a target rate (--fps), up to N",
        default="uniform",
    )
    stride: int = flag("with --sampling stride: keep every k-th frame (0: derive from --fps)", default=0)
    fps: float = flag("with --sampling stride: target frames per second (0: use --stride)", default=0.0)
    keyframes: bool = flag(
        "fast mode: decode only the key frames and apply --sampling (uniform or first) to them; "
        "far less decoding, but a clip has only as many distinct frames as key frames",
        default=False,
    )

    def __post_init__(self):
        check_types(self)
        _positive("frames", self.frames)
        check_choice("sampling", self.sampling, SAMPLINGS)
        _positive("stride", self.stride, allow_zero=True)
        _positive("fps", self.fps, allow_zero=True)
        if self.keyframes and self.sampling == "stride":
            raise ConfigError("keyframes works with sampling uniform or first, got sampling='stride'")
        if self.sampling == "stride" and not (self.stride or self.fps):
            raise ConfigError("sampling 'stride' needs stride > 0 or fps > 0, got stride=0 and fps=0")


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
    """The image backbone that turns each sampled frame into a D-dim feature vector."""

    backbone: str = flag("keras.applications backbone, e.g. InceptionV3, ResNet50, MobileNetV2", default="InceptionV3")
    weights: str = flag(
        "imagenet (Keras' cache in ~/.keras/models), none (seeded random weights), or a path to a .h5/.keras weights file",
        default="imagenet",
    )
    image_size: int = flag("square input size in pixels (frames are centre-cropped, then resized)", default=224)
    batch_size: int = flag(
        "frames per extraction batch, rounded down to whole videos (a multiple of --frames); full batches share "
        "one shape, so nothing retraces (0: auto, one video on CPU, 64 frames' worth of videos on GPU)",
        default=0,
    )
    weights_seed: int = flag("seed of the random weights used with --weights none", default=0)
    mixed_precision: str = flag("auto: float16 compute when a GPU is present; on; off", default="auto")
    jit_compile: bool = flag("compile the extractor with XLA", default=False)

    def __post_init__(self):
        check_types(self)
        if self.image_size < 32:
            raise ConfigError(f"image_size must be at least 32, got {self.image_size!r}")
        _positive("batch_size", self.batch_size, allow_zero=True)
        check_choice("mixed_precision", self.mixed_precision, ("auto", "on", "off"))
        if self.weights not in ("imagenet", "none") and not os.path.isfile(self.weights):
            raise ConfigError(f"weights must be imagenet, none or an existing file; no file at {self.weights!r}")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Where shards go and how videos are split, stored and decoded."""

    out: str = flag("output folder for shards and manifest.json", default="tfrecords")
    layout: str = flag("auto, aist (parse AIST names), folders (one subfolder per class), csv (path,label)", default="auto")
    split: str = flag(
        "sequence: all camera views of a performance in one split; dancer: held-out dancers; "
        "random: per video, seeded (leaks views across splits); crossmodal: the official AIST++ rule",
        default="sequence",
    )
    val_fraction: float = flag("fraction of groups held out for validation", default=0.1)
    test_fraction: float = flag("fraction of groups held out for test", default=0.2)
    seed: int = flag("seed for the split and the shard order", default=0)
    dtype: str = flag("feature storage dtype", default="float16")
    workers: int = flag("decoding processes, each with CPUs // workers decoder threads (at least one; CPUs: those this "
                         "process may use, by affinity and container quota) (does not change the output bytes)",
                         default=2)
    video_timeout: float = flag(
        "seconds one video may take to decode before its decoder is killed and the video recorded as timed out "
        "(a 48 s 1080p60 clip takes ~10 s on one core)",
        default=300.0,
    )
    shard_mb: float = flag("target shard size in MB", default=100.0)
    keep_frames: str = flag(
        "also store each example's sampled frames (after crop and resize) as jpeg or png images, so a later build "
        "re-extracts any backbone with --from-frames without decoding a video (png: lossless, so re-extracted "
        "features are byte-identical; jpeg: half the size or less, lossy); empty: no frames",
        default="",
    )
    jpeg_quality: int = flag("JPEG quality of frames kept with --keep-frames jpeg (1-100)", default=90)
    from_frames: str = flag(
        "build from the frames an earlier build kept (its --out folder) instead of a video folder: no video is opened; "
        "the sampling, split and layout are that build's",
        default="",
    )
    overwrite: bool = flag("start over: delete what earlier builds wrote in --out (other files stay)", default=False)
    update: bool = flag(
        "bring an earlier build in --out up to date with new, removed or modified videos: unchanged videos are "
        "reused from its shards, none changes split, and the result equals a fresh build",
        default=False,
    )
    quiet: bool = flag("no progress bar, and of the summary only its warnings", default=False)
    num_workers: int = flag(
        "machines sharing this build (a partitioned build: each runs the same command with its own --worker-index "
        "and the same --out; the last to finish writes manifest.json)",
        default=1,
    )
    worker_index: int = flag("which machine this is, 0 .. --num-workers - 1", default=0)
    runner: str = flag(
        "local: build here; beam: build the work units on Apache Beam (pip install 'dancedata[beam]'); pipeline "
        "options go after `--` or in --beam-options (default: Beam's local runner, --workers processes)",
        default="local",
    )
    beam_options: str = flag("Beam pipeline options as one string, e.g. '--runner=DataflowRunner --project=P'", default="")

    def __post_init__(self):
        check_types(self)
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("split", self.split, SPLITS)
        check_choice("dtype", self.dtype, DTYPES)
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"val_fraction + test_fraction must leave room for train, got {self.val_fraction} + {self.test_fraction}"
            )
        _positive("workers", self.workers)
        _positive("video_timeout", self.video_timeout)
        _positive("shard_mb", self.shard_mb)
        if self.keep_frames:
            check_choice("keep_frames", self.keep_frames, FRAME_FORMATS)
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")
        check_choice("runner", self.runner, RUNNERS)
        if self.beam_options and self.runner != "beam":
            raise ConfigError(f"beam_options need runner 'beam', got runner {self.runner!r}")
        if self.runner == "beam" and self.num_workers > 1:
            raise ConfigError("runner 'beam' spreads the build itself; it cannot be combined with num_workers > 1")
        _positive("num_workers", self.num_workers)
        if not 0 <= self.worker_index < self.num_workers:
            raise ConfigError(f"worker_index must be in 0..{self.num_workers - 1}, got {self.worker_index!r}")
        if self.overwrite and self.num_workers > 1:
            raise ConfigError(
                "overwrite cannot be combined with num_workers > 1 (each part would delete the others' shards); "
                "clear --out once, or choose another, then start the parts"
            )

    @property
    def partitioned(self) -> bool:
        return self.num_workers > 1


def split_options(options: dict, *classes) -> list:
    """Routes flat keyword options to the config classes that own them; unknown names are an error."""
    remaining = dict(options)
    configs = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        configs.append(cls(**{k: remaining.pop(k) for k in list(remaining) if k in names}))
    if remaining:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(remaining))}")
    return configs


def add_flags(parser, *classes) -> None:
    """One `--flag` per dataclass field, with the field's default, type and help."""
    for cls in classes:
        group = parser.add_argument_group(cls.__name__)
        for field in dataclasses.fields(cls):
            if field.metadata.get("custom"):
                continue
            flag = "--" + field.name.replace("_", "-")
            help_text = f"{field.metadata['help']} (default: {field.default})"
            if field.type in ("bool", bool):
                group.add_argument(flag, action="store_true", default=field.default, help=help_text)
            elif field.type == "bool | None":  # --flag / --no-flag, neither: None (decide automatically)
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.metadata["help"])
            else:
                kind = {"int": int, "float": float, "str": str}[field.type]
                group.add_argument(flag, type=kind, default=field.default, help=help_text, metavar=field.name.upper())


def asdict(instance) -> dict:
    return dataclasses.asdict(instance)


def from_flags(args, cls):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
