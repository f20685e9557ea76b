"""manifest.json: the one contract between a build and its readers. Local paths or any filesystem
TensorFlow knows (gs://, and s3:// etc. when tensorflow-io is imported)."""
from __future__ import annotations

import json
import os
import re

from dancedata import schema
from dancedata.errors import ManifestError

FILENAME = "manifest.json"
STATISTICS = "feature_statistics.json"  # per-dimension mean and variance of the train split's real frames
REQUIRED = ("schema_version", "feature_spec", "classes", "num_frames", "feature_dim", "feature_dtype", "splits")


def path_in(folder: str) -> str:
    return folder.rstrip("/") + "/" + FILENAME


def dumps(document: dict) -> str:
    """The one JSON spelling of a manifest: the same dict gives the same bytes."""
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


CHECKSUM = "checksum"  # sha256 of the manifest's own text without this key (dumps), so a changed byte is seen


def digest(document: dict) -> str:
    """sha256 of a document as `write` spells it."""
    import hashlib

    return hashlib.sha256(dumps(document).encode("utf-8")).hexdigest()


def sealed(document: dict) -> dict:
    """The manifest with its checksum: every reader checks it, so no value in it (a class name, a
    count, a shard's sha256) changes unnoticed."""
    plain = {key: value for key, value in document.items() if key != CHECKSUM}
    return {**plain, CHECKSUM: digest(plain)}


def write(folder: str, manifest: dict, name: str = FILENAME) -> str:
    """Writes atomically (fs.write_text): a reader never sees half a manifest."""
    from dancedata import fs

    target = fs.join(folder, name)
    fs.write_text(target, dumps(manifest))
    return target


def load(folder: str) -> dict:
    """Reads and checks a shard folder's manifest; raises ManifestError saying what is wrong. (Local
    folders are read without TensorFlow: dancedata.ExampleSource needs none.)"""
    from dancedata import fs

    fs.check(folder)
    path = path_in(folder)
    if not fs.exists(path):
        raise ManifestError(f"no {FILENAME} in {folder}: build shards first with `python -m dancedata.build_shards VIDEO_DIR --out {folder}`")
    try:
        with fs.open_file(path, "r") as handle:
            manifest = json.load(handle)
    except (ValueError, OSError) + fs.read_errors() as error:
        raise ManifestError(f"cannot read {path}: {error}") from None
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}; it was not written by dancedata")
    version = manifest["schema_version"]
    if version not in schema.READABLE_VERSIONS:
        newer = isinstance(version, int) and version > schema.SCHEMA_VERSION
        raise ManifestError(
            f"{path} has schema version {version!r}; this dancedata reads versions "
            f"{', '.join(map(str, schema.READABLE_VERSIONS))}. "
            + ("Upgrade dancedata (pip install -U dancedata) to read it" if newer else "Rebuild the shards with this dancedata")
        )
    check(manifest, path)
    if CHECKSUM in manifest and sealed(manifest)[CHECKSUM] != manifest[CHECKSUM]:
        raise ManifestError(f"{path} was changed after the build (its checksum does not match its content); "
                            "copy the folder again, or rebuild it")
    return manifest


SPLITS = ("train", "val", "test")
SHARD_FILE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord$")
_LIMIT = 1 << 31


def check(manifest: dict, path: str) -> None:
    """Every name and number a reader takes from a manifest, checked before it reaches a path or sizes
    an allocation: manifests travel between people. Raises ManifestError naming the entry."""
    def bad(what):
        return ManifestError(f"{path}: {what}; it was not written by dancedata, or was edited. Rebuild, or copy the folder again")

    def count(value, low=0, high=_LIMIT):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value < high

    if not count(manifest["num_frames"], 1, 1 << 16) or not count(manifest["feature_dim"], 1, 1 << 20):
        raise bad(f"num_frames {manifest['num_frames']!r} or feature_dim {manifest['feature_dim']!r} out of range")
    if manifest["feature_dtype"] not in ("float16", "float32"):
        raise bad(f"feature_dtype {manifest['feature_dtype']!r} is not float16 or float32")
    if not isinstance(manifest["classes"], list) or not all(isinstance(c, str) for c in manifest["classes"]):
        raise bad("classes is not a list of names")
    if not isinstance(manifest["splits"], dict) or not set(manifest["splits"]) <= set(SPLITS):
        raise bad(f"splits must be among {', '.join(SPLITS)}")
    for name, split in manifest["splits"].items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(shards, list) or not count(split.get("num_examples")):
            raise bad(f"split {name} has no shard list or example count")
        for shard in shards:
            if not isinstance(shard, dict) or not isinstance(shard.get("file"), str) or not SHARD_FILE.match(shard["file"]) \
                    or not shard["file"].startswith(name + "-") or not count(shard.get("num_examples")):
                raise bad(f"split {name} lists a shard that is not a shard of it: {str(shard)[:120]}")
            index = shard.get("index")
            if index is not None and (not isinstance(index, dict) or index.get("file") != shard["file"] + ".index"
                                      or not count(index.get("bytes"), 1) or not isinstance(index.get("sha256"), str)):
                raise bad(f"shard {shard['file']} has a malformed index entry")
        if sum(shard["num_examples"] for shard in shards) != split["num_examples"]:
            raise bad(f"split {name}'s shards do not add up to its num_examples")


def versions() -> dict:
    """The versions of what wrote a build (they go in its manifest)."""
    import platform

    import cv2
    import keras
    import numpy as np
    import pandas
    import tensorflow as tf

    from dancedata import __version__

    return {
        "dancedata": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "python": platform.python_version(),
    }


