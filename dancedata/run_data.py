"""The data side of a training run (dancedata/train.py's `_train` takes it from here): whether the
build can be trained on, which reader (features or stored frames), the two configs every reader of a
run takes, validation held out by the build's split unit, the memory cache decision, the training
split from any (epoch, step), feature statistics, tf.distribute set-up and the evaluation split."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

from dancedata.errors import ConfigError
from dancedata.train_config import TrainConfig


@dataclasses.dataclass
class RunData:
    """A run's datasets: `train_from(epoch, step)` is the training split from that position on (every
    epoch `steps` batches), `val` the validation batches (None without any), `table` the examples on the
    device with --cache device (the model then takes indices)."""

    train_from: Callable
    val: object
    steps: int
    table: object = None


def trainable_build(cfg: TrainConfig):
    """The DatasetBuilder of cfg.shards, refused (ConfigError) when nothing could learn from it."""
    from dancedata.read import DatasetBuilder

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
    return builder


def say_what_the_build_said(builder, cfg: TrainConfig) -> None:
    """The build's warnings about its splits, and splits left out, where training starts."""
    for warning in builder.info.manifest.get("warnings", []):
        print(f"warning from the build: {warning}", file=sys.stderr)
    for name in sorted(set(builder.info.splits) - usable_splits(builder)):
        print(f"split {name} has no example (its videos all failed to decode; see `python -m dancedata.inspect "
              f"{cfg.shards}`): left out", file=sys.stderr)


def moments(builder, cfg: TrainConfig):
    """(mean, variance) of the training part's real frames: as the build recorded them, or read once."""
    from dancedata.read import build_moments, feature_moments

    found = build_moments(builder) if not holdout_fraction(builder, cfg) and not lost(builder, cfg, "train") else None
    if found is None:  # an older build, or train is not the whole train split: read it once
        found = feature_moments(builder.as_dataset("train", batch_size=256,
                                                   read_config=unordered(reading(builder, cfg, False)[0])))
    return found


def lost(builder, cfg: TrainConfig, split: str) -> int:
    """Examples of `split` that --on-damage skip leaves out (0 under stop: damage stops the run)."""
    if cfg.on_damage != "skip":
        return 0
    return sum(1 for problem in builder.damage(split) if problem["record"] is not None)


def damage_report(builder, cfg: TrainConfig) -> dict:
    """damage.json: what --on-damage skip left out of each split read, record by record, and what cost nothing."""
    splits = sorted(usable_splits(builder))
    return {"on_damage": cfg.on_damage, "lost": {split: lost(builder, cfg, split) for split in splits},
            "problems": [problem for split in splits for problem in builder.damage(split)]}


def examples(builder, cfg: TrainConfig) -> dict:
    """metrics.json's "examples": each split's examples read and built, and what training saw, in words."""
    counts = {split: {"read": built - lost(builder, cfg, split), "built": built}
              for split, built in builder.info.splits.items() if built}
    train, trained = counts["train"], train_size(builder, cfg)
    left = [f"{train['built'] - train['read']} damaged left out"] if train["built"] > train["read"] else []
    if holdout_fraction(builder, cfg):
        left.append(f"{train['read'] - trained} held out for validation")
    summary = f"trained on {trained} of {train['built']} examples of train" + (f" ({', '.join(left)})" if left else "")
    others = [f"{c['built'] - c['read']} of {split}" for split, c in counts.items() if split != "train" and c["built"] > c["read"]]
    if others:
        summary += f"; damaged records left out of the other splits: {', '.join(others)}"
    return {**counts, "summary": summary}


def usable_splits(builder) -> set:
    """Splits with at least one example: a split whose every video failed to decode is left out (train() says so)."""
    return {name for name, count in builder.info.splits.items() if count}


def holdout_fraction(builder, cfg: TrainConfig) -> float:
    """Without a val split, validation is a part of train chosen by sequence id (no shared performances)."""
    return 0.0 if "val" in usable_splits(builder) else cfg.val_fraction


