"""Train a genre classifier on dancedata shards: `dancedata train --shards tfrecords/` (or, in the
repository, `python train.py --shards tfrecords/`, a thin script over this module).

flags -> TrainConfig -> datasets -> model -> fit (best weights on validation) -> evaluate -> artefacts
in --out: model.keras, labels.json, metrics.json, history.csv, PNGs, dataset.json (for predict).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from dancedata import cli, config
from dancedata.errors import ConfigError


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
    skip_bad_shards: bool = config.flag("leave out corrupted or truncated shards (listed in one warning) instead of stopping", default=False)
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
        if self.seq_len < 0 or self.patience < 0:
            raise ConfigError(f"seq_len and patience must be non-negative, got {self.seq_len!r} and {self.patience!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        config.check_choice("strategy", self.strategy, STRATEGIES)
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


def _usable_splits(builder) -> set:
    """Splits with at least one example: a split whose every video failed to decode is left out (train() says so)."""
    return {name for name, count in builder.info.splits.items() if count}


def _holdout(builder, cfg: TrainConfig) -> float:
    """Without a val split, validation is a part of train chosen by sequence id (no shared performances)."""
    return 0.0 if "val" in _usable_splits(builder) else cfg.val_fraction


def _holdout_by(builder) -> str:
    """The unit a held-out validation part is chosen by: the one the build's split held out (whole
    dancer groups under --split dancer; performances otherwise)."""
    return "dancer" if builder.manifest.get("split", {}).get("strategy") == "dancer" else "sequence"


def _fits_in_memory(nbytes: int) -> bool:
    """True when nbytes is at most a quarter of the memory available now (Linux), else of all memory."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):  # no sysconf (Windows): do not guess
            return False
    return nbytes <= available / 4


def _train_size(builder, cfg: TrainConfig) -> int:
    """Examples in the training part of train (all of it, or what the held-out validation leaves)."""
    if not _holdout(builder, cfg):
        return builder.info.splits["train"]
    kept = builder.as_dataset("train", batch_size=256, read_config=_unordered(_reading(builder, cfg, False)[0]))
    return sum(int(label.shape[0]) for _, label in kept)


