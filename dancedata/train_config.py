"""train.py's flags as one frozen dataclass: the run's configuration, checked before anything starts
(flags map onto fields one to one: dancedata.config.add_flags)."""
from __future__ import annotations

import dataclasses

from dancedata import config
from dancedata.errors import ConfigError
from dancedata.read_config import ON_DAMAGE


STRATEGIES = ("default", "mirrored", "multi-worker")
CACHES = ("memory", "device", "none")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    shards: str = config.flag("shard folder with manifest.json (local or gs://)", default="tfrecords")
    out: str = config.flag("run folder (default: runs/<timestamp>)", default="")
    model: str = config.flag("architecture: gru (the notebook's) or transformer", default="gru")
    epochs: int = config.flag("training epochs", default=30)
    batch_size: int = config.flag("examples per batch", default=64)
    learning_rate: float = config.flag("Adam learning rate", default=1e-3)
    seq_len: int = config.flag("frames per example window (0: all stored frames)", default=0)
    seed: int = config.flag("seed for weights, shuffling and windows", default=0)
    patience: int = config.flag("stop after this many epochs without val improvement (0: never)", default=0)
    val_fraction: float = config.flag("when the shards have no val split: part of train held out by sequence", default=0.1)
    cache: str | None = config.flag(
        "memory (--cache): keep the decoded train and validation examples in memory after the first epoch; "
        "device: put them on the accelerator once and gather each batch there; none (--no-cache): read the "
        "shards every epoch (default: memory when they fit in a quarter of the available memory, else none)",
        default=None,
        custom=True,
    )
    verify: bool = config.flag("check shard sha256 against the manifest before training", default=False)
    on_damage: str = config.flag(
        "stop: a damaged shard or record stops the run, naming the file; skip: leave out exactly the records that "
        "fail their checks (a corrupted record, the records after a cut, a missing shard's), warn once per damaged "
        "file, list them in --out/damage.json and count them in metrics.json", default="stop")
    skip_bad_shards: bool = config.flag("the same as --on-damage skip (its spelling before it existed)", default=False)
    checkpoint_every: int = config.flag(
        "commit a resumable checkpoint every N training steps (0: at the end of each epoch only); a run also commits "
        "one at the current step on SIGTERM or Ctrl-C. A kill costs at most N steps of work and changes nothing in "
        "the result", default=0)
    accept_other_build: bool = config.flag(
        "resume this run although --shards now holds another build than the one it started on (the run says what "
        "changed)", default=False)
    overwrite: bool = config.flag("replace an earlier run in --out (its files and TensorBoard logs)", default=False)
    data_service: str = config.flag(
        "grpc://HOST:PORT of a tf.data service dispatcher whose workers read and parse the training split "
        "(python -m dancedata.data_service); validation and evaluation stay local",
        default="",
    )
    data_service_timeout: float = config.flag(
        "with --data-service: seconds training waits for its next batch (a lost worker or dispatcher) before it stops "
        "with one line; the same command then continues the run",
        default=120.0,
    )
    collective_timeout: float = config.flag(
        "with --strategy multi-worker: seconds any all-reduce may wait for the other workers before the run stops "
        "with an error (a worker died or hangs); long enough for the slowest worker's start-up",
        default=300.0,
    )
    strategy: str = config.flag(
        "default: one device; mirrored: all local GPUs (or logical CPUs) in sync, --batch-size is the global batch "
        "split over them; multi-worker: the machines in TF_CONFIG, each running this command (task 0 writes --out)",
        default="default",
    )
    finetune: bool = config.flag(
        "train the build's backbone together with the sequence model, from the frames a build made with "
        "--keep-frames stores (decoded and augmented every epoch); the saved model predicts from videos",
        default=False,
    )
    backbone_lr_multiplier: float = config.flag("with --finetune: the backbone's learning rate as a fraction of "
                                                "--learning-rate", default=0.1)
    freeze_epochs: int = config.flag("with --finetune: first epochs that train the sequence model alone", default=0)
    mixed_precision: str = config.flag("with --finetune: float16 compute in the backbone; auto: on a GPU only", default="auto")

    def __post_init__(self):
        from dancedata.models import ARCHITECTURES

        if isinstance(self.cache, bool):  # cache=True/False from before the device mode
            object.__setattr__(self, "cache", "memory" if self.cache else "none")
        if self.cache is not None:
            config.check_choice("cache", self.cache, CACHES)

        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be 0 or more, got {self.checkpoint_every!r}")
        if self.seq_len < 0 or self.patience < 0:
            raise ConfigError(f"seq_len and patience must be non-negative, got {self.seq_len!r} and {self.patience!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        config.check_choice("strategy", self.strategy, STRATEGIES)
        config.check_choice("on_damage", self.on_damage, ON_DAMAGE)
        if self.skip_bad_shards:
            object.__setattr__(self, "on_damage", "skip")
        if self.collective_timeout <= 0:
            raise ConfigError(f"collective_timeout must be positive, got {self.collective_timeout!r}")
        if self.data_service_timeout <= 0:
            raise ConfigError(f"data_service_timeout must be positive, got {self.data_service_timeout!r}")
        if self.data_service:
            from dancedata import data_service

            data_service.parse_address(self.data_service)
            if self.cache in ("memory", "device"):
                raise ConfigError("cache and data_service exclude each other: with a data service its workers read the training split")
            if self.strategy != "default":
                raise ConfigError("data_service works with strategy default only (one trainer consuming the service)")
        if self.model not in ARCHITECTURES:
            raise ConfigError(f"model must be one of {', '.join(ARCHITECTURES)}; got {self.model!r}")
        self._check_finetune()

    def _check_finetune(self):
        config.check_choice("mixed_precision", self.mixed_precision, ("auto", "on", "off"))
        if not 0 < self.backbone_lr_multiplier <= 1:
            raise ConfigError(f"backbone_lr_multiplier must be in (0, 1], got {self.backbone_lr_multiplier!r}")
        if not 0 <= self.freeze_epochs < self.epochs:
            raise ConfigError(f"freeze_epochs must be in 0..epochs-1 ({self.epochs - 1}), got {self.freeze_epochs!r}")
        if not self.finetune:
            changed = [name for name in ("backbone_lr_multiplier", "freeze_epochs", "mixed_precision")
                       if getattr(self, name) != TrainConfig.__dataclass_fields__[name].default]
            if changed:
                raise ConfigError(f"{', '.join(changed)} apply to finetune only: add --finetune, or leave them out")
        elif self.strategy != "default" or self.data_service or self.cache in ("memory", "device"):
            raise ConfigError("finetune trains on one device from the shards' frames: it takes no strategy other than "
                              "default, no data_service and no cache (frames are decoded every epoch)")
