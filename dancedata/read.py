"""Read shards back as a tf.data pipeline that `Model.fit` takes directly.

    builder = DatasetBuilder("tfrecords/")          # or gs://bucket/prefix
    ds = builder.as_dataset("train", batch_size=64, shuffle=True, seed=0)
    # ((features float32 [B, T, D], mask bool [B, T]), label int32 [B])

The examples come from one of two sources over the same TFRecords, which give the same elements
once decoded: `mapped_shards.MappedShards` (schema 4: local shards memory-mapped, checked once, the
training fields gathered through each shard's index) or `record_files` (TFRecordDataset, every field,
any filesystem). `schema.decode_batch` / `schema.decode_rows` turn bytes into a dict of tensors; this module
orders, batches and turns that dict into model inputs (windows, casts), so predict and other tools
can reuse the first without labels.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from dancedata import manifest as manifest_lib
from dancedata import fs, mapped_shards, record_files, schema, shard_index
from dancedata.errors import ConfigError, ShardError
from dancedata.record_files import shard_error  # noqa: F401  (public here since schema 2: train.py, user code)

def _mappable_files() -> int:
    """How many files one reader maps at most. Before Python 3.13 each mapping holds a file descriptor
    open: a quarter of the process's limit leaves room for the rest (a split with more shards than
    that is streamed; 100 MB shards make ~11 for all of AIST)."""
    if sys.version_info >= (3, 13):
        return sys.maxsize
    try:
        import resource
    except ImportError:  # no such limit to respect
        return sys.maxsize
    return max(resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4, 1)


def interleaved(paths: list, starts: list, counts: list, shuffle: bool, seed, source, parallel: bool = True):
    """The examples of several files in the order every reader of a split uses: files shuffled once
    per seed (the same order every epoch: a cache after this point holds one order, so reshuffling per
    epoch would make cached and uncached training differ; the example buffer still reshuffles), then
    read several at a time, round robin. `source(path, start, count)` gives one file's elements (its
    records, or the indices start .. start + count - 1 of its examples in a table). parallel=False
    reads them in the same order on the calling thread: for sources with nothing to wait on (indices),
    threads cost more than they hide."""
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices((paths, tf.constant(starts, tf.int64), tf.constant(counts, tf.int64)))
    if shuffle:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=False)
    # Reading several shards at once hides per-file latency (remote storage) and mixes shards.
    cycle = max(1, min(len(paths), 8))
    if not parallel:
        return files.interleave(source, cycle_length=cycle)
    return files.interleave(source, cycle_length=cycle, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


HOLDOUT_UNITS = ("sequence", "dancer")
EPOCH_SEED_STRIDE = 1_000_003  # epoch e of seed s shuffles with seed s * stride + e: distinct for any run's epochs


def batched(examples, batch_size: int, shuffle: bool, seed, repeat: bool, shuffle_buffer: int, drop_remainder: bool,
            windows: bool, epoch: int = 0):
    """Batches: shuffled through a buffer, batched; with random windows, (batch, window seed [2]) pairs.

    repeat=True: epochs `epoch`, epoch + 1, ... back to back, each epoch's order (and window seeds) a
    pure function of (seed, epoch), never of how long the pipeline has run: a run resumed at epoch 5
    in a new process sees epoch 5's batches. (A cache before this point is filled once and shared by
    every epoch.) repeat=False: one epoch, reshuffled each time the dataset is iterated again, so its
    later iterations depend on how many came before; resumable training uses repeat=True."""
    import tensorflow as tf

    def one_epoch(number, reshuffle: bool):
        if repeat:  # traced: an op seed alone decides, never the caller's global seed (which would also make
            tf.compat.v1.get_default_graph().seed = None  # a tensor seed fail when the global seed is 0)
        ordered = examples
        epoch_seed = None if seed is None else tf.cast(seed, tf.int64) * EPOCH_SEED_STRIDE + number
        if shuffle:
            # Shards are already shuffled at write time and files are interleaved, so a modest buffer
            # mixes well; 256 x ~80 KB records measured ~40% faster than 1024 on 2 cores (cache misses).
            ordered = ordered.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=reshuffle)
        batches = ordered.batch(batch_size, drop_remainder=drop_remainder)
        if windows:
            return tf.data.Dataset.zip((batches, tf.data.Dataset.random(seed=epoch_seed).batch(2, drop_remainder=True)))
        return batches  # no map to add a seed nobody uses: one stage less per batch

    if repeat:
        return tf.data.Dataset.range(epoch, 2**62).flat_map(lambda number: one_epoch(number, False))
    return one_epoch(tf.constant(epoch, tf.int64), True)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    classes: list
    splits: dict  # name -> number of examples
    num_frames: int
    feature_dim: int
    feature_dtype: str
    extractor: dict
    sampling: dict
    skipped: list
    manifest: dict


def window_positions(mask, seq_len: int, training: bool, seed):
    """[B, seq_len] frame positions: a random window within the real frames in training, centred otherwise."""
    import tensorflow as tf

    real = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    room = tf.maximum(real - seq_len, 0)
    if training:
        fraction = tf.random.stateless_uniform(tf.shape(real), seed=seed)
        start = tf.minimum(tf.cast(tf.floor(fraction * tf.cast(room + 1, tf.float32)), tf.int32), room)
    else:
        start = room // 2
    return start[:, None] + tf.range(seq_len)[None, :]


def window(features, mask, seq_len: int, training: bool = False, seed=None):
    """(features, mask) cut to seq_len frames per example (see window_positions)."""
    import tensorflow as tf

    positions = window_positions(mask, seq_len, training, seed)
    return tf.gather(features, positions, batch_dims=1), tf.gather(mask, positions, batch_dims=1)


class DatasetBuilder:
    """A shard folder's manifest, and tf.data pipelines over its splits."""

    def __init__(self, path: str, rows: bool = True, map_rows: bool = True):
        """rows=False or map_rows=False stream training examples with TFRecordDataset instead of
        mapping local schema-4 shards (the names are schema 3's, when a row file served as the map)."""
        self.path = path.rstrip("/")
        self.read_rows, self.map_rows = rows, map_rows
        self._holdout_parts: dict = {}
        self.manifest = manifest_lib.load(self.path)
        m = self.manifest
        self.info = DatasetInfo(
            classes=list(m["classes"]),
            splits={name: split["num_examples"] for name, split in m["splits"].items()},
            num_frames=m["num_frames"],
            feature_dim=m["feature_dim"],
            feature_dtype=m["feature_dtype"],
            extractor=m.get("extractor", {}),
            sampling=m.get("sampling", {}),
            skipped=m.get("skipped", []),
            manifest=m,
        )

    def files(self, split: str) -> list:
        if split not in self.manifest["splits"]:
            known = ", ".join(self.manifest["splits"]) or "none"
            raise ConfigError(f"unknown split {split!r}; {self.path} has: {known}")
        return [f"{self.path}/{shard['file']}" for shard in self.manifest["splits"][split]["shards"]]

    def cache_bytes(self, split: str) -> int:
        """Memory that as_dataset(split, cache=True) holds: the features in their stored dtype, plus masks."""
        self.files(split)  # an unknown split is a ConfigError
        frames = self.info.num_frames
        per_example = frames * self.info.feature_dim * np.dtype(self.info.feature_dtype).itemsize + frames + 8
        return self.info.splits[split] * per_example

    def verify(self, split: str) -> None:
        """Checks every shard of `split` (and its index) exists and matches the manifest's sha256;
        raises ShardError. Every read checks each record's CRCs anyway; this also catches a shard
        swapped for another intact one."""
        import tensorflow as tf

        for shard, path in zip(self.manifest["splits"][split]["shards"], self.files(split)):
            checks = [(path, shard["sha256"])]
            if "index" in shard:
                checks.append((shard_index.index_path(self.path, shard), shard["index"]["sha256"]))
            for file, expected in checks:
                if not tf.io.gfile.exists(file):
                    raise ShardError(f"shard {file} is missing; rebuild, or copy the whole folder again")
                if fs.sha256(file) != expected:
                    raise ShardError(f"shard {file} does not match its sha256 in the manifest: it changed or is corrupt")

    def bad_shards(self, split: str) -> list:
        """[(path, reason)] for each shard of `split` that is missing, cut, corrupted, stale, or whose
        index is: every record's CRC is checked (schema 4: against the index, once per process for each
        version of a file; before: by reading every record)."""
        import tensorflow as tf

        bad = []
        for shard, path in zip(self.manifest["splits"][split]["shards"], self.files(split)):
            if "index" in shard:
                if problem := shard_index.problem(self.path, self.manifest, shard):
                    bad.append((path, problem))
                continue
            if not tf.io.gfile.exists(path):
                bad.append((path, "missing"))
                continue
            readable = sum(1 for _ in tf.data.TFRecordDataset(path).ignore_errors())
            if readable != shard["num_examples"]:
                bad.append((path, f"{readable} of {shard['num_examples']} records readable"))
        return bad

    def decode(self, serialized, keys=None, cast=True):
        """Batch of serialized examples -> dict of tensors (features float32 [B, T, D], mask bool [B, T], ...);
        cast=False keeps features in the stored dtype."""
        m = self.manifest
        return schema.decode_batch(serialized, m["feature_spec"], m["num_frames"], m["feature_dim"], m["feature_dtype"], keys, cast)

    def as_dataset(
        self,
        split: str,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int | None = None,
        seq_len: int | None = None,
        repeat: bool = False,
        cache: bool = False,
        drop_remainder: bool = False,
        verify: bool = False,
        with_metadata: bool = False,
        training: bool | None = None,
        shuffle_buffer: int = 256,
        holdout_fraction: float = 0.0,
        holdout: bool = False,
        input_context=None,
        skip_bad_shards: bool = False,
        data_service: str | None = None,
        cast: bool = True,
        epoch: int = 0,
        holdout_by: str = "sequence",
    ):
        """((features, mask), label) batches of `split`; with_metadata adds a dict of string fields.

        training (default: shuffle) picks random seq_len windows instead of centred ones.
        holdout_fraction > 0 removes a hashed-by-sequence_id part of the split (holdout=True keeps only
        it): a validation set that shares no performance with what it is taken from; holdout_by="dancer"
        holds out whole dancer groups instead (dancers who appear together go together), for builds
        split by dancer: then it shares no dancer either (holdout_part says what it shares).
        cache keeps the decoded examples in memory after the first pass (cache_bytes(split) of it);
        later epochs skip reading and parsing, and are still reshuffled.
        A corrupted or truncated shard raises tf.errors.InvalidArgumentError naming the file when it is
        read (`shard_error(error)` turns it into a ShardError); skip_bad_shards=True checks the shards
        first and leaves damaged ones out, with one warning that lists them.
        data_service="grpc://HOST:PORT" has tf.data service workers read, parse and batch (see
        `dancedata.data_service`); each shard is read by one worker per epoch, so the result's
        cardinality is unknown: use repeat=True and steps_per_epoch. Not with cache or input_context.
        cast=False hands features over in the stored dtype (float16 by default): half the bytes through
        the pipeline, and a model with a float32 input casts them on its device (train.py does this).
        repeat=True gives epochs `epoch`, epoch + 1, ... whose orders are each a pure function of
        (seed, epoch): start at the epoch a resumed run continues from, with steps_per_epoch.
        Without metadata, local shards of schema 4 are memory-mapped and each batch's features gathered
        through their indexes (the same batches as TFRecordDataset gives, several times faster; see
        mapped_shards.MappedShards); every shard is checked whole (each record's CRCs) when first mapped
        in a process, and a damaged one raises ShardError before anything is read.
        DatasetBuilder(path, rows=False) or map_rows=False streams the TFRecords instead.
        """
        import tensorflow as tf

        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if seq_len is not None and not 0 < seq_len <= self.info.num_frames:
            raise ConfigError(f"seq_len must be in 1..{self.info.num_frames} (the stored frames), got {seq_len}")
        if not 0 <= holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
        if holdout_by not in HOLDOUT_UNITS:
            raise ConfigError(f"holdout_by must be one of {', '.join(HOLDOUT_UNITS)}, got {holdout_by!r}")
        if data_service is not None:
            from dancedata import data_service as service

            if cache or input_context is not None:
                raise ConfigError("data_service cannot be combined with cache or input_context: the service's workers read the shards")
            data_service = service.check_reachable(data_service)
        training = shuffle if training is None else training
        if verify:
            self.verify(split)
        paths, counts = self.usable_files(split, skip_bad_shards)
        shard_records = False
        if input_context is not None:  # tf.distribute: each input pipeline reads its own part
            pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
            if len(paths) >= pipelines:
                paths, counts = paths[pipeline::pipelines], counts[pipeline::pipelines]
            else:  # fewer files than pipelines: every pipeline reads all files, keeps every n-th record
                shard_records = True
            batch_size = input_context.get_per_replica_batch_size(batch_size)

        if shuffle and data_service:  # the dispatcher hands out files in order (a shuffle here would defeat
            # its splitting: every worker would read every file), so the order is shuffled once, seeded
            order = np.random.default_rng(seed).permutation(len(paths))
            paths, counts = [paths[i] for i in order], [counts[i] for i in order]
        keys = None if with_metadata else schema.TRAINING_KEYS
        reading = self._reading(split, paths, counts, keys, mapped=not data_service)  # the service ships pure graph ops
        starts = [int(start) for start in np.cumsum([0] + counts[:-1])]
        records = interleaved(paths, starts, counts, shuffle and not data_service, seed, reading.source, reading.parallel)
        if shard_records:
            records = records.shard(pipelines, pipeline)
        if holdout_fraction:
            held = self.holdout_part(split, holdout_fraction, holdout_by)[0] if holdout_by != "sequence" else None
            records = reading.select(records, holdout_fraction, holdout, held)
        if cache:
            # Cache decoded examples in the stored dtype (no larger than the shards): later epochs skip
            # parse_example and decode_raw, which cost more than reading the file (benchmarks/).
            examples = records.batch(256).map(reading.decode, num_parallel_calls=tf.data.AUTOTUNE).unbatch().cache()
        else:
            examples = records
        batches = batched(examples, batch_size, shuffle, seed, repeat and not data_service, shuffle_buffer, drop_remainder,
                          seq_len is not None and training, epoch)  # through the service, each epoch is one job: repeated at the end
        to_inputs = self._to_inputs(seq_len, training, with_metadata, cast)
        if cache:
            prepare = to_inputs
        else:  # one vectorised decode per batch
            def prepare(serialized, seed=None):
                return to_inputs(reading.decode(serialized), seed)
        batches = batches.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if data_service:
            batches = service.distribute(batches, data_service)
            if repeat:
                batches = batches.repeat()
        return batches.prefetch(tf.data.AUTOTUNE)

    def _reading(self, split: str, paths: list, counts: list, keys, mapped: bool = True) -> record_files.Reading:
        """How to read the examples of `paths` (holding `counts` examples): the training fields of local
        schema-4 shards are gathered from the mapped files through their indexes (no protos to parse:
        benchmarks/train_throughput.py); everything else streams the TFRecords."""
        if keys == schema.TRAINING_KEYS and self.read_rows and mapped and self.map_rows:
            shards = self._mappable(split, paths)
            if shards is not None:
                return mapped_shards.MappedShards(self.path, self.manifest, shards).reading()
        return record_files.reading(self.decode, keys)

    def _mappable(self, split: str, paths: list):
        """The manifest entries of `paths` when they can be mapped (schema 4, local, a little-endian
        host, few enough files for the descriptors each mapping holds), else None."""
        entries = {f"{self.path}/{shard['file']}": shard for shard in self.manifest["splits"][split]["shards"]}
        shards = [entries[path] for path in paths]
        if (fs.is_remote(self.path) or sys.byteorder != "little" or len(paths) > _mappable_files()
                or any("index" not in shard for shard in shards)):
            return None
        return shards

    def holdout_part(self, split: str, fraction: float, by: str = "dancer") -> tuple:
        """(held-out sequence ids, what the held-out part shares with the rest) when a part of `split`
        is held out by `by`: "dancer" hashes each dancer group (split.dancer_groups) and holds out all of
        its sequences. Reads the split's metadata once per builder (its strings only)."""
        key = (split, fraction, by)
        if key not in self._holdout_parts:
            import pandas as pd
            import tensorflow as tf

            from dancedata import split as split_lib

            fields = ("video_id", schema.SEQUENCE_ID, "genre", "situation", "dancer", "music", "choreography")
            spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in fields}
            records = tf.data.TFRecordDataset(self.files(split)).batch(1024).map(lambda s: tf.io.parse_example(s, spec))
            columns = {name: [] for name in fields}
            for batch in records:
                for name in fields:
                    columns[name] += [value.decode("utf-8") for value in batch[name].numpy()]
            videos = pd.DataFrame(columns)
            groups = split_lib.dancer_groups(videos) if by == "dancer" else videos[schema.SEQUENCE_ID]
            buckets = tf.strings.to_hash_bucket_fast(list(groups) or [""], schema.HOLDOUT_BUCKETS).numpy()[: len(groups)]
            held = buckets < int(round(fraction * schema.HOLDOUT_BUCKETS))
            videos["split"] = np.where(held, "val", "train")
            sequences = frozenset(s.encode("utf-8") for s in videos[schema.SEQUENCE_ID][held])
            self._holdout_parts[key] = (sequences, split_lib.shared_with_train(videos).get("val", {}))
        return self._holdout_parts[key]

    def usable_files(self, split: str, skip_bad_shards: bool) -> tuple:
        """(paths, counts) of `split`, leaving out damaged shards (with one warning) when asked."""
        paths = self.files(split)
        counts = [shard["num_examples"] for shard in self.manifest["splits"][split]["shards"]]
        if skip_bad_shards:
            bad = dict(self.bad_shards(split))
            if bad:
                import warnings

                listed = "; ".join(f"{path} ({reason})" for path, reason in bad.items())
                warnings.warn(f"skipping {len(bad)} damaged shard(s) of {split}: {listed}", stacklevel=3)
                kept = [(p, c) for p, c in zip(paths, counts) if p not in bad]
                paths, counts = [p for p, _ in kept], [c for _, c in kept]
            if not paths:
                raise ShardError(f"every shard of split {split} is damaged; rebuild with the same build command")
        return paths, counts

    def _to_inputs(self, seq_len, training: bool, with_metadata: bool, cast: bool = True):
        """Decoded batch (features in the stored dtype) -> ((features, mask), label[, metadata]), features
        float32 or (cast=False) as stored."""
        import tensorflow as tf

        def to_inputs(parsed, seed=None):  # seed: only with random windows
            parsed = dict(parsed)
            if seq_len is not None and seq_len < self.info.num_frames:
                positions = window_positions(parsed[schema.MASK], seq_len, training, seed)
                for key in (schema.FEATURES, schema.MASK, schema.FRAME_INDICES):
                    if key in parsed:
                        parsed[key] = tf.gather(parsed[key], positions, batch_dims=1)
            features = parsed[schema.FEATURES]
            if cast:
                features = tf.cast(features, tf.float32)  # after windowing: fewer frames to convert
            mask, label = parsed[schema.MASK], tf.cast(parsed[schema.LABEL], tf.int32)
            if with_metadata:
                metadata = {key: parsed[key] for key in schema.METADATA + (schema.FRAME_INDICES,)}
                return (features, mask), label, metadata
            return (features, mask), label

        return to_inputs


