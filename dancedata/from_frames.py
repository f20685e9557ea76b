"""A build from the frames an earlier build kept: `build_shards --from-frames OLD --out NEW --backbone X`.

No video is opened. The earlier folder is checked as a reader checks it: its manifest (checksum and
every entry), each shard's record against the manifest, and every byte of every shard read against
its index and the TFRecord CRCs. Then the build runs as any build does (build_folder, runners,
work_unit), with two pieces from here:

- the plan (`make_plan`): the earlier build's videos, with their splits, labels and metadata (from its
  examples) and the videos that failed to decode (from its records, with their reasons), cut into
  shards for the new example size under the new identity: the units a build from the videos with the
  new options makes, whatever the earlier shard sizes were;
- the source (`FrameSource.imap`, in place of decode_pool.DecodePool): each row's clip, its frames
  decoded from the stored images in a parallel tf.data map (resized when --image-size differs) and its
  decode report (frame indices, times, fps, counts) as stored; a video that failed before fails again
  with its reason. The runners batch these into the extractor exactly as decoded clips, slot by slot,
  so features from PNG frames at the same size are byte-identical to a build from the videos.
  From JPEG or resized frames they are not, and the build's identity says so (FRAMES_SOURCE).
"""
from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from dancedata import build_folder, fs, schema, shard_index, split
from dancedata import frames as frames_lib, manifest as manifest_lib, plan as plan_lib
from dancedata.config import BuildConfig, SamplingConfig
from dancedata.errors import ConfigError, DecodeError, InputError, ShardError

FRAMES_SOURCE = "features_from_frames"  # identity key of a build whose features are not a video build's
SPLIT_OPTIONS = ("layout", "split", "val_fraction", "test_fraction", "seed")  # the earlier build's, fixed


class Earlier:
    """The build a --from-frames build reads: its manifest, plan state and shard records, checked."""

    def __init__(self, folder: str):
        self.folder = folder.rstrip("/") or folder
        self.manifest = manifest_lib.load(self.folder)
        self.frames = self.manifest.get("frames")
        if not self.frames or schema.FRAMES not in self.manifest["feature_spec"]:
            raise InputError(f"{folder} holds no stored frames (it was built without --keep-frames); build from the "
                             "videos once with --keep-frames png (or jpeg), then every other backbone can use --from-frames")
        described = self.frames if isinstance(self.frames, dict) else {}
        size = described.get("image_size")
        if described.get("format") not in frames_lib.FORMATS or not isinstance(size, int) or not 32 <= size <= 4096:
            raise InputError(f"{folder}/manifest.json describes its frames as {str(self.frames)[:120]}, which no build writes")
        state = build_folder.OutputFolder(self.folder)
        if state.damage:  # its plan (or manifest) is not what the build wrote: one line naming it
            raise state.damage[0][1]
        if not isinstance(state.plan, dict) or not {"identity", "units", "manifest"} <= set(state.plan):
            raise InputError(f"{folder} has no readable .build/plan.json: copy the whole build folder, .build/ included")
        self.identity, self.planned = state.plan["identity"], state.plan["manifest"]
        shards = {shard["file"]: shard for entry in self.manifest["splits"].values() for shard in entry["shards"]}
        self.shards, self.records = shards, []
        for name, key in state.plan["units"]:
            record = state.record(name)
            shard = shards.get(name)
            if record is None or shard is None or record.get("key") != key or \
                    any(record.get(field) != shard.get(field) for field in ("num_examples", "bytes", "sha256", "index")):
                raise InputError(f"{folder}: the record of shard {name} in .build/ does not match manifest.json (the folder "
                                 "was changed after its build); run that build's command again, or copy the folder again")
            self.records.append(record)
        self._cache: collections.OrderedDict = collections.OrderedDict()  # shard name -> [serialized], 2 at most

    @property
    def layout(self) -> str:
        return self.identity["layout"]

    def examples(self, name: str) -> list:
        """The serialized examples of shard `name`, every byte checked against its index and CRCs."""
        if name not in self._cache:
            self._cache[name] = self._read(self.shards[name])
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return self._cache[name]

    def _read(self, shard: dict) -> list:
        path, frames = fs.join(self.folder, shard["file"]), self.manifest["num_frames"]
        try:
            header, table = shard_index.load(self.folder, shard)
            if not len(table):
                shard_index.empty(path)
                return []
            width = shard_index.feature_bytes(self.manifest)
            if fs.is_remote(path):
                with fs.open_file(path, "rb") as handle:
                    data = handle.read(header["shard_bytes"] + 1)
                shard_index.check(data, header, table, path, frames, width)
            else:
                data = shard_index.mapped(path, header, table, shard, frames, width)
        except ShardError as error:
            raise InputError(f"cannot build from the frames in {self.folder}: {str(error).split('. Rebuild it')[0]}; run "
                             "that build's command again (it redoes damaged shards), then this one") from None
        return [bytes(data[start + 12:start + 12 + length]) for start, length in table[:, :2].tolist()]

    def rows(self) -> dict:
        """{split: plan rows} of every video the earlier build planned into a shard: its examples (label and
        metadata as stored) and the videos that failed to decode (as its records keep them)."""
        import tensorflow as tf

        truncated = {e["video_id"]: e["path"] for record in self.records for e in record.get("truncated", [])}
        rows = {name: [] for name in split.SPLITS}
        for record in self.records:
            where = record["split"]
            for serialized, (video_id, size, mtime_ns, *_) in zip(self.examples(record["file"]), record["videos"]):
                feature = tf.train.Example.FromString(serialized).features.feature
                metadata = {key: feature[key].bytes_list.value[0].decode("utf-8") for key in schema.METADATA}
                if metadata[schema.VIDEO_ID] != video_id:
                    raise InputError(f"{self.folder}: shard {record['file']} does not hold the videos its record lists")
                label = int(feature[schema.LABEL].int64_list.value[0])
                rows[where].append({"path": truncated.get(video_id, ""), "label": label, "split": where, **metadata,
                                    "size": size, "mtime_ns": mtime_ns})
            for entry in record["skipped"]:
                metadata = {key: entry.get(key, "") for key in schema.METADATA}
                rows[where].append({"path": entry["path"], "label": entry.get("label", -1), "split": where, **metadata,
                                    schema.VIDEO_ID: entry["video_id"], "size": entry["size"],
                                    "mtime_ns": entry["mtime_ns"]})
        return rows