def holdout_by(builder) -> str:
    """The unit a held-out validation part is chosen by: the one the build's split held out (whole
    dancer groups under --split dancer; performances otherwise)."""
    return "dancer" if builder.manifest.get("split", {}).get("strategy") == "dancer" else "sequence"


def fits_in_memory(nbytes: int) -> bool:
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


def train_size(builder, cfg: TrainConfig) -> int:
    """Examples in the training part of train (all of it, or what the held-out validation leaves)."""
    if not holdout_fraction(builder, cfg):
        return builder.info.splits["train"] - lost(builder, cfg, "train")
    kept = builder.as_dataset("train", batch_size=256, read_config=unordered(reading(builder, cfg, False)[0]))
    return sum(int(label.shape[0]) for _, label in kept)


def datasets(builder, cfg: TrainConfig, strategy) -> RunData:
    """The run's RunData; validation never shares a performance with train. Train repeats from any
    (epoch, step) on, each epoch's order a pure function of (seed, epoch) (through a data service, the
    service's order), and an epoch is steps = ceil(examples / global batch) steps: Keras keeps one
    iterator and never runs out of data."""
    if cfg.verify:  # once per split, before any dataset reads it
        for split in builder.info.splits:
            builder.verify(split)
    usable = usable_splits(builder)
    if cfg.cache == "device":
        return device_datasets(builder, cfg, usable)
    cache = cfg.cache == "memory"
    if cfg.cache is None and not cfg.data_service and not cfg.finetune:  # train and validation are read every epoch; a held-out val is a part of train
        nbytes = builder.cache_bytes("train") + (builder.cache_bytes("val") if "val" in usable else 0)
        cache = fits_in_memory(nbytes)
        if not cache:
            print(f"train and validation ({nbytes / 1e9:.1f} GB decoded) are over a quarter of the available "
                  "memory: reading them from the shards every epoch (--cache keeps them anyway)", file=sys.stderr)
    steps = max(1, -(-train_size(builder, cfg) // cfg.batch_size))
    _, val_read, example = reading(builder, cfg, cache)

    def train_from(epoch: int, step: int):
        read = reading(builder, cfg, cache, epoch, None if cfg.data_service else steps, step)[0]
        if cfg.strategy != "default" and not cfg.data_service:  # each worker reads its share of the files, per-replica batches
            return strategy.distribute_datasets_from_function(
                lambda context: for_strategy(cfg, builder.as_dataset("train", batch_size=cfg.batch_size, read_config=read,
                                                                      example_config=example, input_context=context)))
        return reader(builder, cfg)("train", batch_size=cfg.batch_size, read_config=read, example_config=example)

    val = sized(reader(builder, cfg)("val" if "val" in usable else "train", batch_size=cfg.batch_size, read_config=val_read,
                                       example_config=example))
    if val is None and "val" not in usable:
        print("no val split and no sequence fell in the held-out part: training without validation", file=sys.stderr)
    if val is not None and cfg.strategy != "default":
        val = for_strategy(cfg, val)
    return RunData(train_from, val, steps)


def phases(cfg: TrainConfig) -> list:
    """[(train until epoch, what to do to the model first, or None)]: one phase, or with --finetune
    --freeze-epochs the frozen epochs and then the rest (models/finetune.py)."""
    if not cfg.finetune:
        return [(cfg.epochs, None)]
    from dancedata.models import finetune

    return finetune.phases(cfg)


def reader(builder, cfg: TrainConfig):
    """as_dataset of the run's inputs: the stored frames (--finetune), else the features."""
    if cfg.finetune:
        import functools

        from dancedata import frames_input

        return functools.partial(frames_input.as_dataset, builder)
    return builder.as_dataset


def reading(builder, cfg: TrainConfig, cache: bool, epoch: int = 0, steps: int | None = None, step: int = 0) -> tuple:
    """(train ReadConfig, validation ReadConfig, ExampleConfig) of a run: train shuffled from batch `step`
    of `epoch` on (through a data service: from the start of `epoch`, the service's order);
    validation is the val split, or without one the part of train held out by the split's unit. Features
    stay float16 to the model, which casts them on its device: half the bytes on the host."""
    from dancedata import ExampleConfig, Holdout, ReadConfig

    fraction, by = holdout_fraction(builder, cfg), holdout_by(builder)
    rest, held = (Holdout(fraction, by=by), Holdout(fraction, by=by, part="held")) if fraction else (None, None)
    train = ReadConfig(shuffle=True, seed=cfg.seed, repeat=True, epoch=epoch, step=0 if cfg.data_service else step,
                       steps_per_epoch=steps, cache=cache,
                       on_damage=cfg.on_damage, data_service=cfg.data_service or None, holdout=rest)
    val = ReadConfig(cache=cache, on_damage=cfg.on_damage, holdout=None if "val" in usable_splits(builder) else held)
    return train, val, ExampleConfig(seq_len=cfg.seq_len or None, cast=False)


def unordered(read):
    """The training part of train read once, in stored order, locally: for counting and statistics."""
    return dataclasses.replace(read, shuffle=False, repeat=False, epoch=0, step=0, steps_per_epoch=None, data_service=None)


def sized(dataset):
    """`dataset` with its number of batches declared (one pass: validation is small), so Keras knows
    where an evaluation ends instead of warning that the input ran out; None when it is empty."""
    import tensorflow as tf

    batches = sum(1 for _ in dataset)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches)) if batches else None


