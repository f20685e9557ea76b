"""Device-resident training data: every example of some splits in one table, and the batches
`DatasetBuilder.as_dataset` would give, as indices into it, so a model gathers each batch from the
table on its accelerator (train.py --cache device) while the host moves only indices and labels.

    table = load_table(builder, ["train", "val"])
    train = index_dataset(builder, "train", table, batch_size=64, read_config=ReadConfig(shuffle=True, seed=0))
    # ((example indices [B] int64, frame positions [B, S] int32), label [B])
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dancedata import pipelines, record_files, schema
from dancedata.errors import ConfigError
from dancedata.read import window_positions
from dancedata.read_config import ExampleConfig, ReadConfig, check_int, from_keywords


@dataclasses.dataclass
class Table:
    """Every example of some splits in memory: features in the stored dtype [N, T, D], masks [N, T]
    bool, labels [N], sequence ids [N]; `offsets[split]` is where each split starts (its examples
    follow in manifest file order)."""

    features: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    sequence_ids: np.ndarray
    offsets: dict

    def sequences(self) -> np.ndarray:
        return self.sequence_ids

    def gather(self, indices: np.ndarray) -> np.ndarray:
        return np.take(self.features, indices, axis=0)

    def decoder(self):
        """A batch of example indices -> dict of tensors (features in the stored dtype, mask, label): the
        host-memory twin of mapped_shards.MappedShards.decoder (ReadConfig(cache=True))."""
        import tensorflow as tf

        # One tensor in TensorFlow's memory, gathered in C++: 1.7x the throughput of a numpy_function's
        # np.take (measured, [4096, 20, 2048] float16, batches of 64); the numpy copy can go after this.
        features, masks, labels = tf.constant(self.features), tf.constant(self.masks), tf.constant(self.labels)

        def decode(indices):
            return {schema.FEATURES: tf.gather(features, indices), schema.MASK: tf.gather(masks, indices),
                    schema.LABEL: tf.gather(labels, indices)}

        return decode


def _counts(builder, paths: list) -> list:
    """The manifest's example count of each shard file in `paths`."""
    entries = {f"{builder.path}/{shard['file']}": shard["num_examples"]
               for split in builder.manifest["splits"].values() for shard in split["shards"]}
    return [entries[path] for path in paths]


class RecordTable:
    """The serialized records of some shard files in memory, gathered by index and parsed per batch: the
    cache of a reader that wants every field (ExampleConfig(with_metadata=True) with ReadConfig(cache=True))."""

    def __init__(self, builder, paths: list, held=None):
        import tensorflow as tf

        counts = _counts(builder, paths)
        records = record_files.records_of(paths, counts, held)  # a lost record b"": kept in place, never gathered
        self.records = tf.constant(list(records.as_numpy_iterator()) or [b""])[: sum(counts)]
        self.builder = builder

    def sequences(self) -> np.ndarray:
        import tensorflow as tf

        spec = {schema.SEQUENCE_ID: tf.io.FixedLenFeature([], tf.string, default_value="")}
        return tf.io.parse_example(self.records, spec)[schema.SEQUENCE_ID].numpy()

    def decoder(self):
        import tensorflow as tf

        def decode(indices):
            return self.builder.decode(tf.gather(self.records, indices), None, cast=False)

        return decode


def load_paths(builder, paths: list, counts: list | None = None, held=None, intact=None) -> Table:
    """The examples of the shard files `paths` in that order (record counts checked as everywhere);
    held, intact: damaged shards' records in memory (DatasetBuilder._held) and which examples are intact:
    a lost example's place is kept (zeros), never gathered."""
    import tensorflow as tf

    counts = _counts(builder, paths) if counts is None else counts
    keys = schema.TRAINING_KEYS + (schema.SEQUENCE_ID,)
    records = record_files.records_of(paths, counts, held)
    if held is not None:
        records = records.filter(lambda record: tf.strings.length(record) > 0)
    parts = [{key: value.numpy() for key, value in batch.items()}
             for batch in records.batch(512).map(lambda s: builder.decode(s, keys, cast=False))]
    if parts and intact is not None:
        parts = [_placed({key: np.concatenate([part[key] for part in parts]) for key in parts[0]}, intact)]
    if not parts:
        frames, dim = builder.info.num_frames, builder.info.feature_dim
        return Table(np.zeros((0, frames, dim), builder.info.feature_dtype), np.zeros((0, frames), bool),
                     np.zeros(0, np.int32), np.zeros(0, object), {})
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return Table(joined[schema.FEATURES], joined[schema.MASK], joined[schema.LABEL].astype(np.int32),
                 joined[schema.SEQUENCE_ID], {})


