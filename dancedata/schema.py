"""The shard schema, declared once: feature keys, dtypes, shapes, the parse spec and `to_example`.

The writer and the reader both import this module; nothing else spells a feature key. The manifest
carries `feature_spec(...)` as JSON, and `parse_spec` turns that JSON back into the dict
`tf.io.parse_example` takes, so plain tf.data code can read shards with the manifest alone.
"""
from __future__ import annotations

import numpy as np

# Version 2 added the decode report (FRAME_TIMES ... TRUNCATED); version 3 a row file beside each shard
# (a second copy of the training fields); version 4 replaced it by an index beside each shard
# (shard_index.py), so the TFRecords are the one copy of every example. Readers take 1 to 4: the
# manifest's feature_spec says which keys a folder's examples hold, and each shard entry's "index"
# whether the fast reader can map it (row files of version 3 are never read: nothing checks them).
SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
HOLDOUT_BUCKETS = 1000  # a sequence's hold-out bucket: to_hash_bucket_fast(sequence_id, HOLDOUT_BUCKETS)

FEATURES = "features"  # [T, D] raw little-endian bytes of `feature_dtype`
MASK = "mask"  # [T] int64, 1 = real frame
LABEL = "label"  # int64 index into manifest["classes"]
FRAME_INDICES = "frame_indices"  # [T] int64 source frame numbers, -1 = padding
FRAME_TIMES = "frame_times"  # [T] float32 seconds of each kept frame from the stream's start, -1 = padding
FPS = "fps"  # float32 the container's average frame rate (0 if it states none)
CLAIMED_FRAMES = "claimed_frames"  # int64 the frame count the container states (0 if none)
DECODED_FRAMES = "decoded_frames"  # int64 frames the decoder went through to reach the last kept one
TRUNCATED = "truncated"  # int64 1 when the stream ended before a frame the sampling asked for
SEQUENCE_ID = "sequence_id"  # every camera view of one performance shares it
FRAMES = "frames"  # [T] encoded images (frames.py), only in builds with --keep-frames: TFDS's Video layout
VIDEO_ID = "video_id"  # the file name without extension: what resume, --update and --from-frames match videos by
METADATA = (VIDEO_ID, SEQUENCE_ID, "genre", "dancer", "camera", "music", "choreography", "situation")
# Not a feature: Example field 15, which the Example message does not define (every protobuf parser skips
# it, tf.io.parse_example and tf.train.Example included). A writer puts it first in a record, zero bytes,
# where they move the features to a multiple of the build's feature row in the file (shard_index.feature_row),
# so the mapped reader can gather them as whole rows.
PADDING_FIELD = 15


def feature_spec(num_frames: int, feature_dim: int, feature_dtype: str, frames: dict | None = None) -> dict:
    """JSON description of every key in an example; stored in manifest.json. `frames` (the manifest's
    "frames" entry: format, image_size, ...) adds the stored frames' key."""
    spec = {
        FEATURES: {
            "dtype": "string",
            "shape": [],
            "encoding": f"raw bytes of {feature_dtype} [{num_frames}, {feature_dim}], little-endian",
        },
        MASK: {"dtype": "int64", "shape": [num_frames]},
        LABEL: {"dtype": "int64", "shape": []},
        FRAME_INDICES: {"dtype": "int64", "shape": [num_frames]},
        FRAME_TIMES: {"dtype": "float32", "shape": [num_frames]},
        FPS: {"dtype": "float32", "shape": []},
        CLAIMED_FRAMES: {"dtype": "int64", "shape": []},
        DECODED_FRAMES: {"dtype": "int64", "shape": []},
        TRUNCATED: {"dtype": "int64", "shape": []},
    }
    spec.update({key: {"dtype": "string", "shape": []} for key in METADATA})
    if frames:
        size = frames["image_size"]
        spec[FRAMES] = {"dtype": "string", "shape": [num_frames],
                        "encoding": f"{frames['format']} images [{size}, {size}, 3] uint8 RGB, one per frame slot; "
                                    "padding slots (mask 0) black"}
    return spec


def parse_spec(spec: dict) -> dict:
    """manifest["feature_spec"] -> {key: tf.io.FixedLenFeature} for tf.io.parse_example."""
    import tensorflow as tf

    return {key: tf.io.FixedLenFeature(entry["shape"], tf.dtypes.as_dtype(entry["dtype"])) for key, entry in spec.items()}