def planned(input_path: str, plan, extractor_entry: dict, feature_dim: int, sampling, build) -> dict:
    """What a build's manifest says before any shard exists: everything the plan decides. It is kept
    in the build's plan file, so whichever machine finishes a partitioned build can write the manifest."""
    from dancedata import scan

    return {
        **described(extractor_entry, feature_dim, sampling, build),
        "classes": plan.classes,
        "split": {
            "strategy": build.split,
            "val_fraction": build.val_fraction,
            "test_fraction": build.test_fraction,
            "seed": build.seed,
            "leaked_sequences": len(plan.leaked),
            "grouped": scan.has_grouping(plan.videos),
            "shared_with_train": plan.shared,
        },
        "groups": plan.groups,
        "skipped": plan.skipped,
        "warnings": plan.warnings,
        "source": {"path": os.path.abspath(input_path), "layout": plan.layout},
    }


def described(extractor_entry: dict, feature_dim: int, sampling, build) -> dict:
    """The planned manifest's entries that describe the examples (not which videos went where): what a
    build --from-frames writes anew over the planned part of the build it reads."""
    from dancedata import config

    frames = None
    if build.keep_frames:
        from dancedata import frames as frames_lib

        frames = {**frames_lib.entry(build.keep_frames, build.jpeg_quality), "image_size": extractor_entry["image_size"]}
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "feature_spec": schema.feature_spec(sampling.frames, feature_dim, build.dtype, frames),
        "num_frames": sampling.frames,
        "feature_dim": feature_dim,
        "feature_dtype": build.dtype,
        "extractor": extractor_entry,
        "sampling": config.asdict(sampling),
        **({"frames": frames} if frames else {}),
        "build": {"versions": versions(), "info": "build_info.json"},
    }


def _untrainable(planned_part: dict, splits: dict) -> list:
    """What the decoded build cannot teach, each genre with its cause: no video of it in the input, or
    every training video of it unreadable (the split's own cause, none planned in train, is said by
    the plan's warnings); and a train split of fewer than two genres, which nothing can learn from."""
    trained = {genre for genre, count in splits.get("train", {}).get("genres", {}).items() if count}
    planned = planned_part.get("groups", {})
    anywhere = {genre for groups in planned.values() for genre in groups}
    absent = [genre for genre in planned_part["classes"] if genre not in anywhere]
    unreadable = [genre for genre in planned.get("train", {}) if genre not in trained]
    found = []
    if absent:
        found.append(f"genre(s) {', '.join(absent)} have no video in the input: the model has an output for each that it "
                     "never learns")
    if unreadable:
        found.append(f"genre(s) {', '.join(unreadable)} have no training example: every training video of them failed to "
                     "decode (see skipped)")
    if len(trained) < 2:
        held = ", ".join(sorted(trained)) or "none"
        found.append(f"the train split holds examples of {len(trained)} genre(s) ({held}): a classifier cannot learn to "
                     "tell genres apart from it, and train.py refuses it; add videos of other genres")
    return found


def complete(planned_part: dict, records: list) -> dict:
    """The manifest: a pure function of the planned part and the committed shards' records, in plan
    order (no time, no host), so every runner writes the same bytes."""
    frames = planned_part["num_frames"]
    splits = {}
    for record in records:
        groups = planned_part["groups"].get(record["split"], {})
        entry = splits.setdefault(record["split"], {"num_examples": 0, "genres": {}, "groups": groups, "shards": []})
        entry["num_examples"] += record["num_examples"]
        for genre, count in record["genres"].items():
            entry["genres"][genre] = entry["genres"].get(genre, 0) + count
        entry["shards"].append({key: record[key] for key in ("file", "num_examples", "bytes", "sha256", "index") if key in record})
    for entry in splits.values():
        entry["genres"] = dict(sorted(entry["genres"].items()))
    skipped = planned_part["skipped"] + [{"path": e["path"], "reason": e["reason"]} for r in records for e in r["skipped"]]
    truncated = [entry for record in records for entry in record["truncated"]]
    short = sum(record["short_examples"] for record in records)
    lost, seen = sum(r["values_lost"] for r in records), sum(r["values_seen"] for r in records)
    warnings = list(planned_part["warnings"])
    empty = [name for name, entry in splits.items() if not entry["num_examples"]]
    if empty:
        warnings.append(f"split(s) {', '.join(empty)} have no example: every video planned there failed to decode")
    warnings += _untrainable(planned_part, splits)
    if short:
        warnings.append(
            f"{short} example(s) have fewer real frames than the {frames} asked for "
            f"({len(truncated)} of them from truncated streams); their masks mark the padding"
        )
    head = ("schema_version", "feature_spec", "classes", "num_frames", "feature_dim", "feature_dtype", "extractor",
            "sampling", "split")
    stored = {}
    if "frames" in planned_part:  # what the kept frames take: inspect shows it
        stored["frames"] = {**planned_part["frames"], "bytes": sum(record.get("frame_bytes", 0) for record in records)}
    return {
        **{key: planned_part[key] for key in head if key in planned_part},
        **stored,
        "splits": splits,
        "skipped": sorted(skipped, key=lambda e: (e["path"], e["reason"])),
        "truncated": sorted(truncated, key=lambda e: e["path"]),
        "short_examples": short,
        "warnings": warnings,
        "precision_loss": {"dtype": planned_part["feature_dtype"], "fraction_of_values_lost": lost / max(seen, 1)},
        "source": planned_part["source"],
        "build": planned_part["build"],
    }
