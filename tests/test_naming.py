import pytest

from dancedata import naming


@pytest.mark.parametrize(
    "stem, expected",
    [
        (
            "gBR_sBM_c01_d04_mBR0_ch01",
            {"genre": "BR", "situation": "sBM", "camera": "c01", "dancer": "d04", "music": "mBR0", "choreography": "ch01",
             "sequence_id": "gBR_sBM_cAll_d04_mBR0_ch01"},
        ),
        ("gJB_sFM_c09_d27_mJB5_ch21", {"genre": "JB", "situation": "sFM", "camera": "c09", "music": "mJB5"}),
        ("gKR_sMM_c10_d28_mKR3_ch10", {"genre": "KR", "situation": "sMM", "camera": "c10"}),
        (
            "gLO_sGR_c01_d13_d14_d15_mLO0_ch01",
            {"genre": "LO", "situation": "sGR", "dancer": "d13_d14_d15", "sequence_id": "gLO_sGR_cAll_d13_d14_d15_mLO0_ch01"},
        ),
    ],
)
def test_labelled_names(stem, expected):
    fields = naming.parse_aist_name(stem)
    assert fields["video_id"] == stem
    for key, value in expected.items():
        assert fields[key] == value


def test_all_camera_views_share_a_sequence_id():
    ids = {naming.parse_aist_name(f"gHO_sBM_c{c:02d}_d19_mHO2_ch03")["sequence_id"] for c in range(1, 10)}
    assert ids == {"gHO_sBM_cAll_d19_mHO2_ch03"}


@pytest.mark.parametrize(
    "stem, reason",
    [
        ("sSH_c01_v0", "showcase"),
        ("sCY_c01_v3", "cypher"),
        ("sBT_c01_d01_d02_v5", "battle"),
        ("gXX_sBM_c01_d04_mXX0_ch01", "unknown genre"),
        ("gBR_sQQ_c01_d04_mBR0_ch01", "unknown situation"),
        ("gBR_sBM_c11_d04_mBR0_ch01", "camera c11"),
        ("gBR_sBM_c01_d04_mBR9_ch01", "unknown music"),
        ("IMG_0001", "naming rules"),
        ("", "naming rules"),
        ("gBR_sBM_c01_d04_mBR0", "naming rules"),
        ("gBR_sBM_c01_d04_mBR0_ch01_extra", "naming rules"),
    ],
)
def test_unlabelled_or_garbage_names_give_a_reason(stem, reason):
    with pytest.raises(ValueError, match=reason):
        naming.parse_aist_name(stem)


def test_genre_full_names():
    assert naming.genre_name("MH") == "Middle Hip-hop"
    assert naming.genre_name("salsa") == "salsa"
    assert len(naming.GENRES) == 10