def device_datasets(builder, cfg: TrainConfig, usable: set) -> RunData:
    """--cache device: train (and val) examples in one table for the accelerator, and index batches
    that are the batches the other cache modes read (same seed, same order, same windows)."""
    from dancedata.device_table import index_dataset, load_table

    table = load_table(builder, ["train"] + (["val"] if "val" in usable else []), on_damage=cfg.on_damage)
    print(f"--cache device: {table.features.nbytes / 1e9:.2f} GB of features on the accelerator "
          f"({len(table.labels)} examples)", file=sys.stderr)
    steps = max(1, -(-train_size(builder, cfg) // cfg.batch_size))
    _, val_read, example = reading(builder, cfg, False)

    def train_from(epoch: int, step: int):
        read = reading(builder, cfg, False, epoch, steps, step)[0]
        return index_dataset(builder, "train", table, batch_size=cfg.batch_size, read_config=read, example_config=example)

    val = sized(index_dataset(builder, "val" if "val" in usable else "train", table, batch_size=cfg.batch_size,
                               read_config=val_read, example_config=example))
    if val is None and "val" not in usable:
        print("no val split and no sequence fell in the held-out part: training without validation", file=sys.stderr)
    return RunData(train_from, val, steps, table)


def for_strategy(cfg: TrainConfig, dataset):
    """For fit under MirroredStrategy, the mask as uint8: fit reduces a first batch across replicas and
    fails on a bool input ("AddN ... of bool", TF 2.21 + Keras 3.15); the model's bool input converts it
    back. The multi-worker loop does no such reduce and keeps the dataset as it is."""
    import tensorflow as tf

    if cfg.strategy != "mirrored":
        return dataset
    return dataset.map(lambda inputs, label: ((inputs[0], tf.cast(inputs[1], tf.uint8)), label))


def strategy_for(cfg: TrainConfig):
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


def evaluation(builder, cfg: TrainConfig, val_ds):
    """(name, dataset) to report on: test, else val, else the held-out part of train (by sequence)."""
    usable = usable_splits(builder)
    for split in ("test", "val"):
        if split in usable:
            from dancedata import ExampleConfig, ReadConfig

            return split, reader(builder, cfg)(split, batch_size=cfg.batch_size, read_config=ReadConfig(on_damage=cfg.on_damage),
                                             example_config=ExampleConfig(seq_len=cfg.seq_len or None))
    return ("train-holdout", val_ds) if val_ds is not None else (None, None)
