"""The build plan: a pure function of (the input videos with their size and modification time, every
option) that gives each video a split and a shard. Each shard is a work unit (`work_unit.py`);
runners (`runners.py`) execute the units in any order, resume them, or skip the ones already built,
and always agree on the plan without talking to each other.

Within a split, videos are ordered by a stable hash of their id and cut into contiguous shards of
about `shard_mb`: every shard mixes genres, and adding videos moves no video to another split and
shifts shard boundaries only a little.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pandas as pd

from dancedata import config, schema, scan, split
from dancedata.config import BuildConfig, SamplingConfig

# Bytes an example takes besides its features: strings, masks, indices, times (measured ~600 at T=20).
EXAMPLE_OVERHEAD = 1024
ROW_FIELDS = ("path", "label", "split") + schema.METADATA + ("size", "mtime_ns")


def shard_name(split_name: str, index: int, count: int) -> str:
    return f"{split_name}-{index:05d}-of-{count:05d}.tfrecord"


def digest(value) -> str:
    """sha256 of a JSON value, written the one way that gives the same text for the same value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """One shard: its videos in writing order, and a key that changes when anything that goes into
    its bytes changes (the build's identity, or any of its videos' path, size, mtime, label, split)."""

    split: str
    index: int
    count: int
    videos: tuple  # dicts with ROW_FIELDS
    key: str

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index, self.count)

    @property
    def content_key(self) -> str:
        """The unit's key without where its videos lie (paths, times), which its shard's bytes do not
        depend on either: what the shard's index is bound to, the same from any copy of the input."""
        return digest({"split": self.split, "index": self.index, "count": self.count,
                       "videos": [[row["video_id"], row["label"], int(row["size"])] for row in self.videos]})


@dataclasses.dataclass
class Plan:
    identity: dict  # everything that decides the bytes of every shard, as flag-like names
    units: list  # WorkUnit, in writing order (train, val, test; by index)
    videos: pd.DataFrame  # the scanned videos with label and split
    classes: list
    layout: str
    skipped: list  # scan failures and videos the split rule excludes: [{"path", "reason"}]
    leaked: list  # sequence ids in two splits (only the random strategy allows it)
    groups: dict  # {split: {genre: groups}}
    shared: dict  # {val/test: {dancers/music/choreographies: {shared, total}}}
    warnings: list

    @property
    def inputs(self) -> list:
        """[video_id, size, mtime_ns] of every video the plan writes or tries: what --update compares."""
        rows = self.videos[self.videos.split != split.EXCLUDED]
        return [[r.video_id, int(r.size), int(r.mtime_ns)] for r in rows.itertuples()]


def identity(sampling: SamplingConfig, extractor_entry: dict, build: BuildConfig, layout: str) -> dict:
    """The options that decide a build's bytes (not --workers, --out, --quiet, ...). Stored frames add
    their encoding; a build without them has the identity it had before frames existed."""
    found = {
        "schema_version": schema.SCHEMA_VERSION,
        "sampling": config.asdict(sampling),
        "extractor": extractor_entry,
        "dtype": build.dtype,
        "layout": layout,
        "split": build.split,
        "val_fraction": build.val_fraction,
        "test_fraction": build.test_fraction,
        "seed": build.seed,
        "shard_mb": build.shard_mb,
    }
    if build.keep_frames:
        from dancedata import frames

        found["keep_frames"] = frames.entry(build.keep_frames, build.jpeg_quality)
    return found


def example_bytes(sampling: SamplingConfig, image_size: int, feature_dim: int, build: BuildConfig) -> int:
    """What one example is planned to take: its features, its stored frames (estimated), the rest."""
    from dancedata import frames

    kept = frames.estimated_bytes(build.keep_frames, image_size, sampling.frames) if build.keep_frames else 0
    return sampling.frames * feature_dim * np.dtype(build.dtype).itemsize + kept + EXAMPLE_OVERHEAD


def _order_key(seed: int, video_id: str) -> tuple:
    return (split.stable_fraction(seed, "shard-order\0" + video_id), video_id)


