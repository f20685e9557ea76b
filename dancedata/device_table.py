"""Device-resident training data: every example of some splits in one table, and the batches
`DatasetBuilder.as_dataset` would give, as indices into it, so a model gathers each batch from the
table on its accelerator (train.py --cache device) while the host moves only indices and labels.

    table = load_table(builder, ["train", "val"])
    train = index_dataset(builder, "train", table, batch_size=64, shuffle=True, seed=0)
    # ((example indices [B] int64, frame positions [B, S] int32), label [B])
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dancedata import schema
from dancedata.errors import ConfigError
from dancedata.read import batched, interleaved, window_positions
from dancedata.record_files import checked_records
from dancedata.mapped_shards import select_indices
from dancedata.schema import held_out, holdout_table


@dataclasses.dataclass
class Table:
    """Every example of some splits in memory: features in the stored dtype [N, T, D], masks [N, T]
    bool, labels [N], sequence ids [N]; `offsets[split]` is where each split starts (its examples
    follow in manifest file order)."""

    features: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    sequences: np.ndarray
    offsets: dict


def load_table(builder, splits: list, skip_bad_shards: bool = False) -> Table:
    """Reads `splits` once, file after file in manifest order (record counts checked as everywhere)."""
    import tensorflow as tf

    parts, offsets, start = [], {}, 0
    keys = schema.TRAINING_KEYS + (schema.SEQUENCE_ID,)
    for split in splits:
        paths, counts = builder.usable_files(split, skip_bad_shards)
        records = tf.data.Dataset.from_tensor_slices((paths, tf.constant(counts, tf.int64))).flat_map(checked_records)
        offsets[split] = start
        for batch in records.batch(512).map(lambda s: builder.decode(s, keys, cast=False)):
            parts.append({key: value.numpy() for key, value in batch.items()})
            start += len(parts[-1][schema.LABEL])
    if not parts:
        raise ConfigError(f"no examples in {', '.join(splits)}")
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return Table(joined[schema.FEATURES], joined[schema.MASK], joined[schema.LABEL].astype(np.int32),
                 joined[schema.SEQUENCE_ID], offsets)


def index_dataset(builder, split: str, table: Table, batch_size: int = 32, shuffle: bool = False, seed=None,
                  seq_len: int | None = None, repeat: bool = False, training: bool | None = None,
                  shuffle_buffer: int = 256, holdout_fraction: float = 0.0, holdout: bool = False,
                  skip_bad_shards: bool = False, epoch: int = 0, holdout_by: str = "sequence"):
    """The batches builder.as_dataset(split, ...) gives with the same arguments, as indices into
    `table`: the same file order, buffer and seeds (read.interleaved, read.batched), so the same
    examples land in the same batches with the same windows."""
    import tensorflow as tf

    training = shuffle if training is None else training
    paths, counts = builder.usable_files(split, skip_bad_shards)
    starts = list(table.offsets[split] + np.cumsum([0] + counts[:-1]))
    indices = interleaved(paths, starts, counts, shuffle, seed,
                          lambda _, start, count: tf.data.Dataset.range(start, start + count), parallel=False)
    if holdout_fraction:
        held = builder.holdout_part(split, holdout_fraction, holdout_by)[0] if holdout_by != "sequence" else None
        chosen = held_out(table.sequences, holdout_fraction, holdout_table(held))
        indices = select_indices(indices, np.asarray(chosen), holdout)
    masks, labels = tf.constant(table.masks), tf.constant(table.labels)
    frames = builder.info.num_frames
    length = seq_len if seq_len is not None else frames

    def to_inputs(index, seed=None):  # seed: only with random windows
        if length < frames:
            positions = window_positions(tf.gather(masks, index), length, training, seed)
        else:
            positions = tf.broadcast_to(tf.range(frames)[None, :], [tf.shape(index)[0], frames])
        return (index, positions), tf.gather(labels, index)

    batches = batched(indices, batch_size, shuffle, seed, repeat, shuffle_buffer, False, seq_len is not None and training, epoch)
    return batches.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