def configs(earlier: Earlier, sampling: SamplingConfig, build: BuildConfig) -> tuple:
    """(sampling, build) with the earlier build's sampling and split options: its frames are sampled and
    its videos split already. A flag that asks for others (not its default, not the earlier value) is an error."""
    if os.path.abspath(build.from_frames) == os.path.abspath(build.out):
        raise ConfigError(f"from_frames and out must be different folders, got {build.out!r} for both")
    wanted = [(sampling, SamplingConfig(), SamplingConfig(**earlier.identity["sampling"]), f.name)
              for f in dataclasses.fields(SamplingConfig)]
    wanted += [(build, BuildConfig(), earlier.identity, name) for name in SPLIT_OPTIONS]
    for given, default, old, name in wanted:
        value = getattr(given, name)
        before = old[name] if isinstance(old, dict) else getattr(old, name)
        if value != getattr(default, name) and value != before:
            raise ConfigError(f"{name} is {before!r} in the build whose frames --from-frames reads; it cannot change "
                              f"(got {value!r}): leave the flag out, or build from the videos")
    fixed = {name: earlier.identity[name] for name in SPLIT_OPTIONS}
    return SamplingConfig(**earlier.identity["sampling"]), dataclasses.replace(build, **fixed)


def exact(earlier: Earlier, image_size: int) -> bool:
    """Whether the stored frames are the decoded pixels at this size: lossless, not resized."""
    return earlier.frames["format"] == "png" and earlier.frames["image_size"] == image_size


def make_plan(earlier: Earlier, sampling: SamplingConfig, extractor_entry: dict, feature_dim: int, build: BuildConfig):
    """The plan a build from the videos with these options makes, from the earlier build's rows."""
    import pandas as pd

    identity = plan_lib.identity(sampling, extractor_entry, build, earlier.layout)
    if not exact(earlier, extractor_entry["image_size"]):  # other features than a video build's: never mixed with one
        stored = ("format", "jpeg_quality", "image_size")
        identity[FRAMES_SOURCE] = {key: earlier.frames[key] for key in stored if key in earlier.frames}
    rows = earlier.rows()
    per_example = plan_lib.example_bytes(sampling, extractor_entry["image_size"], feature_dim, build)
    units = plan_lib.cut(rows, identity, per_example, build)
    videos = pd.DataFrame([row for members in rows.values() for row in members]).sort_values("video_id", ignore_index=True)
    old = earlier.planned
    return plan_lib.Plan(identity, units, videos, old["classes"], earlier.layout, list(old["skipped"]), [], old["groups"],
                         old["split"]["shared_with_train"], list(old["warnings"]))


