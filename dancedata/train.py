"""Train a genre classifier on dancedata shards: `dancedata train --shards tfrecords/` (or, in the
repository, `python train.py --shards tfrecords/`, a thin script over this module).

flags -> TrainConfig -> datasets -> model -> fit (best weights on validation) -> evaluate -> artefacts
in --out: model.keras, labels.json, metrics.json, history.csv, PNGs, dataset.json (for predict).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from dancedata import cli, config, run_data
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
    strategy = run_data.strategy_for(cfg)
    chief = training.is_chief(strategy)
    state = None
    if chief:
        out, state = run_folder.prepare(cfg)
    else:  # the other workers of a multi-worker run train in step and keep nothing
        import tempfile

        out = tempfile.mkdtemp(prefix="dancedata-worker-")
    for warning in info.manifest.get("warnings", []):  # what the build said about its splits, where training starts
        print(f"warning from the build: {warning}", file=sys.stderr)
    for name in sorted(set(info.splits) - run_data.usable_splits(builder)):
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

    train_ds, val_ds, steps_per_epoch, table = run_data.datasets(builder, cfg, strategy, start)
    moments = build_moments(builder) if not run_data.holdout_fraction(builder, cfg) and not cfg.skip_bad_shards else None
    if moments is None:  # an older build, or train is not the whole train split: read it once
        moments = feature_moments(builder.as_dataset("train", batch_size=256, read_config=run_data.unordered(run_data.reading(builder, cfg, False)[0])))
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
        for until, first in run_data.phases(cfg):  # --finetune --freeze-epochs: the head alone, then with the backbone
            if state["status"] != "training" or start >= until:
                continue
            if first is not None:  # a new phase: its compile, and the training data from its first epoch on
                first(fitted)
                read, _, example = run_data.reading(builder, cfg, False, start, steps_per_epoch)
                train_ds = run_data.reader(builder, cfg)("train", batch_size=cfg.batch_size, read_config=read, example_config=example)
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

    evaluate_on, evaluation = run_data.evaluation(builder, cfg, val_ds)
    split = info.manifest.get("split", {})
    metrics = {
        "evaluated_split": evaluate_on,
        "distribution": {"strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync, "data_service": bool(cfg.data_service)},
        "split_strategy": split.get("strategy"),
        "shared_with_train": split.get("shared_with_train", {}).get(evaluate_on if evaluate_on in ("val", "test") else "", {}),
    }
    if run_data.holdout_fraction(builder, cfg):  # validation (and, without test or val splits, evaluation) held out of train
        metrics["validation"] = {"held_out_of": "train", "by": run_data.holdout_by(builder), "fraction": run_data.holdout_fraction(builder, cfg),
                                 "shared_with_train": builder.holdout_part("train", run_data.holdout_fraction(builder, cfg), run_data.holdout_by(builder))[1]}
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