def build_moments(builder: DatasetBuilder):
    """(mean, variance) float32 of the train split's real frames as the build computed them while
    writing it, or None for builds without them (before they were recorded)."""
    entry = builder.manifest.get("feature_statistics")
    if not entry:
        return None
    import json

    from dancedata import fs

    from dancedata import manifest as manifest_lib

    path = fs.join(builder.path, entry["file"])
    try:
        with fs.open_file(path) as handle:
            stats = json.load(handle)
    except (OSError, ValueError) as error:
        raise ShardError(f"cannot read {path} ({error}); rebuild with the same build command") from None
    if "sha256" in entry and manifest_lib.digest(stats) != entry["sha256"]:
        raise ShardError(f"{path} does not match the manifest (changed or damaged); rebuild with the same build command")
    return np.asarray(stats["mean"], np.float32), np.asarray(stats["variance"], np.float32)


def feature_moments(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and variance over the real frames of a ((features, mask), label) dataset."""
    total = squares = None
    count = 0
    for (features, mask), *_ in dataset:
        real = features.numpy()[mask.numpy()].astype(np.float64)
        total = real.sum(0) if total is None else total + real.sum(0)
        squares = (real**2).sum(0) if squares is None else squares + (real**2).sum(0)
        count += len(real)
    if not count:
        raise ConfigError("no real frames to compute feature statistics from")
    mean = total / count
    return mean.astype(np.float32), np.maximum(squares / count - mean**2, 0).astype(np.float32)
