"""Scan an input folder (or CSV) into a table of videos, one row each, plus what was skipped and why.

Layouts: `aist` (labels and metadata parsed from AIST Dance DB names), `folders` (one subfolder per
class), `csv` (columns path,label and optionally sequence_id, dancer, ...). AIST names are parsed in
every layout: the folder or CSV label stays the label, the name supplies sequence, dancer, camera,
music and choreography, so camera views stay grouped however the files are sorted. Each row also
carries the file's size and modification time, which key resume and incremental builds. Unusable
entries never raise: they become (path, reason) rows in `skipped`.
"""
from __future__ import annotations

import dataclasses
import os

import pandas as pd

from dancedata import naming, schema
from dancedata.errors import ConfigError, InputError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
COLUMNS = ("path",) + schema.METADATA + ("size", "mtime_ns")


@dataclasses.dataclass
class Scan:
    videos: pd.DataFrame  # COLUMNS, one row per usable video, sorted by video_id
    skipped: list  # [{"path", "reason"}]
    layout: str


def _files(root: str):
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield os.path.join(folder, name)


def detect_layout(path: str) -> str:
    if os.path.isfile(path) and path.lower().endswith(".csv"):
        return "csv"
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    top_videos = [e for e in entries if e.is_file() and e.name.lower().endswith(VIDEO_EXTENSIONS)]
    aist_named = any(_looks_aist(e.name) for e in top_videos)
    has_class_dirs = any(e.is_dir() for e in entries)
    return "folders" if has_class_dirs and not aist_named else "aist"


def _looks_aist(name: str) -> bool:
    return name[:1] in "gs" and name[1:3].isalpha() and name[3:4] == "_"


def _row(path: str, **fields) -> dict:
    row = {key: "" for key in COLUMNS}
    row.update(fields, path=path)
    try:
        stat = os.stat(path)
        row.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    except OSError:  # a missing file is reported when it is decoded, with its reason
        row.update(size=-1, mtime_ns=-1)
    return row


def _aist_fields(stem: str) -> dict:
    """Grouping fields from an AIST name anywhere in a path, or {} for other names."""
    try:
        fields = naming.parse_aist_name(os.path.basename(stem))
    except ValueError:
        return {}
    return {key: value for key, value in fields.items() if key != "genre"}


def _aist_rows(root: str, skipped: list) -> list:
    rows = []
    for path in _files(root):
        stem, extension = os.path.splitext(os.path.basename(path))
        if extension.lower() not in VIDEO_EXTENSIONS:
            skipped.append({"path": path, "reason": f"not a video file (extension {extension or 'none'!r})"})
            continue
        try:
            rows.append(_row(path, **naming.parse_aist_name(stem)))
        except ValueError as reason:
            skipped.append({"path": path, "reason": str(reason)})
    return rows


def _folder_rows(root: str, skipped: list) -> list:
    rows = []
    for path in _files(root):
        relative = os.path.relpath(path, root)
        stem, extension = os.path.splitext(relative)
        if extension.lower() not in VIDEO_EXTENSIONS:
            skipped.append({"path": path, "reason": f"not a video file (extension {extension or 'none'!r})"})
        elif os.sep not in relative:
            skipped.append({"path": path, "reason": "not inside a class subfolder"})
        else:
            label = relative.split(os.sep, 1)[0]
            video_id = stem.replace(os.sep, "/")
            fields = {"video_id": video_id, "sequence_id": video_id, **_aist_fields(stem)}
            rows.append(_row(path, **{**fields, "video_id": video_id, "genre": label}))
    return rows


def _csv_rows(csv_path: str, skipped: list) -> list:
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read CSV {csv_path}: {error}") from None
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise InputError(f"CSV {csv_path} needs columns path,label; missing {', '.join(sorted(missing))}")
    base = os.path.dirname(os.path.abspath(csv_path))
    rows = []
    for record in table.to_dict("records"):
        path = os.path.join(base, record["path"])
        if not record["label"]:
            skipped.append({"path": path, "reason": "empty label in CSV"})
            continue
        video_id = os.path.splitext(record["path"])[0].replace(os.sep, "/")
        fields = _aist_fields(os.path.splitext(record["path"])[0])
        fields.update({key: record[key] for key in schema.METADATA if record.get(key)})  # columns win
        fields.setdefault("video_id", video_id)
        fields.setdefault("sequence_id", fields["video_id"])
        rows.append(_row(path, **{**fields, "genre": record["label"]}))
    return rows


def scan(path: str, layout: str = "auto") -> Scan:
    """The videos under `path` that can be labelled. Raises InputError when `path` is unusable."""
    if not os.path.exists(path):
        raise InputError(f"input folder not found: {path}")
    if layout == "auto" and os.path.isfile(path) and not path.lower().endswith(".csv"):
        raise InputError(f"input is not a folder: {path} (pass a folder of videos, or a CSV of path,label)")
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "csv" and not os.path.isfile(path):
        raise ConfigError(f"layout csv needs a CSV file, got the folder {path}")
    if layout != "csv" and not os.path.isdir(path):
        raise InputError(f"input is not a folder: {path}")
    skipped: list = []
    rows = {"aist": _aist_rows, "folders": _folder_rows, "csv": _csv_rows}[layout](path, skipped)
    videos = pd.DataFrame(rows, columns=list(COLUMNS))
    duplicate = videos.duplicated("video_id", keep="first")
    skipped += [{"path": p, "reason": "duplicate video id (another file has the same name)"} for p in videos.path[duplicate]]
    videos = videos[~duplicate].sort_values("video_id", kind="stable").reset_index(drop=True)
    videos[["size", "mtime_ns"]] = videos[["size", "mtime_ns"]].astype("int64")
    return Scan(videos, skipped, layout)


def has_grouping(videos: pd.DataFrame) -> bool:
    """False when every video is its own sequence: camera views of one performance cannot be kept
    together (files not AIST-named, no sequence_id column)."""
    return videos.empty or bool((videos.sequence_id != videos.video_id).any())


def class_warnings(classes: list) -> list:
    """One warning per set of class names that differ only in case, spaces, hyphens or underscores:
    the build keeps them apart (they are different labels), but they are almost always one class."""
    groups: dict = {}
    for name in classes:
        groups.setdefault(naming.spelling_key(name), []).append(name)
    return [f"classes {', '.join(repr(name) for name in group)} differ only in case, spaces, hyphens or underscores, "
            f"and are built as {len(group)} classes: if they are one, give their folders (or CSV labels) one spelling"
            for group in groups.values() if len(group) > 1]


def classes(layout: str, videos: pd.DataFrame) -> list:
    """Sorted class names. AIST always has its ten genres, so label ids are stable across subsets."""
    if layout == "aist":
        return sorted(naming.GENRES)
    return sorted(videos.genre.unique())
