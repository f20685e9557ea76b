"""Train a genre classifier on dancedata shards: `dancedata train --shards tfrecords/` (or, in the
repository, `python train.py --shards tfrecords/`, a thin script over this module).

flags -> TrainConfig -> datasets -> model -> fit (best weights on validation) -> evaluate -> artefacts
in --out: model.keras, labels.json, metrics.json, history.csv, PNGs, dataset.json (for predict), and
with --on-damage skip damage.json (the records left out).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from dancedata import cli, config, run_data


# TrainConfig lives in its own module (run_data imports it: no import circle); its names stay here too.
from dancedata.train_config import CACHES, STRATEGIES, TrainConfig  # noqa: E402,F401


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
    """flags -> run -> datasets -> model -> fit -> evaluate -> artefacts."""
    import keras

    from dancedata.models import multi_worker, training, training_run

    builder = run_data.trainable_build(cfg)
    strategy = run_data.strategy_for(cfg)
    with training_run.TrainingRun.open(cfg, builder, strategy, chief=training.is_chief(strategy)) as run, run.reading():
        run_data.say_what_the_build_said(builder, cfg)
        keras.utils.set_random_seed(cfg.seed)
        data = run_data.datasets(builder, cfg, strategy)
        if cfg.on_damage == "skip" and run.chief:  # what was left out, before the first step: a user looks there
            from dancedata.models import report

            damage = run_data.damage_report(builder, cfg)
            report.write_json(os.path.join(run.out, "damage.json"), damage)
            if damage["problems"]:
                lost = ", ".join(f"{n} of {split}" for split, n in damage["lost"].items() if n) or "none"
                print(f"--on-damage skip: damaged records left out: {lost} (each listed in "
                      f"{os.path.join(run.out, 'damage.json')})", file=sys.stderr)
        run.steps = data.steps
        model, fitted, compiled_model = _models(cfg, builder, strategy, data, run.position)
        if cfg.strategy == "multi-worker":  # its own loop (Keras' fit fails there), through the same run
            multi_worker.fit_in_step(strategy, run, model, data.train_from(*run.position), data.val, cfg.epochs,
                                     cfg.batch_size, cfg.learning_rate)
        else:
            run.track(model, fitted)
            with strategy.scope():
                run.restore()
            training_run.fit(run, fitted, data.train_from, data.val, run_data.phases(cfg), _loggers(cfg, run))
        if run.state.status == "training":
            run.finish("trained")
        if not run.chief:
            return {"distribution": {"strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync, "chief": False}}
        run.check_build()
        best = run.best_weights() if data.val is not None else None
        if best is not None:
            import warnings

            with warnings.catch_warnings():  # the classifier's own optimizer is never used (fit's is): nothing to load
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                model.load_weights(best)  # the best epoch on validation, not the last
        if cfg.strategy != "default":  # evaluate and save on one device: a mirrored model's predict_on_batch
            trained, model = model, compiled_model()  # runs the whole batch on every replica and concatenates
            model.set_weights(trained.get_weights())
        metrics = _metrics(cfg, builder, strategy, model, data.val)
        _artefacts(cfg, builder, run, model, metrics)
        run.finish("done")
    print(f"run saved in {run.out}")
    if "test_accuracy" not in metrics:
        print("no test split, val split or held-out sequences to evaluate on", file=sys.stderr)
    else:
        evaluated = metrics["evaluated_split"]
        print(f"{'test' if evaluated == 'test' else evaluated + ' (no test split)'} accuracy: {metrics['test_accuracy']:.4f}")
    return metrics


def _models(cfg: TrainConfig, builder, strategy, data, position: tuple) -> tuple:
    """(classifier, the model fit trains: the classifier or the device table's model around it, a
    function that builds the classifier again), made under the strategy's scope."""
    import keras

    from dancedata import models
    from dancedata.models import training

    info = builder.info
    mean, variance = run_data.moments(builder, cfg)
    num_frames = cfg.seq_len or info.num_frames

    def compile_model(model):
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def compiled_model():
        if cfg.finetune:
            from dancedata.models import finetune

            return finetune.compiled_model(cfg, info, num_frames, mean, variance, position)
        return compile_model(models.build_model(cfg.model, len(info.classes), num_frames, info.feature_dim, mean, variance))

    with strategy.scope():
        model = compiled_model()
        fitted = training.on_device_table(model, data.table, cfg.seq_len, compile_model) if data.table is not None else model
    return model, fitted, compiled_model


def _loggers(cfg: TrainConfig, run):
    """Keras callbacks of a fit from `epoch` taking `steps` steps in its first epoch: the service's
    watchdog first (it pauses before the run's checkpoint is written), history.csv, TensorBoard."""
    import keras

    from dancedata import data_service

    def loggers(epoch: int, steps: int) -> list:
        return [*data_service.watchdogs(cfg.data_service, steps, cfg.data_service_timeout),
                keras.callbacks.CSVLogger(os.path.join(run.out, "history.csv"), append=epoch > 0),
                keras.callbacks.TensorBoard(os.path.join(run.out, "logs"))]

    return loggers


def _metrics(cfg: TrainConfig, builder, strategy, model, val) -> dict:
    """metrics.json: the evaluated split, where validation came from, what train shares with them, and
    the scores on the evaluated split."""
    evaluate_on, evaluation = run_data.evaluation(builder, cfg, val)
    split = builder.info.manifest.get("split", {})
    metrics = {
        "evaluated_split": evaluate_on,
        "distribution": {"strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync, "data_service": bool(cfg.data_service)},
        "split_strategy": split.get("strategy"),
        "shared_with_train": split.get("shared_with_train", {}).get(evaluate_on if evaluate_on in ("val", "test") else "", {}),
    }
    fraction, by = run_data.holdout_fraction(builder, cfg), run_data.holdout_by(builder)
    if fraction:  # validation (and, without test or val splits, evaluation) held out of train
        metrics["validation"] = {"held_out_of": "train", "by": by, "fraction": fraction,
                                 "shared_with_train": builder.holdout_part("train", fraction, by)[1]}
        if evaluate_on == "train-holdout":
            metrics["shared_with_train"] = metrics["validation"]["shared_with_train"]
    if evaluation is not None:
        metrics.update(_evaluate(model, evaluation, builder.info.classes))
    metrics["examples"] = run_data.examples(builder, cfg)
    return metrics


def _artefacts(cfg: TrainConfig, builder, run, model, metrics: dict) -> None:
    """model.keras, labels.json, dataset.json (what predict needs), train_config.json, metrics.json and
    the plots, into the run folder."""
    from dancedata import manifest as manifest_lib, naming
    from dancedata.models import report

    info, out = builder.info, run.out
    model.save(os.path.join(out, "model.keras"))
    report.write_json(os.path.join(out, "labels.json"), {"classes": info.classes, "names": [naming.genre_name(c) for c in info.classes]})
    report.write_json(  # sealed as a manifest is: predict refuses a dataset.json changed since (its sampling, classes)
        os.path.join(out, "dataset.json"),
        manifest_lib.sealed(
            {key: info.manifest[key] for key in ("classes", "num_frames", "feature_dim", "feature_dtype", "extractor", "sampling")}
            | {"seq_len": cfg.seq_len or None, "shards": os.path.abspath(cfg.shards), "inputs": "frames" if cfg.finetune else "features"}),
    )
    report.write_json(os.path.join(out, "train_config.json"), dataclasses.asdict(cfg) | {"out": out})
    report.write_all(out, metrics, info.classes, run.history())


INTERRUPTED = "run the same command to continue from its last checkpoint"  # what Ctrl-C leaves, and how to go on


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