def _placed(columns: dict, intact: np.ndarray) -> dict:
    """Columns of the intact examples spread to every example's place (a lost one's: zeros)."""
    placed = {}
    for key, values in columns.items():
        placed[key] = np.zeros((len(intact), *values.shape[1:]), values.dtype)
        placed[key][intact] = values
    return placed


def load_table(builder, splits: list, skip_bad_shards: bool = False, on_damage: str = "stop") -> Table:
    """Reads `splits` once, file after file in manifest order (record counts checked as everywhere);
    on_damage="skip" (or skip_bad_shards) keeps a lost example's place, never gathered (index_dataset)."""
    parts, offsets, start = [], {}, 0
    read = ReadConfig(on_damage=on_damage, skip_bad_shards=skip_bad_shards)
    for split in splits:
        paths, counts = builder.files(split), builder.usable_files(split, False)[1]
        damage = builder._damage(split, read)
        offsets[split] = start
        parts.append(load_paths(builder, paths, counts, builder._held(damage), None if damage is None else damage.intact))
        start += len(parts[-1].labels)
    if not start:
        raise ConfigError(f"no examples in {', '.join(splits)}")
    return Table(np.concatenate([p.features for p in parts]), np.concatenate([p.masks for p in parts]),
                 np.concatenate([p.labels for p in parts]), np.concatenate([p.sequence_ids for p in parts]), offsets)


def index_dataset(builder, split: str, table: Table, *, batch_size: int = 32, read_config: ReadConfig | None = None,
                  example_config: ExampleConfig | None = None, **deprecated):
    """The batches builder.as_dataset(split, batch_size=..., read_config=..., example_config=...) gives,
    as indices into `table`: the same sampler, so the same examples land in the same batches with the
    same windows. (cache, source and data_service do not apply: the table is the cache.)"""
    import tensorflow as tf

    read, example = from_keywords(deprecated, read_config, example_config)
    batch_size = check_int("batch_size", batch_size, 1)
    _, sampler = builder.ordered_files(split, read)
    offset, counts = table.offsets[split], sampler.counts
    training = read.shuffle if example.training is None else example.training
    keep = builder._keep(builder._kept(split, table.sequence_ids[offset:offset + sum(counts)], read.holdout),
                         builder._damage(split, read))
    windows = example.seq_len is not None and training
    counter = None if read.repeat else pipelines.EpochCounter(read.epoch)
    frames = builder.info.num_frames
    length = example.seq_len if example.seq_len is not None else frames
    count = builder.epoch_batches(sampler, read, batch_size, keep) if counter is not None else None
    if count and not windows:  # every batch taken whole from values: no function, nothing to prefetch
        rows = np.arange(offset, offset + sum(counts))
        positions = np.broadcast_to(np.arange(frames, dtype=np.int32), (len(rows), frames))
        if length < frames:
            positions = window_positions(table.masks[rows], length, False, None).numpy()
        values = ((tf.constant(rows), tf.constant(positions)), tf.constant(np.asarray(table.labels[rows], np.int32)))
        return pipelines.epochs_by_index(sampler, read.epoch, batch_size, read.drop_remainder, keep, False, counter,
                                         count, values)
    batches = pipelines.index_batches(sampler, read.epoch, read.repeat, batch_size, read.drop_remainder, keep, windows,
                                      read.steps_per_epoch, read.step, counter)
    masks, labels = tf.constant(table.masks), tf.constant(table.labels)

    def to_inputs(index, seed=None):  # seed: only with random windows
        index = index + offset
        if length < frames:
            positions = window_positions(tf.gather(masks, index), length, training, seed)
        else:
            positions = tf.broadcast_to(tf.range(frames)[None, :], [tf.shape(index)[0], frames])
        return (index, positions), tf.gather(labels, index)

    batches = batches.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    return batches if counter is None else pipelines.counted(batches, counter, count)
