"""One work unit: the videos of one shard -> decode -> extract -> write -> commit with a record.

The bytes depend only on the unit's videos and the build's identity: examples are serialized
deterministically, and extraction batches never cross a unit (the batcher is flushed, padded, at
its end). A video whose example an earlier build already wrote (same id, size and modification
time, same identity) is reused from that shard instead of decoded again, relabelled if the label
changed, but only where it takes the same batch slot it was computed in (`slot`); a video that
failed before fails the same way without being opened again.
"""
from __future__ import annotations

import collections

import numpy as np

from dancedata import schema
from dancedata.errors import DecodeError


def _video_key(row: dict) -> tuple:
    return (row["video_id"], int(row["size"]), int(row["mtime_ns"]))


def slots(unit, videos_per_batch: int) -> list:
    """(row, slot) for each video of `unit`: the k-th video fills slot k % V of the extractor's batch
    (extract.VideoBatcher; batches never cross a unit)."""
    return [(row, position % videos_per_batch) for position, row in enumerate(unit.videos)]


def to_decode(units: list, reuse: "Reuse", videos_per_batch: int) -> list:
    """The rows of `units`, in order, that `reuse` cannot supply: what the decoders must open."""
    return [row for unit in units for row, slot in slots(unit, videos_per_batch) if not reuse.has(row, slot, videos_per_batch)]


class Reuse:
    """Examples of earlier shards, found by (video_id, size, mtime_ns) and the batch slot their features
    were computed in. A kernel may round a row differently by its position in the batch (GPU kernels do;
    extract.VideoBatcher), so an example moved to another slot is computed again: only then does an
    update equal a fresh build byte for byte."""

    def __init__(self, pairs: list):
        self._where: dict = {}
        for path, record in pairs:
            for entry in record.get("videos", []):
                video_id, size, mtime_ns, lost = entry[:4]
                slot = entry[4] if len(entry) > 4 else None  # a record from before slots were recorded
                self._where[(video_id, size, mtime_ns)] = ("example", path, lost, slot)
            for entry in record.get("skipped", []):  # a failure does not depend on the slot
                self._where[(entry["video_id"], entry["size"], entry["mtime_ns"])] = ("skipped", entry["reason"], 0, None)
        self._shards: collections.OrderedDict = collections.OrderedDict()  # path -> {video_id: bytes}, 2 at most

    def __len__(self) -> int:
        return len(self._where)

    def _found(self, row: dict, slot: int, videos_per_batch: int):
        found = self._where.get(_video_key(row))
        if found is None or found[0] == "skipped":
            return found
        recorded = found[3]
        if recorded is None and videos_per_batch == 1:  # one video a batch: it can only have been slot 0
            recorded = 0
        return found if recorded == slot else None

    def has(self, row: dict, slot: int, videos_per_batch: int) -> bool:
        return self._found(row, slot, videos_per_batch) is not None

    def find(self, row: dict, slot: int, videos_per_batch: int):
        """None, ("example", serialized bytes, values lost), or ("skipped", reason, 0), for `row` placed in
        batch slot `slot` of `videos_per_batch`. None where the example was computed in another slot."""
        found = self._found(row, slot, videos_per_batch)
        if found is None:
            return None
        if found[0] == "skipped":
            return found[:3]
        return ("example", self._examples(found[1])[row["video_id"]], found[2])

    def _examples(self, path: str) -> dict:
        if path not in self._shards:
            import tensorflow as tf

            examples = {}
            for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
                example = tf.train.Example.FromString(serialized)
                example.DiscardUnknownFields()  # its padding (schema.PADDING_FIELD): the writer pads it anew
                examples[example.features.feature["video_id"].bytes_list.value[0].decode()] = example
            self._shards[path] = examples
            while len(self._shards) > 2:
                self._shards.popitem(last=False)
        return self._shards[path]


def relabel(example, row: dict) -> bytes:
    """An earlier example with this build's label and metadata (a new class can shift label ids)."""
    from dancedata.schema import LABEL, METADATA

    copy = type(example)()
    copy.CopyFrom(example)
    feature = copy.features.feature
    feature[LABEL].int64_list.value[:] = [int(row["label"])]
    for key in METADATA:
        feature[key].bytes_list.value[:] = [str(row.get(key, "")).encode("utf-8")]
    return schema.serialize(copy)


def _facts(example) -> dict:
    """What the record keeps of an example: real frames and what the decoder reported."""
    feature = example.features.feature
    ints = {key: feature[key].int64_list.value for key in (schema.MASK, schema.CLAIMED_FRAMES, schema.DECODED_FRAMES, schema.TRUNCATED)}
    return {
        "real_frames": int(sum(ints[schema.MASK])),
        "claimed_frames": int(ints[schema.CLAIMED_FRAMES][0]) if ints[schema.CLAIMED_FRAMES] else 0,
        "decoded_frames": int(ints[schema.DECODED_FRAMES][0]) if ints[schema.DECODED_FRAMES] else 0,
        "truncated": bool(ints[schema.TRUNCATED][0]) if ints[schema.TRUNCATED] else False,
    }


