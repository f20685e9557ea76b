"""How `DatasetBuilder.as_dataset` reads a split (ReadConfig) and shapes its examples (ExampleConfig):
frozen, validated when made, so a combination that cannot work is refused where it is written.

    train = builder.as_dataset("train", batch_size=64, read_config=ReadConfig(shuffle=True, seed=0, repeat=True),
                               example_config=ExampleConfig(seq_len=16))
    val = builder.as_dataset("train", batch_size=64, read_config=ReadConfig(holdout=Holdout(0.1, part="held")))

The keyword arguments as_dataset took before these (shuffle=, seed=, seq_len=, ...) still work for one
release, each with a warning that names its new spelling (`from_keywords`).
"""
from __future__ import annotations

import dataclasses
import warnings

# The checkers live with the build configs (config.py, which imports nothing heavy); readers import them from here.
from dancedata.config import _got, check_bool, check_indices, check_int, check_number, check_str  # noqa: F401
from dancedata.config import check_types
from dancedata.errors import ConfigError

HOLDOUT_UNITS = ("sequence", "dancer")
SOURCES = ("auto", "mapped", "stream")
ON_DAMAGE = ("stop", "skip")


def check_config(name: str, value, cls: type):
    """`value` if it is a `cls` or None, else ConfigError saying what to pass instead: a dict is
    spelled as the config it meant, a config of the other kind is named with its own argument."""
    if value is None or isinstance(value, cls):
        return value
    accepts = f"{name} must be a dancedata.{cls.__name__} or None"
    if isinstance(value, dict):
        fields = ", ".join(f"{key}={item!r}" for key, item in value.items())
        raise ConfigError(f"{accepts}, got a dict: pass {name}={cls.__name__}({fields})")
    other = {ReadConfig: ("example_config", ExampleConfig), ExampleConfig: ("read_config", ReadConfig)}.get(cls)
    if other and isinstance(value, other[1]):
        article = "an" if other[1].__name__[0] in "AEIOU" else "a"
        raise ConfigError(f"{accepts}, got {article} {other[1].__name__}: pass it as {other[0]}=")
    raise ConfigError(f"{accepts}, got {_got(value)}")


class DanceDataDeprecationWarning(FutureWarning):
    """A spelling that still works and will go: shown by default (a FutureWarning), unlike DeprecationWarning."""