def make_plan(found: scan.Scan, sampling: SamplingConfig, extractor_entry: dict, feature_dim: int, build: BuildConfig) -> Plan:
    videos = found.videos.copy()
    classes = scan.classes(found.layout, videos)
    videos["label"] = videos.genre.map({name: i for i, name in enumerate(classes)}).astype("int64")
    videos["split"] = split.assign(videos, build.split, build.val_fraction, build.test_fraction, build.seed)
    leaked = split.leaked_sequences(videos, videos.split)
    if build.split != "random":  # random is the notebook's leaky split, kept on purpose for comparison
        split.check_no_leakage(videos, videos.split)
    skipped = list(found.skipped)
    skipped += [{"path": p, "reason": "excluded by the crossmodal split rule"} for p in videos.path[videos.split == split.EXCLUDED]]

    ident = identity(sampling, extractor_entry, build, found.layout)
    rows = {name: [{key: _plain(row[key]) for key in ROW_FIELDS} for row in videos[videos.split == name].to_dict("records")]
            for name in split.SPLITS}
    units = cut(rows, ident, example_bytes(sampling, extractor_entry["image_size"], feature_dim, build), build)

    counts = split.group_counts(videos, build.split)
    warnings = split.warnings_for(videos, counts, build.split)
    warnings += scan.class_warnings(classes)
    if not scan.has_grouping(videos):
        warnings.append(
            "no grouping: every video is its own sequence (names are not AIST names and there is no sequence_id "
            "column), so camera views or clips of one performance may land in different splits"
        )
    return Plan(ident, units, videos, classes, found.layout, skipped, leaked, counts, split.shared_with_train(videos), warnings)


def cut(rows: dict, ident: dict, per_example: int, build: BuildConfig) -> list:
    """{split: rows} -> the work units: each split's rows in their stable order, cut into contiguous
    shards of about `shard_mb` (`per_example` bytes each), each keyed by everything in its bytes."""
    ident_digest = digest(ident)
    units = []
    for name in split.SPLITS:
        members_of = sorted(rows.get(name, []), key=lambda row: _order_key(build.seed, row["video_id"]))
        if not members_of:
            continue
        # At least one example a shard: an example larger than --shard-mb (kept frames) gets a shard of its own,
        # never an empty one beside it.
        count = min(len(members_of), max(1, math.ceil(len(members_of) * per_example / (build.shard_mb * 1e6))))
        for index in range(count):
            members = tuple(members_of[len(members_of) * index // count : len(members_of) * (index + 1) // count])
            key = digest({"identity": ident_digest, "split": name, "index": index, "count": count, "videos": members})
            units.append(WorkUnit(name, index, count, members, key))
    return units


def _plain(value):
    """numpy scalars -> Python, so rows serialise to JSON and hash the same everywhere."""
    return value.item() if isinstance(value, np.generic) else value


def differences(old: dict, new: dict) -> list:
    """Human-readable `--flag old → new` lines between two identities (nested dicts flattened)."""
    flags = {f.name for cls in (SamplingConfig, config.ExtractorConfig, BuildConfig) for f in dataclasses.fields(cls)}
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b)
        elif a != b:
            if isinstance(a, str) and isinstance(b, str) and len(a) == len(b) == 64:  # fingerprints
                a, b = a[:12] + "…", b[:12] + "…"
            lines.append(f"{'--' + key.replace('_', '-') if key in flags else key} {a} → {b}")
    return lines


def input_changes(old: list, new: list) -> tuple:
    before = {video_id: (size, mtime) for video_id, size, mtime in old}
    after = {video_id: (size, mtime) for video_id, size, mtime in new}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(v for v in set(before) & set(after) if before[v] != after[v])
    return added, removed, changed


def changes_text(added, removed, changed) -> str:
    parts = [f"{len(ids)} {what} (e.g. {ids[0]})" for ids, what in ((added, "added"), (removed, "removed"), (changed, "modified")) if ids]
    return ", ".join(parts)