def planned(earlier: Earlier, extractor_entry: dict, feature_dim: int, sampling, build) -> dict:
    """The planned manifest: the earlier build's account of its videos, this build's description of its examples."""
    source = {**earlier.planned["source"], "frames_from": os.path.abspath(earlier.folder)}
    accounts = {key: value for key, value in earlier.planned.items() if key != "frames"}  # frames: this build's, if any
    return {**accounts, **manifest_lib.described(extractor_entry, feature_dim, sampling, build), "source": source}


@dataclasses.dataclass
class StoredClip:
    """A clip as decode.Clip presents it to work_unit, read back from stored frames."""

    frames: np.ndarray  # [mask.sum(), S, S, 3] uint8 RGB: the real frames, decoded (and resized)
    indices: np.ndarray
    mask: np.ndarray
    report_values: dict
    encoded: list  # the T images as stored
    encoding: tuple  # (frames.entry of the stored images, their size): frames.Encoder copies them when it matches

    def report(self) -> dict:
        return self.report_values


REPORT = (schema.FRAME_TIMES, schema.FPS, schema.CLAIMED_FRAMES, schema.DECODED_FRAMES, schema.TRUNCATED)


class FrameSource:
    """`imap(rows)` yields (row, StoredClip or DecodeError) in row order, as decode_pool.DecodePool does,
    from an earlier build's stored frames: images decoded in parallel in tf.data, no video opened."""

    def __init__(self, folder: str, image_size: int):
        self.earlier = Earlier(folder)
        self.size = image_size
        self._where, self._failed = {}, {}
        for record in self.earlier.records:
            for position, entry in enumerate(record["videos"]):
                self._where[entry[0]] = (record["file"], position)
            for entry in record["skipped"]:
                self._failed[entry["video_id"]] = entry["reason"]
        stored = self.earlier.frames
        encoder = {key: value for key, value in stored.items() if key not in ("image_size", "bytes")}
        self._encoding = (encoder, stored["image_size"])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def _serialized(self, rows):
        for row in rows:
            name, position = self._where[row["video_id"]]
            yield self.earlier.examples(name)[position]

    def _dataset(self, rows):
        import tensorflow as tf

        fmt, stored_size = self.earlier.frames["format"], self.earlier.frames["image_size"]
        spec = {key: entry for key, entry in self.earlier.manifest["feature_spec"].items()
                if key in (schema.FRAMES, schema.MASK, schema.FRAME_INDICES, schema.VIDEO_ID, *REPORT)}

        @tf.autograph.experimental.do_not_convert  # plain tensor code: nothing for AutoGraph to convert
        def parse(serialized):
            example = tf.io.parse_single_example(serialized, schema.parse_spec(spec))
            example["pixels"] = frames_lib.resized(frames_lib.decode(example[schema.FRAMES], fmt, stored_size), self.size)
            return example

        signature = tf.TensorSpec([], tf.string)
        dataset = tf.data.Dataset.from_generator(lambda: self._serialized(rows), output_signature=signature)
        # Decoding the images is the work: in parallel, in order, a few videos ahead of the extractor.
        return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(4)

    def imap(self, rows):
        rows = list(rows)
        known = self._where.keys() | self._failed.keys()
        unknown = [row["video_id"] for row in rows if row["video_id"] not in known]
        if unknown:
            raise InputError(f"{self.earlier.folder} holds no frames of {unknown[0]} ({len(unknown)} video(s)); "
                             "build from the videos instead")
        dataset = self._dataset([row for row in rows if row["video_id"] in self._where])
        examples = dataset.as_numpy_iterator()
        for row in rows:
            if row["video_id"] not in self._where:
                yield row, DecodeError(self._failed[row["video_id"]])
                continue
            example = self._next(examples)
            if example[schema.VIDEO_ID].decode("utf-8") != row["video_id"]:
                raise InputError(f"{self.earlier.folder} changed while it was read (expected {row['video_id']}); run again")
            yield row, self._clip(example)

    def _next(self, examples) -> dict:
        """The next decoded example; a damaged shard or image found in the pipeline is one line naming the folder."""
        import tensorflow as tf

        try:
            return next(examples)
        except tf.errors.OpError as error:
            first = (error.message or str(error)).strip().splitlines()[0][:300]
            raise InputError(f"cannot build from the frames in {self.earlier.folder}: {first}") from None

    def _clip(self, example: dict) -> StoredClip:
        mask = example[schema.MASK].astype(bool)
        report = {key: example[key] if key == schema.FRAME_TIMES else example[key].item() for key in REPORT}
        return StoredClip(example["pixels"][mask], example[schema.FRAME_INDICES], mask, report,
                          list(example[schema.FRAMES]), self._encoding)