def _datasets(builder, cfg: TrainConfig, strategy, epoch: int = 0):
    """(train, validation or None, steps per epoch, device table or None); validation never shares a
    performance with train. Train repeats from `epoch` on, each epoch's order a pure function of
    (seed, epoch) (through a data service, the service's order), and an epoch is
    steps_per_epoch = ceil(examples / global batch) steps: Keras keeps one iterator and never runs
    out of data."""
    if cfg.verify:  # once per split, before any dataset reads it
        for split in builder.info.splits:
            builder.verify(split)
    usable = _usable_splits(builder)
    holdout = _holdout(builder, cfg)
    if cfg.cache == "device":
        return _device_datasets(builder, cfg, usable, holdout, epoch)
    cache = cfg.cache == "memory"
    if cfg.cache is None and not cfg.data_service and not cfg.finetune:  # train and validation are read every epoch; a held-out val is a part of train
        nbytes = builder.cache_bytes("train") + (builder.cache_bytes("val") if "val" in usable else 0)
        cache = _fits_in_memory(nbytes)
        if not cache:
            print(f"train and validation ({nbytes / 1e9:.1f} GB decoded) are over a quarter of the available "
                  "memory: reading them from the shards every epoch (--cache keeps them anyway)", file=sys.stderr)
    steps = max(1, -(-_train_size(builder, cfg) // cfg.batch_size))
    train_read, val_read, example = _reading(builder, cfg, cache, epoch, None if cfg.data_service else steps)
    if cfg.strategy != "default" and not cfg.data_service:  # each worker reads its share of the files, per-replica batches
        train = strategy.distribute_datasets_from_function(
            lambda context: _for_strategy(cfg, builder.as_dataset("train", batch_size=cfg.batch_size, read_config=train_read,
                                                                  example_config=example, input_context=context)))
    else:
        train = _reader(builder, cfg)("train", batch_size=cfg.batch_size, read_config=train_read, example_config=example)
    val = _sized(_reader(builder, cfg)("val" if "val" in usable else "train", batch_size=cfg.batch_size, read_config=val_read,
                                       example_config=example))
    if val is None and "val" not in usable:
        print("no val split and no sequence fell in the held-out part: training without validation", file=sys.stderr)
    if val is not None and cfg.strategy != "default":
        val = _for_strategy(cfg, val)
    return train, val, steps, None


def _phases(cfg: TrainConfig) -> list:
    """[(train until epoch, what to do to the model first, or None)]: one phase, or with --finetune
    --freeze-epochs the frozen epochs and then the rest (models/finetune.py)."""
    if not cfg.finetune:
        return [(cfg.epochs, None)]
    from dancedata.models import finetune

    return finetune.phases(cfg)


def _reader(builder, cfg: TrainConfig):
    """as_dataset of the run's inputs: the stored frames (--finetune), else the features."""
    if cfg.finetune:
        import functools

        from dancedata import frames_input

        return functools.partial(frames_input.as_dataset, builder)
    return builder.as_dataset


def _reading(builder, cfg: TrainConfig, cache: bool, epoch: int = 0, steps: int | None = None) -> tuple:
    """(train ReadConfig, validation ReadConfig, ExampleConfig) of a run: train shuffled from `epoch` on;
    validation is the val split, or without one the part of train held out by the split's unit. Features
    stay float16 to the model, which casts them on its device: half the bytes on the host."""
    from dancedata import ExampleConfig, Holdout, ReadConfig

    fraction, by = _holdout(builder, cfg), _holdout_by(builder)
    rest, held = (Holdout(fraction, by=by), Holdout(fraction, by=by, part="held")) if fraction else (None, None)
    train = ReadConfig(shuffle=True, seed=cfg.seed, repeat=True, epoch=epoch, steps_per_epoch=steps, cache=cache,
                       skip_bad_shards=cfg.skip_bad_shards, data_service=cfg.data_service or None, holdout=rest)
    val = ReadConfig(cache=cache, skip_bad_shards=cfg.skip_bad_shards, holdout=None if "val" in _usable_splits(builder) else held)
    return train, val, ExampleConfig(seq_len=cfg.seq_len or None, cast=False)


def _unordered(read):
    """The training part of train read once, in stored order, locally: for counting and statistics."""
    return dataclasses.replace(read, shuffle=False, repeat=False, epoch=0, steps_per_epoch=None, data_service=None)


def _sized(dataset):
    """`dataset` with its number of batches declared (one pass: validation is small), so Keras knows
    where an evaluation ends instead of warning that the input ran out; None when it is empty."""
    import tensorflow as tf

    batches = sum(1 for _ in dataset)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches)) if batches else None


