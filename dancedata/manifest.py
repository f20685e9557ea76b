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
        raise ManifestError(f"no {FILENAME} in {folder}: {_not_a_build(folder)}")
    raw = read_bytes(path)
    return checked(parse_document(raw, path), path, raw)


def _not_a_build(folder: str) -> str:
    """What `folder` is instead of a build folder, and what to pass: never advice to build into a video
    or into the folder of videos itself."""
    from dancedata import fs

    hint = "pass the --out folder of a build (python -m dancedata.build_shards VIDEO_DIR --out tfrecords writes tfrecords/)"
    if not fs.exists(folder):
        return f"no such folder; {hint}"
    if not fs.isdir(folder):
        return f"it is a file, not a build folder; {hint}"
    return f"it is not a build folder; {hint}"


def read_document(path: str, limit: int = 1 << 30):
    """The JSON value of one of a build folder's metadata files; raises ManifestError naming `path`."""
    return parse_document(read_bytes(path, limit), path)


def read_bytes(path: str, limit: int = 1 << 30) -> bytes:
    """A metadata file's bytes, read whole (they are small: `limit` guards against a huge file standing in
    for one); raises ManifestError naming `path`."""
    from dancedata import fs

    try:
        size = fs.size(path)  # read(limit) would set aside `limit` bytes however small the file
        if size <= limit:
            with fs.open_file(path, "rb") as handle:
                raw = handle.read()
    except (OSError,) + fs.read_errors() as error:
        raise ManifestError(f"cannot read {path}: {error}") from None
    if size > limit or len(raw) > limit:
        raise ManifestError(f"{path} holds more than {limit} bytes, far more than this file ever does: it is not one "
                            f"dancedata wrote. {REWRITE}")
    return raw


def parse_document(raw: bytes, path: str):
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ManifestError(f"cannot read {path}: it is not the JSON a build writes ({str(error)[:100]}); "
                            f"{REWRITE}") from None


def canonical(document: dict, raw: bytes | None, path: str) -> None:
    """A sealed document's bytes must be the one spelling `dumps` gives its content: the checksum covers the
    content, this the rest (a flip from 1e-05 to 1E-05 parses to the same number, yet is damage)."""
    if raw is not None and CHECKSUM in document and raw != dumps(document).encode("utf-8"):
        raise ManifestError(f"{path} was changed after the build (its bytes are not the ones the build wrote, though "
                            f"its content parses the same). {REWRITE}")


REWRITE = "copy the folder again, or rebuild it (the build command with --overwrite starts over)"


