import pandas as pd
import pytest

from dancedata import naming, split
from dancedata.errors import ConfigError, LeakageError


def table(stems):
    return pd.DataFrame([naming.parse_aist_name(s) for s in stems])


def aist_table():
    stems = [
        f"g{g}_s{s}_c{c:02d}_d{d:02d}_m{g}{m}_ch{ch:02d}"
        for g in ("BR", "PO", "LO")
        for d, s, m, ch in ((1, "BM", 0, 1), (1, "BM", 1, 2), (2, "FM", 2, 3), (3, "BM", 3, 4), (4, "FM", 4, 5), (5, "BM", 5, 6))
        for c in range(1, 4)
    ]
    return table(stems)


@pytest.mark.parametrize("strategy", ["sequence", "dancer"])
def test_no_sequence_in_two_splits(strategy):
    videos = aist_table()
    splits = split.assign(videos, strategy, 0.2, 0.2, seed=3)
    split.check_no_leakage(videos, splits)
    assert set(splits) == {"train", "val", "test"}


def test_dancer_quotas_put_every_genre_in_every_split():
    videos = aist_table()  # five dancers per genre
    splits = split.assign(videos, "dancer", 0.2, 0.2, seed=3)
    for name in ("train", "val", "test"):
        assert set(videos.genre[splits == name]) == {"BR", "PO", "LO"}


def test_dancer_split_holds_out_dancers_and_their_groups():
    stems = ["gBR_sBM_c01_d01_mBR0_ch01", "gBR_sGR_c01_d01_d02_mBR1_ch02", "gBR_sBM_c01_d02_mBR2_ch03",
             "gBR_sBM_c01_d03_mBR3_ch04", "gBR_sBM_c01_d04_mBR4_ch05", "gBR_sBM_c01_d05_mBR5_ch06"]
    videos = table(stems)
    splits = split.assign(videos, "dancer", 0.2, 0.2, seed=0)
    # d01 and d02 dance together, so all three of their videos share one split
    assert splits.iloc[0] == splits.iloc[1] == splits.iloc[2]


def test_same_seed_same_split_other_seed_other_split():
    videos = aist_table()
    first = split.assign(videos, "sequence", 0.2, 0.2, seed=1)
    assert first.equals(split.assign(videos, "sequence", 0.2, 0.2, seed=1))
    assert not all(first.equals(split.assign(videos, "sequence", 0.2, 0.2, seed=s)) for s in range(2, 6))


def test_random_split_can_leak_and_leakage_is_caught():
    videos = aist_table()
    splits = split.assign(videos, "random", 0.3, 0.3, seed=0)
    assert split.leaked_sequences(videos, splits)
    with pytest.raises(LeakageError, match="sequence\\(s\\) would land in two splits: g"):
        split.check_no_leakage(videos, splits)


def test_crossmodal_rule():
    stems = {
        "gBR_sBM_c01_d04_mBR0_ch02": "test",
        "gBR_sBM_c05_d04_mBR0_ch02": "test",
        "gBR_sBM_c01_d04_mBR0_ch01": "val",
        "gPO_sBM_c01_d04_mPO1_ch01": "val",
        "gBR_sBM_c01_d04_mBR1_ch01": split.EXCLUDED,  # sBM ch01 with other music: out of train too
        "gBR_sFM_c01_d04_mBR0_ch04": split.EXCLUDED,  # one of the ten held-out pieces
        "gBR_sBM_c01_d04_mBR1_ch03": "train",
        "gBR_sFM_c01_d04_mBR2_ch05": "train",
        "gLO_sGR_c01_d13_d14_mLO1_ch01": "train",
    }
    videos = table(list(stems))
    assert split.assign(videos, "crossmodal", 0.1, 0.2, seed=0).tolist() == list(stems.values())


def test_crossmodal_needs_aist_metadata():
    videos = pd.DataFrame({"video_id": ["a"], "sequence_id": ["a"], "genre": ["x"], "music": [""], "dancer": [""]})
    with pytest.raises(ConfigError, match="crossmodal needs AIST names"):
        split.assign(videos, "crossmodal", 0.1, 0.2, seed=0)


def test_a_sequence_s_split_does_not_depend_on_the_other_videos():
    """The subset a user downloads first and the full set agree on every shared video."""
    stems = [f"g{g}_sBM_c{c:02d}_d{d:02d}_m{g}0_ch{d:02d}" for g in naming.GENRES for d in range(1, 9) for c in (1, 2)]
    full = table(stems)
    subset = full[(full.genre != "KR") & (full.dancer < "d06")].reset_index(drop=True)
    for strategy in ("sequence", "random"):
        big = dict(zip(full.video_id, split.assign(full, strategy, 0.1, 0.2, seed=5)))
        small = dict(zip(subset.video_id, split.assign(subset, strategy, 0.1, 0.2, seed=5)))
        assert all(big[video] == name for video, name in small.items())


def test_hashed_fractions_come_close_to_the_requested_ones():
    stems = [f"gBR_sBM_c01_d{d:02d}_mBR0_ch{c:02d}" for d in range(1, 100) for c in range(1, 21)]
    splits = split.assign(table(stems), "sequence", 0.1, 0.2, seed=0)
    shares = splits.value_counts(normalize=True)
    assert abs(shares["test"] - 0.2) < 0.03 and abs(shares["val"] - 0.1) < 0.03


def test_a_genre_without_training_data_is_a_warning():
    videos = table(["gBR_sBM_c01_d01_mBR0_ch01", "gPO_sBM_c01_d02_mPO0_ch01"])
    videos["split"] = ["train", "test"]
    counts = split.group_counts(videos, "sequence")
    assert counts == {"train": {"BR": 1}, "test": {"PO": 1}}
    [warning] = [w for w in split.warnings_for(videos, counts, "sequence") if "no training example" in w]
    assert "PO" in warning