@dataclasses.dataclass(frozen=True)
class Holdout:
    """A part of a split held out by hashing `by` units: "sequence" (each performance with all its camera
    views) or "dancer" (dancer groups: dancers who appear together go together; for builds split by
    dancer). part="rest" reads the split without it (train), part="held" only it (validation)."""

    fraction: float
    _: dataclasses.KW_ONLY
    by: str = "sequence"
    part: str = "rest"

    def __post_init__(self):
        check_types(self, "holdout ")
        if not 0 < self.fraction < 1:
            raise ConfigError(f"holdout fraction must be in (0, 1), got {self.fraction}")
        if self.by not in HOLDOUT_UNITS:
            raise ConfigError(f"holdout by must be one of {', '.join(HOLDOUT_UNITS)}, got {self.by!r}")
        if self.part not in ("rest", "held"):
            raise ConfigError(f"holdout part must be rest or held, got {self.part!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReadConfig:
    """Where and how examples are read, and in what order (dancedata.sampler.Sampler gives it).

    shuffle, seed: the order of each epoch, a pure function of (seed, epoch); seed=None draws one.
    shuffle_buffer: the window of the stream within which examples are permuted (see sampler).
    repeat: epochs `epoch`, epoch + 1, ... back to back (resumable training: start at the epoch to
      continue from and pass steps_per_epoch); without it, one epoch, and each iteration that takes
      the dataset's last batch moves the next one to the next epoch (so fit(..., epochs=N) reshuffles,
      and a peek changes nothing: pipelines.EpochCounter).
    steps_per_epoch: with repeat, every epoch is exactly this many batches: a shorter one starts its own
      order again, a longer one is cut. Several input pipelines (tf.distribute workers, whose shares of
      an epoch differ) then stay in step with the training loop's epochs, so a resumed run sees the
      batches an uninterrupted one does.
    step: the first epoch read (`epoch`) starts at its batch `step`: the batches step=0 would give from
      there on (the same examples, windows and batch boundaries; each input pipeline at its own batch
      `step`), then the following epochs whole. Nothing before it is read again (docs/reading.md).
    cache: keep the split's examples in memory, read once (cache_bytes(split) of it).
    verify: compare every shard's sha256 with the manifest first (reads stay CRC-checked regardless).
    on_damage: "stop" (the default) raises ShardError naming the first damaged file; "skip" leaves out
      exactly the records that fail their checks (a corrupted record, the records after a cut, those of
      a missing shard), with one warning per damaged file, and reads every other example in the order an
      intact build gives (DatasetBuilder.damage lists what was left out; see dancedata.damage).
    skip_bad_shards: the spelling of on_damage="skip" before it existed (it now costs the damaged
      records, not their shards).
    source: "mapped" memory-maps local schema-4 shards (fastest), "stream" reads TFRecords (any
      filesystem), "auto" maps what it can.
    data_service: "grpc://HOST:PORT" of a tf.data service dispatcher whose workers read and batch.
    holdout: a Holdout, or None for the whole split.
    """

    shuffle: bool = False
    seed: int | None = None
    shuffle_buffer: int = 256
    repeat: bool = False
    epoch: int = 0
    steps_per_epoch: int | None = None
    step: int = 0
    cache: bool = False
    drop_remainder: bool = False
    verify: bool = False
    on_damage: str = "stop"
    skip_bad_shards: bool = False
    source: str = "auto"
    data_service: str | None = None
    holdout: Holdout | None = None

    def __post_init__(self):
        check_types(self, ranges={"seed": (0, 2**63 - 1), "shuffle_buffer": (1,), "epoch": (0,), "step": (0,)})
        if self.steps_per_epoch is not None and (self.steps_per_epoch < 1 or not self.repeat):
            raise ConfigError(f"steps_per_epoch must be positive and comes with repeat=True, got {self.steps_per_epoch}"
                              f"{'' if self.repeat else ' without repeat'}")
        if self.steps_per_epoch is not None and self.step >= self.steps_per_epoch:
            raise ConfigError(f"step must be less than steps_per_epoch ({self.steps_per_epoch}), got {self.step}")
        if self.on_damage not in ON_DAMAGE:
            raise ConfigError(f"on_damage must be one of {', '.join(ON_DAMAGE)}, got {self.on_damage!r}")
        if self.skip_bad_shards:
            object.__setattr__(self, "on_damage", "skip")
        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        check_config("holdout", self.holdout, Holdout)
        if self.data_service:
            if self.step:  # the service's order is not reproducible: resume at the epoch, from its start
                raise ConfigError(f"data_service cannot start inside an epoch (step={self.step}): the service's order "
                                  "differs each time; start at the epoch with step=0")
            if self.cache:
                raise ConfigError("data_service and cache exclude each other: the service's workers read the shards")
            if self.source == "mapped":
                raise ConfigError("data_service reads TFRecords on the service's workers: use source='auto' or 'stream'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExampleConfig:
    """What each example becomes: seq_len frames of it (None: all stored), a random window in training
    and a centred one otherwise (training=None: random when the read config shuffles), features as float32
    (cast=False: in the stored dtype, half the bytes; the model casts), and with_metadata adds a dict of
    string fields (video id, genre, dancer, ...) read from the TFRecords."""

    seq_len: int | None = None
    training: bool | None = None
    cast: bool = True
    with_metadata: bool = False

    def __post_init__(self):
        check_types(self, ranges={"seq_len": (1,)})


_READ = {field.name for field in dataclasses.fields(ReadConfig)} - {"holdout", "step"}  # step: never a keyword
_EXAMPLE = {field.name for field in dataclasses.fields(ExampleConfig)}
_HOLDOUT = {"holdout_fraction": "fraction", "holdout_by": "by", "holdout": "part"}


def from_keywords(keywords: dict, read_config: ReadConfig | None, example_config: ExampleConfig | None,
                  stacklevel: int = 3) -> tuple:
    """(read_config, example_config) with the old keyword arguments of as_dataset folded in, each named
    with its new spelling in one warning. Mixing a config with old keywords for its fields is refused."""
    check_config("read_config", read_config, ReadConfig)
    check_config("example_config", example_config, ExampleConfig)
    unknown = set(keywords) - _READ - _EXAMPLE - set(_HOLDOUT)
    if unknown:
        raise TypeError(f"as_dataset() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if not keywords:
        return read_config or ReadConfig(), example_config or ExampleConfig()
    spelled = []
    read = {k: v for k, v in keywords.items() if k in _READ}
    example = {k: v for k, v in keywords.items() if k in _EXAMPLE}
    holdout = {_HOLDOUT[k]: v for k, v in keywords.items() if k in _HOLDOUT}
    if (read or holdout) and read_config is not None or example and example_config is not None:
        raise ConfigError("pass either read_config/example_config or the old keyword arguments, not both")
    if holdout.get("fraction"):
        holdout["part"] = "held" if holdout.get("part") else "rest"
        read["holdout"] = Holdout(**holdout)
        spelled.append(f"holdout=Holdout({holdout['fraction']!r}, by={holdout.get('by', 'sequence')!r}, part={holdout['part']!r})")
    spelled += [f"{k}={v!r}" for k, v in read.items() if k != "holdout"]
    message = []
    if read or holdout:
        message.append(f"read_config=ReadConfig({', '.join(spelled)})")
    if example:
        message.append(f"example_config=ExampleConfig({', '.join(f'{k}={v!r}' for k, v in example.items())})")
    warnings.warn(f"as_dataset keyword arguments {', '.join(sorted(keywords))} are deprecated; pass "
                  f"{' and '.join(message)}", DanceDataDeprecationWarning, stacklevel=stacklevel)
    return ReadConfig(**read) if (read or holdout) else (read_config or ReadConfig()), \
        ExampleConfig(**example) if example else (example_config or ExampleConfig())