def _device_datasets(builder, cfg: TrainConfig, usable: set, holdout: float, epoch: int = 0):
    """--cache device: train (and val) examples in one table for the accelerator, and index batches
    that are the batches the other cache modes read (same seed, same order, same windows)."""
    from dancedata.device_table import index_dataset, load_table

    table = load_table(builder, ["train"] + (["val"] if "val" in usable else []), cfg.skip_bad_shards)
    print(f"--cache device: {table.features.nbytes / 1e9:.2f} GB of features on the accelerator "
          f"({len(table.labels)} examples)", file=sys.stderr)
    steps = max(1, -(-_train_size(builder, cfg) // cfg.batch_size))
    train_read, val_read, example = _reading(builder, cfg, False, epoch, steps)
    train = index_dataset(builder, "train", table, batch_size=cfg.batch_size, read_config=train_read, example_config=example)
    val = _sized(index_dataset(builder, "val" if "val" in usable else "train", table, batch_size=cfg.batch_size,
                               read_config=val_read, example_config=example))
    if val is None and "val" not in usable:
        print("no val split and no sequence fell in the held-out part: training without validation", file=sys.stderr)
    return train, val, steps, table


def _for_strategy(cfg: TrainConfig, dataset):
    """For fit under MirroredStrategy, the mask as uint8: fit reduces a first batch across replicas and
    fails on a bool input ("AddN ... of bool", TF 2.21 + Keras 3.15); the model's bool input converts it
    back. The multi-worker loop does no such reduce and keeps the dataset as it is."""
    import tensorflow as tf

    if cfg.strategy != "mirrored":
        return dataset
    return dataset.map(lambda inputs, label: ((inputs[0], tf.cast(inputs[1], tf.uint8)), label))


def _strategy(cfg: TrainConfig):
    """The tf.distribute strategy for --strategy (created before any model or dataset)."""
    import tensorflow as tf

    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "multi-worker":
        # The cluster from TF_CONFIG. A timeout on every collective: a worker that dies (or hangs) ends the
        # others' next all-reduce with an error instead of a wait without end.
        from dancedata.models.training import say_who_can_reach

        say_who_can_reach()
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cfg.collective_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        if cfg.batch_size % strategy.num_replicas_in_sync:
            raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {strategy.num_replicas_in_sync} replicas")
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    devices = [device.name for device in gpus or tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    if cfg.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {strategy.num_replicas_in_sync} replicas")
    return strategy


def _evaluation(builder, cfg: TrainConfig, val_ds):
    """(name, dataset) to report on: test, else val, else the held-out part of train (by sequence)."""
    usable = _usable_splits(builder)
    for split in ("test", "val"):
        if split in usable:
            from dancedata import ExampleConfig, ReadConfig

            return split, _reader(builder, cfg)(split, batch_size=cfg.batch_size, read_config=ReadConfig(skip_bad_shards=cfg.skip_bad_shards),
                                             example_config=ExampleConfig(seq_len=cfg.seq_len or None))
    return ("train-holdout", val_ds) if val_ds is not None else (None, None)


def _evaluate(model, dataset, classes: list) -> dict:
    """test_accuracy, test_loss, per-class precision/recall/F1 and the confusion matrix."""
    import keras
    import numpy as np

    from dancedata.models import report

    labels, probabilities = [], []
    for (features, mask), label in dataset:
        probabilities.append(model.predict_on_batch((features, mask)))
        labels.append(label.numpy())
    labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
    loss = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    scores = report.classification_metrics(labels, probabilities.argmax(1), classes)
    return {
        "test_accuracy": scores.pop("accuracy"),
        "test_loss": float(np.mean(keras.ops.convert_to_numpy(loss))),
        "num_examples": int(len(labels)),
        **scores,
    }


def train(cfg: TrainConfig) -> dict:
    """Trains, evaluates and saves; a damaged shard stops it with a ShardError naming the file."""
    import tensorflow as tf

    from dancedata import data_service
    from dancedata.read import shard_error

    try:
        return _train(cfg)
    except tf.errors.OpError as error:
        named = shard_error(error) or data_service.lost_job(error, cfg.data_service)
        if named is None:
            raise
        raise named from None


def _train(cfg: TrainConfig) -> dict:
    import keras

    from dancedata import data_service, models
    from dancedata import naming
    from dancedata.read import DatasetBuilder, build_moments, feature_moments
    from dancedata.models import multi_worker, report, run_folder, training

    builder = DatasetBuilder(cfg.shards)
    info = builder.info
    if not info.splits.get("train"):
        raise ConfigError(f"{cfg.shards} has no training example (splits: {', '.join(f'{n} {c}' for n, c in info.splits.items()) or 'none'})")
    trained = sorted(g for g, n in info.manifest["splits"]["train"].get("genres", {}).items() if n)
    if len(trained) < 2:
        raise ConfigError(f"{cfg.shards}: the train split holds examples of {len(trained)} genre(s) "
                          f"({', '.join(trained) or 'none'}): nothing can learn to tell genres apart from it; "
                          "build with videos of at least two genres")
    if cfg.finetune:
        from dancedata import frames_input

        frames_input.stored_frames(builder)  # a build without frames is refused before anything is written
    strategy = _strategy(cfg)
    chief = training.is_chief(strategy)
    state = None
    if chief:
        out, state = run_folder.prepare(cfg)
    else:  # the other workers of a multi-worker run train in step and keep nothing
        import tempfile

        out = tempfile.mkdtemp(prefix="dancedata-worker-")
    for warning in info.manifest.get("warnings", []):  # what the build said about its splits, where training starts
        print(f"warning from the build: {warning}", file=sys.stderr)
    for name in sorted(set(info.splits) - _usable_splits(builder)):
        print(f"split {name} has no example (its videos all failed to decode; see `python -m dancedata.inspect "
              f"{cfg.shards}`): left out", file=sys.stderr)
    keras.utils.set_random_seed(cfg.seed)
    checkpoints = os.path.join(out, "checkpoints")
    if state is None and chief:
        state = {"epoch": 0, "status": "training", "best": None, "since_best": 0, "config": run_folder.run_config(cfg)}
        training.write_state(checkpoints, state)
    if cfg.strategy == "multi-worker":  # every worker starts where the chief's run folder says
        state = multi_worker.shared_state(strategy, state)
    start = state["epoch"]

    train_ds, val_ds, steps_per_epoch, table = _datasets(builder, cfg, strategy, start)
    moments = build_moments(builder) if not _holdout(builder, cfg) and not cfg.skip_bad_shards else None
    if moments is None:  # an older build, or train is not the whole train split: read it once
        moments = feature_moments(builder.as_dataset("train", batch_size=256, read_config=_unordered(_reading(builder, cfg, False)[0])))
    mean, variance = moments
    num_frames = cfg.seq_len or info.num_frames

    def compile_model(model):
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def compiled_model():
        if cfg.finetune:
            from dancedata.models import finetune

            return finetune.compiled_model(cfg, info, num_frames, mean, variance, start)
        return compile_model(models.build_model(cfg.model, len(info.classes), num_frames, info.feature_dim, mean, variance))

    with strategy.scope():
        model = compiled_model()
        fitted = training.on_device_table(model, table, cfg.seq_len, compile_model) if table is not None else model
        if state.get("checkpoint") and cfg.strategy != "multi-worker":  # (the multi-worker loop restores its own)
            training.load_checkpoint(checkpoints, state, model, fitted)
    best = os.path.join(checkpoints, "best.weights.h5")
    os.makedirs(checkpoints, exist_ok=True)
    if cfg.strategy == "multi-worker":  # its own loop keeps history.csv, best weights, patience and checkpoints
        if chief:
            run_folder.history(out, start)  # rows of an epoch that did not commit its checkpoint go
        multi_worker.fit_in_step(strategy, model, train_ds, val_ds, steps_per_epoch, cfg.epochs, cfg.batch_size,
                                 cfg.learning_rate, cfg.patience, out, best if chief else None, state,
                                 checkpoints if chief else None)
        if chief:
            training.write_state(checkpoints, {**training.read_state(checkpoints), "status": "trained"})
        history = run_folder.history(out)
    else:  # the dataset is already shuffled (files, then a buffer), seeded; Keras must not try again
        if start:
            said = f"; best val_accuracy so far {state['best']:.4f}" if state.get("best") is not None else ""
            print(f"resuming the run in {out} after epoch {start} of {cfg.epochs} ({state['status']}{said})", file=sys.stderr)
        run_folder.history(out, start)  # rows of an epoch that did not commit its checkpoint go
        for until, first in _phases(cfg):  # --finetune --freeze-epochs: the head alone, then with the backbone
            if state["status"] != "training" or start >= until:
                continue
            if first is not None:  # a new phase: its compile, and the training data from its first epoch on
                first(fitted)
                read, _, example = _reading(builder, cfg, False, start, steps_per_epoch)
                train_ds = _reader(builder, cfg)("train", batch_size=cfg.batch_size, read_config=read, example_config=example)
            # The service's watchdog first: it pauses before RunProgress writes the epoch's checkpoint.
            callbacks = [*data_service.watchdogs(cfg.data_service, steps_per_epoch, cfg.data_service_timeout),
                         keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=start > 0),
                         keras.callbacks.TensorBoard(os.path.join(out, "logs")),
                         training.RunProgress(model, checkpoints, state, cfg.patience, best if val_ds is not None else None)]
            fitted.fit(train_ds, validation_data=val_ds, epochs=until, initial_epoch=start,
                       steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=2, shuffle=False)
            state = training.read_state(checkpoints)
            start = state["epoch"]
        training.write_state(checkpoints, {**state, "status": "trained"})
        history = run_folder.history(out)
    if not chief:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        return {"distribution": {"strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync, "chief": False}}
    if val_ds is not None and os.path.exists(best):
        import warnings

        with warnings.catch_warnings():  # the classifier's own optimizer is never used (fit's is): nothing to load
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(best)  # the best epoch on validation, not the last
    if cfg.strategy != "default":  # evaluate and save on one device: a mirrored model's predict_on_batch
        trained, model = model, compiled_model()  # runs the whole batch on every replica and concatenates
        model.set_weights(trained.get_weights())

    evaluate_on, evaluation = _evaluation(builder, cfg, val_ds)
    split = info.manifest.get("split", {})
    metrics = {
        "evaluated_split": evaluate_on,
        "distribution": {"strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync, "data_service": bool(cfg.data_service)},
        "split_strategy": split.get("strategy"),
        "shared_with_train": split.get("shared_with_train", {}).get(evaluate_on if evaluate_on in ("val", "test") else "", {}),
    }
    if _holdout(builder, cfg):  # validation (and, without test or val splits, evaluation) held out of train
        metrics["validation"] = {"held_out_of": "train", "by": _holdout_by(builder), "fraction": _holdout(builder, cfg),
                                 "shared_with_train": builder.holdout_part("train", _holdout(builder, cfg), _holdout_by(builder))[1]}
        if evaluate_on == "train-holdout":
            metrics["shared_with_train"] = metrics["validation"]["shared_with_train"]
    if evaluation is not None:
        metrics.update(_evaluate(model, evaluation, info.classes))
    model.save(os.path.join(out, "model.keras"))
    report.write_json(os.path.join(out, "labels.json"), {"classes": info.classes, "names": [naming.genre_name(c) for c in info.classes]})
    report.write_json(
        os.path.join(out, "dataset.json"),
        {key: info.manifest[key] for key in ("classes", "num_frames", "feature_dim", "feature_dtype", "extractor", "sampling")}
        | {"seq_len": cfg.seq_len or None, "shards": os.path.abspath(cfg.shards), "inputs": "frames" if cfg.finetune else "features"},
    )
    report.write_json(os.path.join(out, "train_config.json"), dataclasses.asdict(cfg) | {"out": out})
    report.write_all(out, metrics, info.classes, history)
    training.write_state(checkpoints, {**training.read_state(checkpoints), "status": "done"})
    print(f"run saved in {out}")
    if evaluation is None:
        print("no test split, val split or held-out sequences to evaluate on", file=sys.stderr)
    else:
        print(f"{'test' if evaluate_on == 'test' else evaluate_on + ' (no test split)'} accuracy: {metrics['test_accuracy']:.4f}")
    return metrics


INTERRUPTED = "run the same command to continue from the last completed epoch"  # what Ctrl-C leaves, and how to go on


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python train.py", description="Train a genre classifier on dancedata shards.")
    config.add_flags(parser, TrainConfig)
    help_text = next(f.metadata["help"] for f in dataclasses.fields(TrainConfig) if f.name == "cache")
    parser.add_argument("--cache", nargs="?", const="memory", default=None, choices=CACHES, help=help_text)
    parser.add_argument("--no-cache", dest="cache", action="store_const", const="none", help="same as --cache none")
    args = parser.parse_args(argv)
    train(config.from_flags(args, TrainConfig))
    return 0


if __name__ == "__main__":
    cli.exit(cli.run(main, "train.py", interrupted=INTERRUPTED))