def to_example(
    features: np.ndarray, mask: np.ndarray, frame_indices: np.ndarray, label: int, metadata: dict, dtype: str, report: dict | None = None,
    frames: list | None = None,
):
    """One video -> tf.train.Example. `features` is [T, D]; rows where mask is 0 should be zeros.
    `report` holds the decode report (FRAME_TIMES, FPS, CLAIMED_FRAMES, DECODED_FRAMES, TRUNCATED);
    `frames` the T encoded images of a build that keeps them."""
    import tensorflow as tf

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in np.ravel(values)]))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in np.ravel(values)]))

    def text(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode("utf-8")]))

    raw = np.ascontiguousarray(features, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    feature = {
        FEATURES: tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw])),
        MASK: ints(mask.astype(np.int64)),
        LABEL: ints([label]),
        FRAME_INDICES: ints(frame_indices),
    }
    report = report or {}
    feature.update({
        FRAME_TIMES: floats(report.get(FRAME_TIMES, np.full(len(mask), -1.0))),
        FPS: floats([report.get(FPS, 0.0)]),
        CLAIMED_FRAMES: ints([report.get(CLAIMED_FRAMES, 0)]),
        DECODED_FRAMES: ints([report.get(DECODED_FRAMES, 0)]),
        TRUNCATED: ints([report.get(TRUNCATED, 0)]),
    })
    feature.update({key: text(metadata.get(key, "")) for key in METADATA})
    if frames is not None:
        feature[FRAMES] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(frames)))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def serialize(example) -> bytes:
    """Example -> bytes, the same in every process: protobuf orders a map's entries differently from
    one process to the next unless asked not to."""
    return example.SerializeToString(deterministic=True)


def values_lost(features: np.ndarray, dtype: str) -> int:
    """How many values storing `features` as `dtype` flushes to zero or overflows to infinity."""
    if dtype == "float32":
        return 0
    stored = features.astype(dtype)
    return int(np.count_nonzero((stored == 0) & (features != 0)) + np.count_nonzero(np.isinf(stored) & np.isfinite(features)))


TRAINING_KEYS = (FEATURES, MASK, LABEL)


def held_out(sequences, fraction: float, held=None):
    """Whether each sequence id falls in the held-out `fraction`: a stable hash of the sequence id (the
    same sequences for every reader, so a held-out validation part never shares a performance with the
    rest), or, with `held` (holdout_table's), membership in a set of held-out sequence ids: a part
    chosen by a coarser unit, such as dancer groups (read.DatasetBuilder.holdout_part)."""
    import tensorflow as tf

    if held is not None:
        return held.lookup(tf.convert_to_tensor(sequences, tf.string)) > 0
    return tf.strings.to_hash_bucket_fast(sequences, HOLDOUT_BUCKETS) < int(round(fraction * HOLDOUT_BUCKETS))


def holdout_table(sequences):
    """A lookup table of held-out sequence ids for held_out (made eagerly, captured by readers), or None."""
    if sequences is None:
        return None
    import tensorflow as tf

    keys = tf.constant(sorted(sequences) or [b""], tf.string)
    values = tf.constant([1] * len(sequences) or [0], tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=0)


def decode_batch(serialized, spec: dict, num_frames: int, feature_dim: int, feature_dtype: str, keys=None, cast=True) -> dict:
    """A batch of serialized examples -> dict of tensors; features [B, T, D] float32, mask [B, T] bool.

    `keys` limits parsing to those keys (training needs only TRAINING_KEYS; skipping the strings is
    measurably faster). cast=False keeps features in the stored dtype (half the bytes of float16 ->
    float32, for caches). Turning the dict into model inputs is the reader's job.
    """
    import tensorflow as tf

    wanted = {key: entry for key, entry in spec.items() if keys is None or key in keys}
    parsed = tf.io.parse_example(serialized, parse_spec(wanted))
    raw = tf.io.decode_raw(parsed[FEATURES], tf.dtypes.as_dtype(feature_dtype), little_endian=True)
    features = tf.reshape(raw, [-1, num_frames, feature_dim])
    parsed[FEATURES] = tf.cast(features, tf.float32) if cast else features
    parsed[MASK] = tf.cast(parsed[MASK], tf.bool)
    return parsed
