"""Read shards back as a tf.data pipeline that `Model.fit` takes directly.

    builder = DatasetBuilder("tfrecords/")          # or gs://bucket/prefix
    ds = builder.as_dataset("train", batch_size=64, read_config=ReadConfig(shuffle=True, seed=0))
    # ((features float32 [B, T, D], mask bool [B, T]), label int32 [B])

Every reader takes a split's examples in the order of one `dancedata.sampler.Sampler`, a pure function
of (example counts, seed, worker, epoch): local schema-4 shards memory-mapped (`mapped_shards`, checked
once per process) and tables in memory (cache) gather each batch by index (`pipelines.index_batches`);
TFRecords streamed from any filesystem follow the same order with graph ops (`pipelines.streamed_windows`),
and `dancedata.ExampleSource` gives the same examples without TensorFlow. `schema.decode_batch` turns
bytes into a dict of tensors; this module turns that dict into model inputs (windows, casts).
"""
from __future__ import annotations

import dataclasses
import sys
import warnings

import numpy as np

from dancedata import manifest as manifest_lib
from dancedata import cli, damage as damage_lib, fs, light_stages, mapped_shards, pipelines, record_files, schema, shard_index
from dancedata import ranged_windows
from dancedata.errors import ConfigError, ShardError
from dancedata.read_config import (DanceDataDeprecationWarning, ExampleConfig, Holdout, ReadConfig, check_int,
                                   from_keywords)
