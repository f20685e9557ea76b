"""Train/val/test assignment without leakage.

`sequence` and `dancer` assign whole groups (every camera view of a performance; every video of a
set of dancers who appear together) and stratify by genre, so each split sees each genre.
`crossmodal` is the AIST++ rule. `random` is the notebook's per-video split, kept for comparison.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dancedata.errors import ConfigError, LeakageError

CROSSMODAL_MUSIC = ("mBR0", "mPO1", "mLO2", "mMH3", "mLH4", "mHO5", "mWA0", "mKR2", "mJS3", "mJB5")
EXCLUDED = ""  # assignment of a video that belongs to no split


def _dancer_groups(videos: pd.DataFrame) -> pd.Series:
    """Connected components of dancers who appear in the same video (union-find)."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for dancers in videos.dancer:
        ids = dancers.split("_") if dancers else []
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
    return videos.apply(lambda row: find(row.dancer.split("_")[0]) if row.dancer else "v:" + row.video_id, axis=1)


def _group_split(groups: pd.Series, strata: pd.Series, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """Shuffles the groups of each stratum (seeded) and cuts them by the fractions."""
    rng = np.random.default_rng(seed)
    per_stratum = groups.groupby(strata).nunique()
    # Genres with too few performances to split on their own are pooled, so a small subset still
    # gets val and test examples.
    strata = strata.where(~strata.isin(per_stratum.index[per_stratum < 3]), "\0pooled")
    by_group = {}
    for stratum in sorted(strata.unique()):
        names = np.array(sorted(groups[strata == stratum].unique()))
        rng.shuffle(names)
        n_test = int(round(len(names) * test_fraction))
        n_val = int(round(len(names) * val_fraction))
        if len(names) >= 3:  # a small stratum still gets one group in each requested split
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        for i, name in enumerate(names):
            by_group[name] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return groups.map(by_group)


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
    if strategy == "random":
        groups = videos.video_id
    elif strategy == "sequence":
        groups = videos.sequence_id
    else:
        groups = _dancer_groups(videos)
    strata = groups.map(videos.groupby(groups).genre.first())
    return _group_split(groups, strata, val_fraction, test_fraction, seed)


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
