"""Stored frames as model inputs: the input pipeline of `train.py --finetune`.

    builder = DatasetBuilder("kept/")                 # a build made with --keep-frames png|jpeg
    train = frames_input.as_dataset(builder, "train", batch_size=8,
                                    read_config=ReadConfig(shuffle=True, seed=0, repeat=True))
    # ((frames uint8 [B, T, S, S, 3], mask bool [B, T]), label int32 [B])

The records come in the order every other reader gives them: the split's `Sampler` followed with
`pipelines.streamed_windows`, so an epoch's order is a pure function of (seed, epoch) and a resumed run
sees the batches an uninterrupted one does, from any step (ReadConfig(step=...): the streamed reader's
start, no replay). Each batch carries the sampler's seed for that batch
(`pipelines.batch_seeds`, the one the feature reader draws its random windows from), and every random
choice below is a stateless function of it: the same windows as a feature run with that seed, and the
same crops and flips in every rerun.

In training each example gets one random square crop (CROP_SCALE of the side or more) resized back
and a random horizontal flip, the same for all its frames, so motion stays coherent; in evaluation the
frames stay as stored, the centre square of the video, which is what `predict` decodes.
"""
from __future__ import annotations

from dancedata import frames as frames_lib
from dancedata import pipelines, schema
from dancedata.errors import ConfigError
from dancedata.read_config import ExampleConfig, ReadConfig, check_int, from_keywords

CROP_SCALE = (0.9, 1.0)  # a training crop's side as a fraction of the frame's: mild, the subject fills AIST frames
KEYS = (schema.FRAMES, schema.MASK, schema.LABEL)


def stored_frames(builder) -> dict:
    """The manifest's "frames" entry (format, image_size, ...); a build without frames is a ConfigError."""
    entry = builder.manifest.get("frames")
    if not entry:
        raise ConfigError(f"{builder.path} holds no stored frames, and --finetune trains on them: build with "
                          "--keep-frames png (or jpeg) to keep them")
    return entry


def as_dataset(builder, split: str, *, batch_size: int = 32, read_config: ReadConfig | None = None,
               example_config: ExampleConfig | None = None, image_size: int | None = None):
    """((frames, mask), label) batches of `split` in the sampler's order (see the module docstring).
    read_config and example_config mean what they mean for DatasetBuilder.as_dataset (cache and
    data_service aside: frames are decoded locally, every epoch); image_size: the model's input size
    (default: the backbone's, the manifest's extractor image_size)."""
    import tensorflow as tf

    read, example = from_keywords({}, read_config, example_config)  # checks both configs' types
    if read.data_service or read.cache:
        raise ConfigError("stored frames are decoded locally every epoch: data_service and cache do not apply to them")
    batch_size = check_int("batch_size", batch_size, 1)
    stored = stored_frames(builder)
    paths, sampler = builder.ordered_files(split, read)
    counter = None if read.repeat else pipelines.EpochCounter(read.epoch)
    batches = builder.streamed_batches(split, paths, sampler, read, batch_size, True, counter)  # a seed per batch
    training = read.shuffle if example.training is None else example.training
    size = image_size or builder.info.extractor.get("image_size") or stored["image_size"]
    prepare = _preparer(builder.manifest, stored, example.seq_len, training, size)
    # The images are decoded here, several batches at once; deterministic keeps the sampler's order.
    batches = batches.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    if counter is None:
        return batches
    keep = builder._streamed_keep(split, paths, sampler, read, builder._damage(split, read))
    return pipelines.counted(batches, counter, builder.epoch_batches(sampler, read, batch_size, keep))


def _preparer(manifest: dict, stored: dict, seq_len: int | None, training: bool, size: int):
    """(serialized batch, seed [2]) -> ((frames uint8 [B, T', size, size, 3], mask [B, T']), label)."""
    import tensorflow as tf

    from dancedata.read import window_positions

    spec = schema.parse_spec({key: manifest["feature_spec"][key] for key in KEYS})
    fmt, side, frames = stored["format"], stored["image_size"], manifest["num_frames"]

    def prepare(serialized, seed):
        parsed = tf.io.parse_example(serialized, spec)
        encoded, mask = parsed[schema.FRAMES], tf.cast(parsed[schema.MASK], tf.bool)
        if seq_len is not None and seq_len < frames:  # cut before decoding: only the window's images are decoded
            positions = window_positions(mask, seq_len, training, seed)
            encoded, mask = tf.gather(encoded, positions, batch_dims=1), tf.gather(mask, positions, batch_dims=1)
        length = encoded.shape[1]
        pixels = frames_lib.decode(tf.reshape(encoded, [-1]), fmt, side)  # [B * T', side, side, 3]
        if training:
            pixels = augment(pixels, length, tf.random.experimental.stateless_fold_in(seed, 1), size)
        else:
            pixels = frames_lib.resized(pixels, size)
        return (tf.reshape(pixels, [-1, length, size, size, 3]), mask), tf.cast(parsed[schema.LABEL], tf.int32)

    return prepare


def augment(pixels, frames: int, seed, size: int):
    """uint8 [B * frames, s, s, 3] (example after example) -> [B * frames, size, size, 3]: per example
    one random square crop of CROP_SCALE of the side, resized to `size` (bilinear), and a horizontal
    flip with probability 1/2; every frame of an example gets the same. Stateless in `seed` ([2] int)."""
    import tensorflow as tf

    examples = tf.shape(pixels)[0] // frames
    crop_seed, corner_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    scale = tf.random.stateless_uniform([examples], crop_seed, *CROP_SCALE)
    corner = tf.random.stateless_uniform([examples, 2], corner_seed) * (1.0 - scale)[:, None]
    boxes = tf.concat([corner, corner + scale[:, None]], axis=1)  # (y1, x1, y2, x2) of the frame, 0..1
    flip = tf.random.stateless_uniform([examples], flip_seed) < 0.5
    crops = tf.image.crop_and_resize(tf.cast(pixels, tf.float32), tf.repeat(boxes, frames, axis=0),
                                     tf.range(tf.shape(pixels)[0]), [size, size])
    crops = tf.where(tf.repeat(flip, frames)[:, None, None, None], tf.reverse(crops, axis=[2]), crops)
    return tf.cast(tf.clip_by_value(tf.round(crops), 0, 255), tf.uint8)