from dancedata.sampler import Sampler
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

    def __init__(self, path: str, *, rows: bool = True, map_rows: bool = True):
        """rows/map_rows=False (deprecated: ReadConfig(source="stream")) stream the TFRecords instead of
        mapping local schema-4 shards."""
        if not (rows and map_rows):
            import warnings

            warnings.warn("DatasetBuilder(path, rows=False / map_rows=False) is deprecated; pass "
                          "read_config=ReadConfig(source='stream') to as_dataset", DanceDataDeprecationWarning, stacklevel=2)
        self.path = path.rstrip("/")
        self._default_source = "auto" if rows and map_rows else "stream"
        self._holdout_parts: dict = {}
        self._said: set = set()
        self._damages: dict = {}
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
        for shard, path in zip(self.manifest["splits"][split]["shards"], self.files(split)):
            if problem := self.sha256_problem(shard, path):
                raise ShardError(f"shard {problem}")

    def sha256_problem(self, shard: dict, path: str) -> str | None:
        """"FILE is missing" or "FILE does not match ..." for a shard or its index whose sha256 is not the
        manifest's, else None (reads both whole)."""
        checks = [(path, shard["sha256"])]
        if "index" in shard:
            checks.append((shard_index.index_path(self.path, shard), shard["index"]["sha256"]))
        for file, expected in checks:
            if not fs.exists(file):
                return f"{file} is missing; rebuild, or copy the whole folder again"
            if fs.sha256(file) != expected:
                return f"{file} does not match its sha256 in the manifest: it changed or is corrupt"
        return None

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
            if not fs.exists(path):
                bad.append((path, "missing"))
                continue
            try:  # every record read, CRCs checked, and counted against the manifest
                for _ in record_files.checked_records(path, shard["num_examples"]):
                    pass
            except tf.errors.OpError as error:
                bad.append((path, str(record_files.shard_error(error) or error).split(". Rebuild it")[0]))
        return bad

    def decode(self, serialized, keys=None, cast=True):
        """Batch of serialized examples -> dict of tensors (features float32 [B, T, D], mask bool [B, T], ...);
        cast=False keeps features in the stored dtype."""
        m = self.manifest
        return schema.decode_batch(serialized, m["feature_spec"], m["num_frames"], m["feature_dim"], m["feature_dtype"], keys, cast)

    def as_dataset(self, split: str, *, batch_size: int = 32, read_config: ReadConfig | None = None,
                   example_config: ExampleConfig | None = None, input_context=None, **deprecated):
        """((features, mask), label) batches of `split` (with_metadata: and a dict of string fields).

        read_config (ReadConfig) says where and how to read and in what order, example_config
        (ExampleConfig) what each example becomes; input_context (tf.distribute.InputContext) makes this
        one of several input pipelines, each reading its part (sampler workers) at its per-replica batch.
        Every order is a dancedata.sampler.Sampler's: the same batches from mapped shards, a cache,
        streamed TFRecords or ExampleSource. Damaged shards raise ShardError naming the file before
        anything is read (mapped; streamed by byte range, a shard of another size than built), or
        tf.errors.InvalidArgumentError when reached (streamed: `shard_error(error)` turns it into a ShardError); ReadConfig(on_damage="skip") leaves the damaged records with on_damage="skip" (`damage(split)` lists them). Through a tf.data service (ReadConfig(data_service=...)) each shard is read by one worker
        per epoch and the order is the workers' (files handed out in the sampler's order, windows of
        each worker's stream permuted afresh every epoch: not reproducible); the result's cardinality is
        unknown: repeat and give fit steps_per_epoch.
        The keyword arguments of earlier releases (shuffle=, seed=, seq_len=, ...) still work, with a
        warning naming their new spelling.
        """
        cli.load_tensorflow()  # its C++ start-up notices ignore TF_CPP_MIN_LOG_LEVEL: hidden as the commands hide them
        import tensorflow as tf

        read, example = from_keywords(deprecated, read_config, example_config)
        batch_size = check_int("batch_size", batch_size, 1)
        if example.seq_len is not None and example.seq_len > self.info.num_frames:
            raise ConfigError(f"seq_len must be in 1..{self.info.num_frames} (the stored frames), got {example.seq_len}")
        if read.data_service and input_context is not None:
            raise ConfigError("data_service cannot be combined with input_context: the service's workers read the shards")
        worker, workers = (input_context.input_pipeline_id, input_context.num_input_pipelines) if input_context else (0, 1)
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        paths, sampler = self.ordered_files(split, read, worker, workers)
        damage = self._damage(split, read)

        training = read.shuffle if example.training is None else example.training
        windows = example.seq_len is not None and training
        to_inputs = self._to_inputs(example.seq_len, training, example.with_metadata, example.cast)
        table = None if read.data_service else self._table(split, paths, read, example.with_metadata, damage)
        # Without repeat, an iteration's epoch is counted by the consumer (pipelines.EpochCounter).
        counter = None if read.repeat or read.data_service else pipelines.EpochCounter(read.epoch)
        keep = None
        if table is not None:
            keep = self._keep(self._kept(split, table.sequences(), read.holdout), damage)
            if read.repeat and not len(sampler.order(0, keep)):  # its epochs would be cycled without end
                raise ConfigError(f"input pipeline {worker} of {workers} has no example of {split} to read")
            decode = table.decoder()
            # A new iterator each epoch: its start and the consumer's thread count (pipelines.epochs_by_index).
            count = self.epoch_batches(sampler, read, batch_size, keep) if counter is not None else None
            if count and not example.with_metadata:
                return pipelines.epochs_by_index(
                    sampler, read.epoch, batch_size, read.drop_remainder, keep, windows, counter, count,
                    tf.constant(np.asarray(table.labels, np.int32)), lambda batch, seed=None: to_inputs(decode(batch), seed)[0])
            batches = pipelines.index_batches(sampler, read.epoch, read.repeat, batch_size, read.drop_remainder, keep,
                                              windows, read.steps_per_epoch, read.step, counter)
        else:
            # Its epochs would be cycled without end. Checked without the holdout: that would read the split first.
            if read.repeat and not read.data_service and not len(sampler.order(read.epoch)):
                raise ConfigError(f"input pipeline {worker} of {workers} has no example of {split} to read")
            keys = None if example.with_metadata else schema.TRAINING_KEYS
            batches = self.streamed_batches(split, paths, sampler, read, batch_size, windows, counter, True, keys)

            def decode(parsed):  # parsed where each record was read
                return parsed

        def prepare(batch, seed=None):  # one vectorised decode per batch
            return to_inputs(decode(batch), seed)

        calls = light_stages.GATHERS if table is not None else tf.data.AUTOTUNE  # not autotuned: see unrewritten
        batches = batches.map(prepare, num_parallel_calls=calls, deterministic=True)
        if read.data_service:
            from dancedata import data_service as service

            batches = service.distribute(batches, service.check_reachable(read.data_service))
            batches = batches.repeat() if read.repeat else batches
        batches = batches.prefetch(tf.data.AUTOTUNE)
        if table is not None:  # its functions capture the whole split: a cache, or a view of the mapped shards
            batches = pipelines.unrewritten(batches)
        if counter is None:
            return batches
        if table is None and (read.holdout is not None or damage) and self.epoch_batches(sampler, read, batch_size) is not None:
            keep = self._streamed_keep(split, paths, sampler, read, damage)  # with a holdout, one pass: its count
        return pipelines.counted(batches, counter, self.epoch_batches(sampler, read, batch_size, keep))

    def epoch_batches(self, sampler: Sampler, read: ReadConfig, batch_size: int, keep=None) -> int | None:
        """The batches of each iteration of a dataset without repeat, or None where they differ: started
        inside an epoch (the first iteration is shorter), or several workers taking shuffled shards (their
        shares of each epoch differ)."""
        if read.repeat or read.step or (sampler.shuffle and sampler.workers > 1):
            return None
        return pipelines.batch_count(len(sampler.order(read.epoch, keep)), batch_size, read.drop_remainder)

    def ordered_files(self, split: str, read: ReadConfig, worker: int = 0, workers: int = 1) -> tuple:
        """(shard paths, Sampler) of `split` as `read` reads it: shards checked first with read.verify (not
        with on_damage="skip": its scan checks every byte), and with on_damage="skip" scanned for damage
        (warned once per file); the sampler of input pipeline `worker`."""
        if read.verify and read.on_damage == "stop":
            self.verify(split)
        self._damage(split, read)
        paths, counts = self.files(split), [shard["num_examples"] for shard in self.manifest["splits"][split]["shards"]]
        return paths, Sampler(counts, seed=read.seed, shuffle=read.shuffle, window=read.shuffle_buffer, worker=worker,
                              workers=workers)

    def streamed_batches(self, split: str, paths: list, sampler: Sampler, read: ReadConfig, batch_size: int,
                         windows_wanted: bool, counter: pipelines.EpochCounter | None = None, decoded: bool = False,
                         keys=None):
        """Batches of serialized records (windows: with their seeds) in the sampler's order, epoch after
        epoch, each read.steps_per_epoch batches when set; through a service, one epoch (the service's
        job), repeated by the caller. The reader of every field and of stored frames (frames_input).
        decoded: batches of `keys` (None: every field) decoded instead (self.decode, the stored dtype),
        each record parsed where it is read and then moved as dense rows; where shards with lost records
        are held in memory, each batch is parsed as it is made. Training fields of schema-4 shards are
        read a window at a time by byte range instead (ranged_windows; not through a service).
        With read.step, the first epoch is entered where sampler.locate says: the shards before the
        window (read.shuffle_buffer examples) holding the start are not opened, and at most the records
        of one shard before it are read and dropped. With a holdout, finding the start also reads every
        record's sequence id once (one pass over the split, whatever the step)."""
        import tensorflow as tf

        def present(files):  # found missing here: inside tf.data, ignore_errors retries opening one without end
            for path in files:
                if not fs.exists(path):
                    raise ShardError(f"shard {path} is missing. {shard_index.REBUILD}")

        damage = self._damage(split, read)
        in_memory = self._held(damage)
        if in_memory is not None:  # a shard with lost records is read from memory: it may be missing
            paths_read = [path for path, (start, end) in zip(paths, in_memory[1]) if start == end]
        else:
            paths_read = paths
        if not read.data_service and (read.repeat or not read.step):
            present(paths_read)
        held = None
        if read.holdout is not None and read.holdout.by != "sequence":
            held = self.holdout_part(split, read.holdout.fraction, read.holdout.by)[0]
        early = decoded and in_memory is None  # a lost record (b"" in memory) has nothing to parse
        sequence_added = early and read.holdout is not None and keys is not None and schema.SEQUENCE_ID not in keys
        wanted = tuple(keys) + (schema.SEQUENCE_ID,) if sequence_added else keys

        def decode(serialized):
            return self.decode(serialized, wanted, cast=False)

        ranged = self._ranged(split, paths, sampler, wanted, read) if early and not read.data_service else None

        def one_epoch(epoch, entry=None, first=0):
            if ranged is not None:
                windows = ranged.windows(epoch, 0 if entry is None else entry[3])
            else:
                windows = pipelines.streamed_windows(sampler, paths, epoch, afresh=bool(read.data_service),
                                                     entry=None if entry is None else tf.unstack(entry)[:4],
                                                     held=in_memory, decode=decode if early else None)
            if in_memory is not None:  # the lost records' places, after the permutation: the intact order minus them
                windows = windows.map(lambda window: tf.boolean_mask(window, tf.strings.length(window) > 0))
            if read.holdout is not None:
                windows = record_files.select(windows, read.holdout.fraction, read.holdout.part == "held", held)
            if sequence_added:  # read for the holdout only
                windows = windows.map(lambda window: {key: window[key] for key in keys})
            if entry is not None:  # the records of the entry's window before the start position
                windows = windows.enumerate().map(lambda run, window: tf.nest.map_structure(
                    lambda field: field[tf.where(run == 0, entry[4], 0):], window))
            # Windows to batches without splitting them into records: rebatch copies each record once.
            batches = windows.rebatch(batch_size, drop_remainder=read.drop_remainder)
            if decoded and not early:
                batches = batches.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            if not windows_wanted:
                return batches
            return tf.data.Dataset.zip((batches, pipelines.batch_seeds(sampler, epoch, first)))

        if read.data_service:
            return one_epoch(tf.constant(read.epoch, tf.int64))
        if not read.step:
            return pipelines.each_epoch(read.epoch, read.repeat,
                                        lambda epoch: pipelines.exactly(one_epoch(epoch), read.steps_per_epoch), counter)
        keep = self._streamed_keep(split, paths, sampler, read, damage)
        examples = len(sampler.order(read.epoch, keep))
        first = pipelines.first_batch(read.step, read.steps_per_epoch, examples, batch_size, read.drop_remainder)
        located = sampler.locate(read.epoch, first * batch_size, keep)
        if not read.repeat:  # one epoch, from its entry on: the shards before it are never opened
            present([paths[shard] for shard in sampler.shards(read.epoch)[located.shards:] if paths[shard] in paths_read])
        whole = (0, 0, sampler.worker, 0, 0)  # an epoch from its start (sampler.Entry)

        def started_epoch(epoch):  # the first epoch from `located`, the others from their start
            is_first = tf.equal(epoch, read.epoch)
            entry = tf.where(is_first, tf.constant(located, tf.int64), tf.constant(whole, tf.int64))
            batches = one_epoch(epoch, entry, tf.where(is_first, tf.constant(first, tf.int64), 0))
            if read.steps_per_epoch is None:
                return batches
            skipped = tf.where(is_first, tf.constant(read.step, tf.int64), 0)
            return pipelines.exactly(batches, read.steps_per_epoch, skipped, one_epoch(epoch))

        return pipelines.started(pipelines.each_epoch(read.epoch, read.repeat, started_epoch, counter))

    def _ranged(self, split: str, paths: list, sampler: Sampler, keys, read: ReadConfig | None = None):
        """The streamed windows read by byte range (ranged_windows.RangedWindows) where they can be: training
        fields of schema-4 shards whose indexes load, on a little-endian host; else None (records streamed)."""
        shards = self.manifest["splits"][split]["shards"]
        if (keys is None or not set(keys) <= set(ranged_windows.FIELDS) or sys.byteorder != "little"
                or any("index" not in shard for shard in shards)):
            return None
        skip = read is not None and read.on_damage == "skip"
        loaded, why = ranged_windows.indexes(self.path, self.manifest, shards, appended_ok=skip)
        if why is not None and not skip:  # under "skip" the split's damage was said already
            warnings.warn(f"{why}: the split's records are streamed instead of read by byte range (the same batches, "
                          f"slower); python -m dancedata.inspect {self.path} --repair rewrites it", stacklevel=4)
        return None if loaded is None else ranged_windows.RangedWindows(self.manifest, paths, loaded, sampler, keys, skip)

    def damage(self, split: str) -> list:
        """What ReadConfig(on_damage="skip") leaves out of `split`, and damage that cost nothing: one dict
        per lost record, {"split", "file", "record" (its number in the file), "offset" (its byte, None when
        unknown), "cause"}, and one with record None for damage that lost no record (an index derived
        again in memory, bytes appended). [] for an intact split. Checks every byte of the split once
        per builder (dancedata.damage.split_damage)."""
        self.files(split)  # an unknown split is a ConfigError
        if split not in self._damages:
            self._damages[split] = damage_lib.split_damage(self.path, self.manifest, split)
        return list(self._damages[split].problems)

    def _damage(self, split: str, read: ReadConfig) -> damage_lib.SplitDamage | None:
        """The damage of `split` under read.on_damage="skip" (warned once per file), else None; None too
        when the split is intact."""
        if read.on_damage != "skip":
            return None
        self.damage(split)
        found = self._damages[split]
        damage_lib.warn(found, self._said)
        return found if found.problems else None

    @staticmethod
    def _keep(kept, damage: damage_lib.SplitDamage | None):
        return kept if damage is None else damage.keep(kept)

    def _held(self, damage: damage_lib.SplitDamage | None):
        """(records, bounds) of the shards with lost records, for record_files.checked_chunks: each such
        shard's records in memory (lost ones b""), read once; None when no record is lost."""
        if damage is None or damage.intact is None:
            return None
        import tensorflow as tf

        records, bounds = [], np.zeros((len(self.files(damage.split)), 2), np.int64)
        for position, found in sorted(damage.salvaged.items()):
            if not found.intact.all():
                bounds[position] = (len(records), len(records) + len(found.intact))
                records += found.records()
        return tf.constant(records, tf.string), bounds

    def _streamed_keep(self, split: str, paths: list, sampler: Sampler, read: ReadConfig, damage) -> np.ndarray | None:
        """The keep mask of a streamed read: its holdout's (one pass over the sequence ids) and the damage's."""
        kept = None
        if read.holdout is not None:
            kept = self._kept(split, self._sequences(paths, sampler.counts, self._held(damage)), read.holdout)
        return self._keep(kept, damage)

    def _sequences(self, paths: list, counts, held=None) -> np.ndarray:
        """Every record's sequence id (bytes) in `paths`, read in that order (counts checked; a lost
        record held as b"" has the empty id)."""
        import tensorflow as tf

        spec = {schema.SEQUENCE_ID: tf.io.FixedLenFeature([], tf.string, default_value="")}
        ids = record_files.records_of(paths, counts, held).batch(1024).map(
            lambda serialized: tf.io.parse_example(serialized, spec)[schema.SEQUENCE_ID])
        return np.concatenate([batch.numpy() for batch in ids] or [np.zeros(0, object)])

    def _table(self, split: str, paths: list, read: ReadConfig, metadata: bool, damage=None):
        """The examples of `paths` as a table gathered by index (mapped_shards.MappedShards, or with
        cache a copy in memory), or None to stream them. A lost record (damage) keeps its place there,
        never gathered."""
        if metadata:  # every field: the records themselves
            from dancedata.device_table import RecordTable

            return RecordTable(self, paths, self._held(damage)) if read.cache else None
        source = self._default_source if read.source == "auto" else read.source
        shards = self._mappable(split, paths) if source != "stream" else None
        if source == "mapped" and shards is None:
            raise ConfigError(f"source='mapped' needs local schema-4 shards on a little-endian host, and at most "
                              f"{_mappable_files()} of them: {self.path} cannot be mapped; use source='auto'")
        salvaged = damage.salvaged if damage is not None else None
        mapped = mapped_shards.MappedShards(self.path, self.manifest, shards, salvaged) if shards is not None else None
        if not read.cache:
            return mapped
        from dancedata.device_table import Table, load_paths

        if mapped is None:
            return load_paths(self, paths, held=self._held(damage), intact=None if damage is None else damage.intact)
        return Table(mapped.gather(np.arange(len(mapped.labels))), mapped.masks, mapped.labels.astype(np.int32),
                     mapped.sequences(), {})

    def _mappable(self, split: str, paths: list):
        """The manifest entries of `paths` when they can be mapped (schema 4, local, a little-endian
        host, few enough files for the descriptors each mapping holds), else None."""
        entries = {f"{self.path}/{shard['file']}": shard for shard in self.manifest["splits"][split]["shards"]}
        shards = [entries[path] for path in paths]
        if (fs.is_remote(self.path) or sys.byteorder != "little" or len(paths) > _mappable_files()
                or any("index" not in shard for shard in shards)):
            return None
        return shards

    def _kept(self, split: str, sequences: np.ndarray, holdout: Holdout | None):
        """Which examples (in table order) a holdout keeps, or None for all."""
        if holdout is None:
            return None
        held_sequences = self.holdout_part(split, holdout.fraction, holdout.by)[0] if holdout.by != "sequence" else None
        held = schema.held_out(np.asarray(sequences).astype(bytes), holdout.fraction, schema.holdout_table(held_sequences))
        held = np.asarray(held)
        return held if holdout.part == "held" else ~held

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
            paths, counts = self.usable_files(split, False)
            records = record_files.records_of(paths, counts, self._held(self._damages.get(split)))  # damage: as skipped
            records = records.filter(lambda record: tf.strings.length(record) > 0)
            records = records.batch(1024).map(lambda s: tf.io.parse_example(s, spec))
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
        """(paths, counts) of every shard of `split`; skip_bad_shards scans it for damage first (warned
        once per file). Readers now leave out damaged records, not shards (ReadConfig(on_damage="skip"))."""
        if skip_bad_shards:
            self._damage(split, ReadConfig(on_damage="skip"))
        return self.files(split), [shard["num_examples"] for shard in self.manifest["splits"][split]["shards"]]

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
