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


@pytest.mark.parametrize("code, printed", [
    ("BR", "Break (BR)"),
    ("Ballet é", "Ballet é"),  # no AIST long name: printed once, not "Ballet é (Ballet é)"
    ("salsa", "salsa"),
    ("Hip Hop ", "'Hip Hop '"),  # quoted where a space would not show
    ("Hip  Hop", "'Hip  Hop'"),
    (" Hip Hop", "' Hip Hop'"),
    ("Hip\tHop", "'Hip\\tHop'"),
    ("", "''"),
])
def test_class_labels_print_each_name_once_and_show_their_spaces(code, printed):
    assert naming.label(code) == printed


def test_names_that_differ_only_in_case_or_spacing_share_a_key():
    same = ["Hip Hop", "hip hop", "HipHop", "Hip  Hop", "Hip Hop ", "hip-hop", "HIP_HOP"]
    assert {naming.spelling_key(name) for name in same} == {"hiphop"}
    different = ["Hip Hop", "Hip Hop 2", "Hop Hip", "Ballet é", "Ballet e"]
    assert len({naming.spelling_key(name) for name in different}) == 5


def test_classes_that_differ_only_in_spelling_are_warned_once_where_the_user_looks(tmp_path, capsys):
    """Real class folders, one of them with a trailing space, built by the CLI: one warning in its output
    and in the manifest, naming every spelling quoted; the classes stay apart (they are different labels)."""
    import json

    from conftest import BUILD_FLAGS, make_class_folders

    from dancedata import inspect
    from dancedata.build_shards import main

    spellings = ["Hip Hop", "hip hop", "HipHop", "Hip  Hop", "Hip Hop "]
    root = make_class_folders(tmp_path / "videos", labels=[*spellings, "Ballet é"], count=2)
    assert sorted(p.name for p in root.iterdir()) == sorted([*spellings, "Ballet é"])  # the folder kept its space
    out = tmp_path / "tfrecords"
    assert main([str(root), "--out", str(out), *BUILD_FLAGS]) == 0
    expected = ("classes 'Hip  Hop', 'Hip Hop', 'Hip Hop ', 'HipHop', 'hip hop' differ only in case, spaces, hyphens "
                "or underscores, and are built as 5 classes: if they are one, give their folders (or CSV labels) one "
                "spelling")
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "differ only" in line] == [f"WARNING: {expected}"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [warning for warning in manifest["warnings"] if "differ only" in warning] == [expected]
    assert manifest["classes"] == sorted([*spellings, "Ballet é"])

    table = inspect.summary(manifest).splitlines()
    start = table.index(next(line for line in table if line.startswith("  genre")))
    labels = [line[2:22].rstrip() for line in table[start + 1:start + 7]]
    assert labels == ["Ballet é", "'Hip  Hop'", "Hip Hop", "'Hip Hop '", "HipHop", "hip hop"]