def run(unit, folder, decoded, batcher, reuse: Reuse, frames: int, feature_dim: int, dtype: str, on_video=None,
        encoder=None) -> dict:
    """Builds `unit` into `folder` (a build_folder.OutputFolder) and returns its committed record.

    `decoded` yields (row, Clip or DecodeError) for this unit's videos that `reuse` cannot supply,
    in unit order (the runner decodes ahead, across units). `on_video` is called once per video.
    `encoder` (a frames.Encoder) keeps each example's frames; the record then counts their bytes.
    """
    import tensorflow as tf

    from dancedata.write import ShardWriter

    writer = ShardWriter(folder.out, unit.name, frames, frames * feature_dim * np.dtype(dtype).itemsize)
    record = {"key": unit.key, "split": unit.split, "genres": {}, "videos": [], "skipped": [], "truncated": [],
              "short_examples": 0, "values_lost": 0, "values_seen": 0}
    if encoder is not None:
        record["frame_bytes"] = 0
    moments = Moments(feature_dim)
    empty = np.empty((0,), np.uint8)

    def emit(item, outcome, features):
        row, slot = item
        entry_key = {"video_id": row["video_id"], "size": int(row["size"]), "mtime_ns": int(row["mtime_ns"])}
        if isinstance(outcome, DecodeError) or (isinstance(outcome, tuple) and outcome[0] == "skipped"):
            reason = str(outcome) if isinstance(outcome, DecodeError) else outcome[1]
            entry = {"path": row["path"], "reason": reason, **entry_key}
            if encoder is not None:  # what a build --from-frames needs to plan this video as a build from the videos does
                entry.update({"label": int(row["label"]), **{key: str(row.get(key, "")) for key in schema.METADATA}})
            record["skipped"].append(entry)
        else:
            if isinstance(outcome, tuple):  # reused: ("example", proto, values lost)
                example, lost = outcome[1], outcome[2]
                serialized = relabel(example, row)
                moments.add_example(example, frames, dtype)
            else:
                clip = outcome
                full = np.zeros((frames, feature_dim), np.float32)
                full[clip.mask] = features
                encoded = encoder.for_clip(clip) if encoder is not None else None
                example = schema.to_example(full, clip.mask, clip.indices, row["label"], row, dtype, clip.report(), encoded)
                serialized = schema.serialize(example)
                lost = schema.values_lost(features, dtype)
                moments.add(full.astype(dtype)[clip.mask])
            example = example if isinstance(example, tf.train.Example) else tf.train.Example.FromString(serialized)
            facts = _facts(example)
            if encoder is not None:
                record["frame_bytes"] += sum(len(image) for image in example.features.feature[schema.FRAMES].bytes_list.value)
            writer.write(serialized)
            record["genres"][row["genre"]] = record["genres"].get(row["genre"], 0) + 1
            # The slot its features were computed in: a later update reuses them only in the same slot.
            record["videos"].append([row["video_id"], int(row["size"]), int(row["mtime_ns"]), int(lost), slot])
            record["values_lost"] += int(lost)
            record["values_seen"] += facts["real_frames"] * feature_dim
            if facts["real_frames"] < frames:
                record["short_examples"] += 1
            if facts["truncated"]:
                record["truncated"].append({"path": row["path"], "video_id": row["video_id"], **facts})
        if on_video:
            on_video()

    try:
        per_batch = batcher.extractor.videos_per_batch
        for row, slot in slots(unit, per_batch):
            outcome = reuse.find(row, slot, per_batch)
            if outcome is None:
                decoded_row, outcome = next(decoded)
                assert decoded_row["video_id"] == row["video_id"], (decoded_row["video_id"], row["video_id"])
            pixels = outcome.frames if not isinstance(outcome, (tuple, DecodeError)) else empty
            for (done_item, done), features in batcher.add(((row, slot), outcome), pixels):
                emit(done_item, done, features)
        for (done_item, done), features in batcher.flush():
            emit(done_item, done, features)
    except BaseException:
        writer.abort()
        raise
    record["genres"] = dict(sorted(record["genres"].items()))
    record["moments"] = moments.as_record()
    return writer.commit(record, unit.content_key)


class Moments:
    """Per-dimension sums over real frames, of the values as stored (float16 rounding included), so
    the mean and variance the manifest gets equal what a reader of the shards computes."""

    def __init__(self, feature_dim: int):
        self.frames = 0
        self.total = np.zeros(feature_dim, np.float64)
        self.squares = np.zeros(feature_dim, np.float64)

    def add(self, stored: np.ndarray) -> None:
        values = stored.astype(np.float64)
        self.frames += len(values)
        self.total += values.sum(0)
        self.squares += (values**2).sum(0)

    def add_example(self, example, frames: int, dtype: str) -> None:
        feature = example.features.feature
        stored = np.frombuffer(feature[schema.FEATURES].bytes_list.value[0], np.dtype(dtype).newbyteorder("<")).reshape(frames, -1)
        self.add(stored[np.asarray(feature[schema.MASK].int64_list.value, bool)])

    def as_record(self) -> dict:
        return {"frames": self.frames, "sum": self.total.tolist(), "sum_squares": self.squares.tolist()}


def mean_and_variance(records: list) -> tuple:
    """(frames, mean, variance) from units' moments, summed in the order given (plan order: the same
    floats on every runner)."""
    if any("moments" not in record for record in records):  # a shard kept from a build before moments
        return 0, None, None
    frames, total, squares = 0, None, None
    for record in records:
        moments = record["moments"]
        if not moments["frames"]:
            continue
        frames += moments["frames"]
        total = np.asarray(moments["sum"]) if total is None else total + np.asarray(moments["sum"])
        squares = np.asarray(moments["sum_squares"]) if squares is None else squares + np.asarray(moments["sum_squares"])
    if not frames:
        return 0, None, None
    mean = total / frames
    return frames, mean, np.maximum(squares / frames - mean**2, 0)
