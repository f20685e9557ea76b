"""Train/val/test assignment that never leaks and never moves.

A video's split depends only on its own group and the seed, through a stable hash (TFDS splits by
hashing keys the same way), so adding or removing other videos never moves it:

- `sequence` (default): the group is the sequence (every camera view of one performance).
- `random`: the group is the video (the notebook's per-video split, kept for comparison; it leaks).
- `dancer`: the group is a set of dancers who appear together. AIST has three or four dancers per
  genre, too few for a hash to hit the fractions, so each genre gets quotas: its groups are ranked by
  their hash and the lowest go to test, then val. Adding a group to a genre moves at most one existing
  group of that genre across each boundary, and only when the quota (round(n * fraction)) changes
  or the new group ranks in front of it.
- `crossmodal`: the AIST++ rule, a pure function of each name.
"""
from __future__ import annotations

import hashlib

import pandas as pd

from dancedata.errors import ConfigError, LeakageError

CROSSMODAL_MUSIC = ("mBR0", "mPO1", "mLO2", "mMH3", "mLH4", "mHO5", "mWA0", "mKR2", "mJS3", "mJB5")
EXCLUDED = ""  # assignment of a video that belongs to no split
SPLITS = ("train", "val", "test")


def stable_fraction(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on (seed, key): the same in every process and platform."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def dancer_groups(videos: pd.DataFrame) -> pd.Series:
    """Connected components of dancers who appear in the same video (union-find); a video without
    dancers is its own group. The component is named by its smallest dancer id, so it does not depend
    on the order videos are seen in."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for dancers in videos.dancer:
        ids = sorted(dancers.split("_")) if dancers else []
        for other in ids[1:]:
            a, b = find(ids[0]), find(other)
            parent[max(a, b)] = min(a, b)
    return videos.apply(lambda row: find(row.dancer.split("_")[0]) if row.dancer else "v:" + row.video_id, axis=1)


def groups(videos: pd.DataFrame, strategy: str) -> pd.Series:
    """The group each video is assigned with: what a split keeps together."""
    if strategy == "random":
        return videos.video_id.copy()
    if strategy == "dancer":
        return dancer_groups(videos)
    return videos.sequence_id.copy()


def _by_hash(names, seed: int, val_fraction: float, test_fraction: float) -> dict:
    result = {}
    for name in names:
        x = stable_fraction(seed, name)
        result[name] = "test" if x < test_fraction else "val" if x < test_fraction + val_fraction else "train"
    return result


def _by_quota(group_of: pd.Series, genre: pd.Series, seed: int, val_fraction: float, test_fraction: float) -> dict:
    result = {}
    genre_of_group = genre.groupby(group_of).first()
    for _, members in genre_of_group.groupby(genre_of_group, sort=True):
        names = sorted(members.index, key=lambda name: (stable_fraction(seed, name), name))
        n_test, n_val = int(round(len(names) * test_fraction)), int(round(len(names) * val_fraction))
        if len(names) >= 3:  # a genre with three or more groups gets one in each requested split
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        for rank, name in enumerate(names):
            result[name] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return result


def _crossmodal(videos: pd.DataFrame) -> pd.Series:
    if (videos.music == "").any():
        raise ConfigError("split crossmodal needs AIST names (music and choreography); this dataset has none")
    basic = videos.situation == "sBM"
    held_music = videos.music.isin(CROSSMODAL_MUSIC)
    split = pd.Series("train", index=videos.index)
    split[held_music | (basic & videos.choreography.isin(["ch01", "ch02"]))] = EXCLUDED
    split[basic & held_music & (videos.choreography == "ch02")] = "test"
    split[basic & held_music & (videos.choreography == "ch01")] = "val"
    return split


def assign(videos: pd.DataFrame, strategy: str, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """Split name per video ("train", "val", "test", or EXCLUDED by the crossmodal rule)."""
    if videos.empty:
        return pd.Series([], dtype=str)
    if strategy == "crossmodal":
        return _crossmodal(videos)
    group_of = groups(videos, strategy)
    if strategy == "dancer":
        by_group = _by_quota(group_of, videos.genre, seed, val_fraction, test_fraction)
    else:
        by_group = _by_hash(group_of.unique(), seed, val_fraction, test_fraction)
    return group_of.map(by_group)


def leaked_sequences(videos: pd.DataFrame, splits: pd.Series) -> list:
    """Sequence ids whose camera views sit in more than one split."""
    kept = splits != EXCLUDED
    counts = splits[kept].groupby(videos.sequence_id[kept]).nunique()
    return sorted(counts.index[counts > 1])


def check_no_leakage(videos: pd.DataFrame, splits: pd.Series) -> None:
    leaked = leaked_sequences(videos, splits)
    if leaked:
        shown = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
        raise LeakageError(f"{len(leaked)} sequence(s) would land in two splits: {shown}")


def group_counts(videos: pd.DataFrame, strategy: str) -> dict:
    """{split: {genre: number of groups}}: how many independent groups each split holds per genre."""
    kept = videos[videos.split != EXCLUDED]
    group_of = groups(kept, "sequence" if strategy == "crossmodal" else strategy)
    counts = group_of.groupby([kept.split, kept.genre]).nunique()
    result: dict = {}
    for (name, genre), count in counts.items():
        result.setdefault(name, {})[genre] = int(count)
    return {name: dict(sorted(result[name].items())) for name in SPLITS if name in result}


def _distinct(values: pd.Series) -> set:
    return {part for value in values if value for part in value.split("_")}


def shared_with_train(videos: pd.DataFrame) -> dict:
    """For val and test: how many of their dancers, pieces of music and choreographies also occur in
    train. In AIST each dancer dances one genre, so shared dancers let a model score by recognising
    who dances. Choreographies are named per genre and situation (ch01 of Break basic is not ch01 of Pop)."""
    kept = videos[videos.split != EXCLUDED]
    choreography = kept.genre + "/" + kept.situation + "/" + kept.choreography
    columns = {"dancers": kept.dancer, "music": kept.music, "choreographies": choreography.where(kept.choreography != "", "")}
    result = {}
    for name in ("val", "test"):
        here = kept.split == name
        if not here.any():
            continue
        entry = {}
        for key, column in columns.items():
            held, seen = _distinct(column[here]), _distinct(column[kept.split == "train"])
            if held:
                entry[key] = {"shared": len(held & seen), "total": len(held)}
        result[name] = entry
    return result


def warnings_for(videos: pd.DataFrame, counts: dict, strategy: str) -> list:
    """Plain sentences about splits that would mislead: genres without training data, requested
    splits missing a genre, dancers shared between train and test."""
    messages = []
    genres = sorted(videos.genre[videos.split != EXCLUDED].unique())
    train = counts.get("train", {})
    untrained = [g for g in genres if g not in train]
    if untrained:
        messages.append(
            f"genre(s) {', '.join(untrained)} have no training example: a model cannot learn them, and "
            "accuracy on them is meaningless; add videos of them or change --seed/--val-fraction/--test-fraction"
        )
    for name in ("val", "test"):
        if name in counts:
            missing = [g for g in genres if g not in counts[name] and g not in untrained]
            if missing:
                messages.append(f"split {name} has no group of genre(s) {', '.join(missing)}")
    if strategy in ("sequence", "random") and (videos.dancer != "").any():
        shared = shared_with_train(videos).get("test", {}).get("dancers")
        if shared and shared["shared"]:
            messages.append(
                f"test shares {shared['shared']} of its {shared['total']} dancers with train (split {strategy}): "
                "accuracy partly measures who is dancing; use --split dancer for a claim about unseen dancers"
            )
    return messages