def checked(manifest, path: str, raw: bytes | None = None) -> dict:
    """`manifest` (a parsed manifest.json) when it is one a build wrote, of a version this dancedata
    reads and unchanged since (its checksum); raises ManifestError naming `path`."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} holds a JSON {type(manifest).__name__}, not a manifest; it was not written by dancedata. "
                            f"{REWRITE}")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}; it was not written by dancedata")
    version = manifest["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version not in schema.READABLE_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > schema.SCHEMA_VERSION
        raise ManifestError(
            f"{path} has schema version {str(version)[:40]!r}; this dancedata reads versions "
            f"{', '.join(map(str, schema.READABLE_VERSIONS))}. "
            + ("Upgrade dancedata (pip install -U dancedata) to read it" if newer else "Rebuild the shards with this dancedata")
        )
    # Every schema-4 build sealed its manifest: one without a checksum lost it to damage (a changed key name).
    if version >= 4 and CHECKSUM not in manifest:
        raise ManifestError(f"{path} has no checksum, which every build of schema 4 writes: it was edited or damaged. {REWRITE}")
    check(manifest, path)
    if CHECKSUM in manifest and sealed(manifest)[CHECKSUM] != manifest[CHECKSUM]:
        raise ManifestError(f"{path} was changed after the build (its checksum does not match its content); "
                            "copy the folder again, or rebuild it")
    canonical(manifest, raw, path)
    return manifest


def unsealed(document, path: str, what: str, keys: tuple, raw: bytes | None = None) -> dict:
    """A .build/ document (a plan or a shard's record) checked as the manifest is: a JSON object of known
    keys whose checksum, when it has one (builds before it had none), matches its content."""
    if not isinstance(document, dict):
        raise ManifestError(f"{path} holds a JSON {type(document).__name__}, not a {what}; it was edited or damaged. {REWRITE}")
    unknown = sorted(set(document) - set(keys) - {CHECKSUM})
    if unknown:
        raise ManifestError(f"{path} holds {str(unknown[0])[:40]!r}, which no {what} has; it was edited or damaged. {REWRITE}")
    if CHECKSUM in document and sealed(document)[CHECKSUM] != document[CHECKSUM]:
        raise ManifestError(f"{path} was changed after the build wrote it (its checksum does not match its content). {REWRITE}")
    canonical(document, raw, path)
    return {key: value for key, value in document.items() if key != CHECKSUM}


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
        for shard in shards:
            if ("bytes" in shard and not count(shard["bytes"], 0, 1 << 62)) or ("sha256" in shard and not _hex(shard["sha256"])):
                raise bad(f"shard {shard['file']} has a malformed size or sha256")
            if isinstance(shard.get("index"), dict) and "key" in shard["index"] and not _hex(shard["index"]["key"]):
                raise bad(f"shard {shard['file']} has a malformed index key")
        genres = split.get("genres", {})
        if not isinstance(genres, dict) or not all(isinstance(g, str) and count(n) for g, n in genres.items()):
            raise bad(f"split {name}'s genres are not a table of counts")
    if not all(_plain_name(c) for c in manifest["classes"]) or len(set(manifest["classes"])) != len(manifest["classes"]):
        raise bad("classes holds an empty, repeated or unprintable name")
    if not isinstance(manifest["feature_spec"], dict) or not all(isinstance(e, dict) for e in manifest["feature_spec"].values()):
        raise bad("feature_spec is not a table of features")
    for key, kind in (("extractor", dict), ("sampling", dict), ("split", dict), ("source", dict), ("build", dict),
                      ("frames", dict), ("skipped", list), ("truncated", list), ("warnings", list),
                      ("feature_statistics", dict), ("tfds_metadata", dict)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise bad(f"{key} is not a JSON {'object' if kind is dict else 'list'}")
    if not all(isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("reason"), str)
               for e in manifest.get("skipped", [])):
        raise bad("skipped lists an entry without a path and a reason")
    statistics = manifest.get("feature_statistics")
    if statistics is not None and (statistics.get("file") != STATISTICS or not _hex(statistics.get("sha256", "0" * 64))):
        raise bad(f"feature_statistics does not name {STATISTICS} with its sha256")
    tfds = manifest.get("tfds_metadata")
    if tfds is not None and not all(isinstance(name, str) and "/" not in name and _hex(digest_) for name, digest_ in tfds.items()):
        raise bad("tfds_metadata is not a table of file names and sha256s")


def _hex(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _plain_name(value) -> bool:
    """A class name as a build writes it: printable text on one line."""
    return isinstance(value, str) and bool(value) and value.isprintable() and len(value) < 256


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


# ---------------------------------------------------------------------------------------------------
# The build's own files in .build/: its plan and one record per committed shard. Checked as strictly as
# the manifest (they decide what the build keeps, moves and deletes, and what finalize writes), each
# sealed with the same checksum since this version; earlier builds' lack one and are still read.

PLAN_KEYS = ("identity", "inputs", "files", "units", "num_workers", "manifest")
RECORD_KEYS = ("key", "split", "genres", "videos", "skipped", "truncated", "short_examples", "values_lost", "values_seen",
               "frame_bytes", "moments", "file", "num_examples", "sha256", "bytes", "index", "rows")


def _size(value) -> bool:
    """A file size as the build records it: -1 for a listed file that is missing."""
    return isinstance(value, int) and not isinstance(value, bool) and -1 <= value < 1 << 62


def _count(value, high=1 << 62) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < high


def build_plan(document, path: str, raw: bytes | None = None) -> dict:
    """A .build/plan.json as a build wrote it; raises ManifestError naming `path`."""
    plan = unsealed(document, path, "build plan", PLAN_KEYS, raw)

    def bad(what):
        return ManifestError(f"{path}: {what}; it was edited or damaged. {REWRITE}")

    if not isinstance(plan.get("identity", {}), dict):
        raise bad("its identity is not a JSON object")
    inputs = plan.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, list) and len(i) == 3 and isinstance(i[0], str)
                                               and _size(i[1]) and isinstance(i[2], int) for i in inputs):
        raise bad("its inputs are not a list of [video id, size, mtime]")
    files, units = plan.get("files", []), plan.get("units", [])
    if not isinstance(files, list) or not all(isinstance(n, str) and SHARD_FILE.match(n) for n in files):
        raise bad("its files are not a list of shard names")
    if not isinstance(units, list) or not all(isinstance(u, list) and len(u) == 2 and isinstance(u[0], str)
                                              and SHARD_FILE.match(u[0]) and _hex(u[1]) for u in units):
        raise bad("its units are not a list of [shard name, key]")
    if not _count(plan.get("num_workers", 1), 1 << 20) or plan.get("num_workers", 1) < 1:
        raise bad(f"num_workers {str(plan.get('num_workers'))[:20]} is out of range")
    planned = plan.get("manifest")
    if planned is not None:
        if not isinstance(planned, dict):
            raise bad("its planned manifest is not a JSON object")
        for key, kind in (("classes", list), ("groups", dict), ("skipped", list), ("warnings", list), ("source", dict)):
            if not isinstance(planned.get(key, kind()), kind):
                raise bad(f"its planned manifest's {key} is malformed")
    return document


def shard_record(document, path: str, raw: bytes | None = None) -> dict:
    """A .build/<shard>.json as a build wrote it (the names in it are build_folder's to check); raises
    ManifestError naming `path`."""
    record = unsealed(document, path, "shard record", RECORD_KEYS, raw)

    def bad(what):
        return ManifestError(f"{path}: {what}; it was edited or damaged. {REWRITE}")

    for key in ("num_examples", "bytes", "short_examples", "values_lost", "values_seen", "frame_bytes"):
        if key in record and not _count(record[key]):
            raise bad(f"{key} {str(record[key])[:20]} is out of range")
    if not isinstance(record.get("genres", {}), dict) or not all(_count(n) for n in record.get("genres", {}).values()):
        raise bad("its genres are not a table of counts")
    videos = record.get("videos", [])
    # The fifth entry, the batch slot the features were computed in, is missing in records of earlier builds.
    if not isinstance(videos, list) or not all(isinstance(v, list) and len(v) in (4, 5) and isinstance(v[0], str)
                                               and _size(v[1]) and isinstance(v[2], int) and _count(v[3])
                                               and (len(v) == 4 or _count(v[4], 1 << 20)) for v in videos):
        raise bad("its videos are not a list of [video id, size, mtime, values lost, batch slot]")
    skipped = record.get("skipped", [])
    if not isinstance(skipped, list) or not all(isinstance(e, dict) and isinstance(e.get("video_id"), str)
                                                and _size(e.get("size")) and isinstance(e.get("mtime_ns"), int)
                                                and isinstance(e.get("reason"), str) and isinstance(e.get("path"), str)
                                                for e in skipped):
        raise bad("its skipped videos are malformed")
    if not isinstance(record.get("truncated", []), list) or not all(isinstance(e, dict) for e in record.get("truncated", [])):
        raise bad("its truncated videos are malformed")
    moments = record.get("moments")
    if moments is not None and not (isinstance(moments, dict) and _count(moments.get("frames"))
                                    and isinstance(moments.get("sum"), list) and isinstance(moments.get("sum_squares"), list)
                                    and len(moments["sum"]) == len(moments["sum_squares"])
                                    and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                            for x in moments["sum"] + moments["sum_squares"])):
        raise bad("its feature moments are malformed")
    for key in ("index", "rows"):
        entry = record.get(key)
        if entry is not None and not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                                      and _count(entry.get("bytes")) and _hex(entry.get("sha256"))):
            raise bad(f"its {key} entry is malformed")
    return document
