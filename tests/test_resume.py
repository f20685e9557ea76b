"""Reproducible, resumable, incremental builds: compared byte for byte with uninterrupted builds."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import BUILD_FLAGS as FLAGS
from conftest import FAST_EXTRACTOR, SMALL_SHARDS, aist_name, build_outputs, make_aist_folder, make_class_folders, write_video

import dancedata
from dancedata import cli, naming, split
from dancedata.build_shards import main as build_main

def assert_same_build(a, b):
    left, right = build_outputs(a), build_outputs(b)
    assert sorted(left) == sorted(right)
    differing = [name for name in left if left[name] != right[name]]
    assert not differing, differing
    manifest = json.loads(left["manifest.json"])
    assert all(len(s["shards"]) > 1 for s in manifest["splits"].values()), "fixture should give several shards per split"


def subprocess_build(root, out, *extra, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "dancedata.build_shards", str(root), "--out", str(out), *FLAGS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "aist"
    make_aist_folder(root, performances=4, cameras=3)
    return root


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """An uninterrupted build in its own process, with one decoding thread."""
    out = tmp_path_factory.mktemp("reference") / "out"
    process = subprocess_build(videos, out, "--workers", "1")
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out


def test_two_processes_with_different_workers_write_identical_bytes(videos, reference, tmp_path):
    process = subprocess_build(videos, tmp_path / "out", "--workers", "3")
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert_same_build(reference, tmp_path / "out")
    info = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert info["workers"] == 3 and info["elapsed_s"] > 0  # timings live here, not in the manifest


def test_sigkill_partway_then_resume_is_byte_identical(videos, reference, tmp_path):
    out = tmp_path / "out"
    process = subprocess_build(videos, out, "--workers", "2")
    state = out / ".build"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(state.glob("*.tfrecord.json"))) < 3:
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL  # killed mid-build, not finished
    assert not (out / "manifest.json").exists()
    committed = len(list(state.glob("*.tfrecord.json")))

    again = subprocess_build(videos, out, "--workers", "2")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert f"resuming: {committed} of " in err  # says what it keeps
    assert not list(out.glob("*.incomplete"))
    assert_same_build(reference, out)
    info = json.loads((out / "build_info.json").read_text())
    assert info["shards_kept"] == committed and info["shards_built"] > 0


def test_rerun_of_a_finished_build_rebuilds_nothing(videos, reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    assert build_main([str(videos), "--out", str(out), *FLAGS[:-1]]) == 0
    assert "resuming:" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")} == before
    assert_same_build(reference, out)


def test_a_corrupted_shard_is_rebuilt_not_trusted(videos, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shard = sorted(out.glob("train-*.tfrecord"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "manifest.json").unlink()
    (out / (shard.name + ".incomplete")).write_bytes(b"half a shard")  # what a kill leaves
    dancedata.build_shards(str(videos), str(out), workers=1, **SMALL_SHARDS)
    assert_same_build(reference, out)
    assert not list(out.glob("*.incomplete"))


def split_of(manifest_folder):
    from dancedata import DatasetBuilder, ExampleConfig

    builder = DatasetBuilder(str(manifest_folder))
    found = {}
    for name in builder.info.splits:
        for _, _, metadata in builder.as_dataset(name, batch_size=64, example_config=ExampleConfig(with_metadata=True)):
            for video_id in metadata["video_id"].numpy():
                found[video_id.decode()] = name
    return found


def test_splits_do_not_move_when_videos_are_added_or_removed(tmp_path):
    root = tmp_path / "aist"
    made = make_aist_folder(root, genres=("BR", "PO", "LO", "HO"), performances=5, cameras=2, frames=6)
    subset = tmp_path / "subset"
    subset.mkdir()
    kept = [stem for stem in made if not stem.startswith("gHO") and "_ch05" not in stem]  # one genre missing, fewer performances
    for stem in kept:
        os.link(root / f"{stem}.mp4", subset / f"{stem}.mp4")
    options = dict(frames=4, quiet=True, **FAST_EXTRACTOR)
    dancedata.build_shards(str(subset), str(tmp_path / "a"), **options)
    dancedata.build_shards(str(root), str(tmp_path / "b"), **options)
    small, full = split_of(tmp_path / "a"), split_of(tmp_path / "b")
    assert set(small) == set(kept) and set(full) == set(made)
    moved = [video for video in small if small[video] != full[video]]
    assert not moved
    assert set(full.values()) == {"train", "val", "test"}


def test_dancer_split_keeps_quotas_and_is_stable_for_other_genres(tmp_path):
    root = tmp_path / "aist"
    make_aist_folder(root, genres=("BR", "PO", "LO"), performances=4, cameras=1, frames=4)
    options = dict(frames=4, quiet=True, split="dancer", **FAST_EXTRACTOR)
    manifest = dancedata.build_shards(str(root), str(tmp_path / "a"), **options)
    for genre in ("BR", "PO", "LO"):  # four dancers per genre: one test, one val, two train
        assert [manifest["splits"][name]["groups"].get(genre) for name in ("train", "val", "test")] == [2, 1, 1]
    assert manifest["split"]["shared_with_train"]["test"]["dancers"]["shared"] == 0
    before = split_of(tmp_path / "a")
    for p in range(4):  # a new genre: the other genres' groups stay where they were
        write_video(root / f"{aist_name('HO', dancer=40 + p, choreo=p + 1)}.mp4", frames=4)
    dancedata.build_shards(str(root), str(tmp_path / "b"), **options)
    after = split_of(tmp_path / "b")
    assert all(after[video] == name for video, name in before.items())


def test_aist_names_in_class_folders_and_in_a_csv_keep_camera_views_together(tmp_path):
    flat = tmp_path / "flat"
    made = make_aist_folder(flat, genres=("BR", "PO"), performances=6, cameras=3, frames=4)
    folders = tmp_path / "by_genre"
    for stem, genre in made.items():
        (folders / naming.genre_name(genre)).mkdir(parents=True, exist_ok=True)
        os.link(flat / f"{stem}.mp4", folders / naming.genre_name(genre) / f"{stem}.mp4")
    options = dict(frames=4, quiet=True, **FAST_EXTRACTOR)
    manifest = dancedata.build_shards(str(folders), str(tmp_path / "a"), **options)
    assert manifest["classes"] == ["Break", "Pop"]  # the folder stays the label
    assert manifest["split"]["grouped"] and manifest["split"]["leaked_sequences"] == 0
    rows = split_of(tmp_path / "a")
    by_sequence = {}
    for video_id, name in rows.items():
        by_sequence.setdefault(naming.sequence_id(video_id.split("/")[-1]), set()).add(name)
    assert len(by_sequence) == 12 and all(len(names) == 1 for names in by_sequence.values())
    assert {n for names in by_sequence.values() for n in names} == {"train", "val", "test"}

    csv = tmp_path / "list.csv"
    csv.write_text("path,label\n" + "".join(f"flat/{stem}.mp4,{genre.lower()}\n" for stem, genre in made.items()))
    manifest = dancedata.build_shards(str(csv), str(tmp_path / "b"), **options)
    assert manifest["split"]["grouped"] and manifest["split"]["shared_with_train"]["test"]["dancers"]["shared"] == 0
    assert not any("no grouping" in w for w in manifest["warnings"])


def test_a_dataset_without_grouping_says_so_once(tmp_path):
    root = make_class_folders(tmp_path / "clips", count=3)
    manifest = dancedata.build_shards(str(root), str(tmp_path / "out"), frames=4, quiet=True, **FAST_EXTRACTOR)
    assert [w for w in manifest["warnings"] if "no grouping" in w] and not manifest["split"]["grouped"]
    from dancedata import inspect

    assert inspect.summary(manifest).count("no grouping") == 1


def run_cli(argv, capsys):
    code = cli.run(build_main, "build_shards", argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_refuses_to_mix_and_names_what_differs(videos, reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    code, err = run_cli([str(videos), "--out", str(out), *FLAGS[:1], "6", *FLAGS[2:]], capsys)
    assert code == 2 and len(err) == 1 and "--frames 8 → 6" in err[0] and "--overwrite" in err[0], err
    code, err = run_cli([str(videos), "--out", str(out), *FLAGS, "--dtype", "float32", "--split", "dancer"], capsys)
    assert code == 2 and "--dtype float16 → float32" in err[0] and "--split sequence → dancer" in err[0]

    bigger = tmp_path / "bigger"
    shutil.copytree(videos, bigger)
    write_video(bigger / f"{aist_name('BR', dancer=30, choreo=9)}.mp4", frames=12)
    code, err = run_cli([str(bigger), "--out", str(out), *FLAGS], capsys)
    assert code == 2 and "1 added (e.g. gBR_sBM_c01_d30_mBR0_ch09)" in err[0] and "--update" in err[0], err


def test_overwrite_deletes_only_what_builds_wrote(videos, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "mine.tfrecord").write_bytes(b"a user's own file")
    (out / "notes.txt").write_text("keep me")
    dancedata.build_shards(str(videos), str(out), overwrite=True, **{**SMALL_SHARDS, "shard_mb": 1.0})
    assert (out / "mine.tfrecord").read_bytes() == b"a user's own file" and (out / "notes.txt").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    shards = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
    assert {p.name for p in out.glob("*.tfrecord")} == shards | {"mine.tfrecord"}


def test_update_decodes_only_new_videos_and_equals_a_fresh_build(tmp_path):
    root = tmp_path / "aist"
    make_aist_folder(root, performances=3, cameras=2)
    out = tmp_path / "out"
    first = dancedata.build_shards(str(root), str(out), **SMALL_SHARDS)
    splits_before = split_of(out)
    for p in range(3):  # new performances, one of a genre not seen before
        write_video(root / f"{aist_name('BR', dancer=30 + p, choreo=8 + p)}.mp4", frames=12, seed=100 + p)
        write_video(root / f"{aist_name('WA', dancer=40 + p, choreo=8 + p)}.mp4", frames=12, seed=200 + p)
    fresh = dancedata.build_shards(str(root), str(tmp_path / "fresh"), **SMALL_SHARDS)

    # Oracle for "not decoded again": an unchanged video's bytes become garbage, its size and time kept.
    # Decoding it would skip it; reusing its earlier example keeps it.
    victim = root / f"{next(iter(splits_before))}.mp4"
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    with pytest.raises(dancedata.InputError, match="6 added"):
        dancedata.build_shards(str(root), str(out), **SMALL_SHARDS)
    updated = dancedata.build_shards(str(root), str(out), update=True, **SMALL_SHARDS)
    assert updated["splits"]["train"]["num_examples"] + updated["splits"]["val"]["num_examples"] + updated["splits"]["test"]["num_examples"] == sum(
        s["num_examples"] for s in first["splits"].values()) + 6
    splits_after = split_of(out)
    assert all(splits_after[video] == name for video, name in splits_before.items())
    assert_same_build(tmp_path / "fresh", out)
    assert fresh["splits"].keys() == updated["splits"].keys()
    assert not (out / ".build" / "reuse").exists()


def test_examples_report_what_really_decoded(built):
    """The truncated AVI claims 40 frames at 30 fps and holds about 20; its example says so, and the
    manifest lists it. Every other video holds its 12 frames."""
    import tensorflow as tf

    from dancedata import DatasetBuilder, schema

    builder = DatasetBuilder(str(built["out"]))
    manifest = builder.manifest
    assert all(len(s["shards"]) > 1 for s in manifest["splits"].values())
    [entry] = manifest["truncated"]
    assert entry["video_id"].startswith("gHO_sBM_c01_d23") and entry["claimed_frames"] == 40
    assert entry["real_frames"] == 8 and 15 < entry["decoded_frames"] < 25 and manifest["short_examples"] == 0
    spec = schema.parse_spec(manifest["feature_spec"])
    for name in manifest["splits"]:
        for record in tf.data.TFRecordDataset(builder.files(name)):
            example = tf.io.parse_single_example(record, spec)
            mask = example["mask"].numpy().astype(bool)
            times, indices = example["frame_times"].numpy(), example["frame_indices"].numpy()
            assert float(example["fps"]) == pytest.approx(30, abs=0.01)
            assert (times[~mask] == -1).all()
            assert times[mask] == pytest.approx(indices[mask] / 30, abs=0.002)  # fixture videos are 30 fps
            truncated = example["video_id"].numpy().decode().startswith("gHO_sBM_c01_d23")
            assert int(example["truncated"]) == truncated
            if not truncated:
                assert int(example["claimed_frames"]) == int(example["decoded_frames"]) == 12


def test_stable_fraction_is_a_pure_function():
    assert split.stable_fraction(0, "gBR_sBM_cAll_d04_mBR0_ch01") == split.stable_fraction(0, "gBR_sBM_cAll_d04_mBR0_ch01")
    assert split.stable_fraction(0, "a") != split.stable_fraction(1, "a")
    values = [split.stable_fraction(7, f"seq{i}") for i in range(2000)]
    assert 0.45 < sum(v < 0.5 for v in values) / len(values) < 0.55


def test_clips_shorter_than_the_frames_asked_for_are_counted_and_said(tmp_path):
    root = tmp_path / "aist"
    make_aist_folder(root, genres=("BR", "PO"), performances=2, cameras=1, frames=6)
    manifest = dancedata.build_shards(str(root), str(tmp_path / "out"), **SMALL_SHARDS)  # 8 frames of 6-frame clips
    assert manifest["short_examples"] == 4 and manifest["truncated"] == []
    [warning] = [w for w in manifest["warnings"] if "fewer real frames" in w]
    assert warning.startswith("4 example(s) have fewer real frames than the 8 asked for")
    from dancedata import inspect

    assert "short: 4 example(s) with fewer than 8 real frames" in inspect.summary(manifest)
