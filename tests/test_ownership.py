"""One owner of the build folder: builds lock it, options that change bytes cannot be mixed, reuse is
exact wherever an example lies, and every write failure reads the same. Real processes, real builds;
the oracles are fresh builds compared byte for byte, and videos made unreadable behind the build's back
(same size and time: only reuse keeps their examples)."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import BUILD_FLAGS, SMALL_SHARDS, aist_name, build_outputs, cli_env, make_aist_folder, write_video

import dancedata
from dancedata import cli, extract, fs
from dancedata.build_shards import main as build_main

# Three videos per extraction batch on CPU (8 frames each): slots matter.
THREE = [*BUILD_FLAGS[:BUILD_FLAGS.index("--batch-size")], "--batch-size", "24", "--quiet"]
THREE_OPTIONS = {**SMALL_SHARDS, "batch_size": 24}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "aist"
    make_aist_folder(root, performances=4, cameras=2)
    return root


def _garble(video):
    """Makes a video undecodable, keeping its size and time: a build that decodes it again skips it."""
    stat = video.stat()
    video.write_bytes(b"\0" * stat.st_size)
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _grow(root):
    for p in range(3):
        write_video(root / f"{aist_name('BR', dancer=30 + p, choreo=8 + p)}.mp4", frames=12, seed=100 + p)


def _slots_in_shards(folder):
    """{video_id: slot} read from the shards: every video of these builds decodes, so the k-th example of a
    shard was the k-th video of its unit, in slot k % 3."""
    import tensorflow as tf

    slots = {}
    for shard in sorted(folder.glob("*.tfrecord")):
        for position, serialized in enumerate(tf.data.TFRecordDataset(str(shard)).as_numpy_iterator()):
            video_id = tf.train.Example.FromString(serialized).features.feature["video_id"].bytes_list.value[0].decode()
            slots[video_id] = position % 3
    return slots


def test_update_and_resume_with_three_videos_a_batch_equal_a_fresh_build(videos, tmp_path, capsys, monkeypatch):
    import numpy as np

    # A stand-in for GPU kernels that round a row by its position in the batch: every row is shifted by its
    # row number. An example reused in another slot than it was computed in would differ from a fresh build.
    full_batch = extract.Extractor.full_batch
    monkeypatch.setattr(extract.Extractor, "full_batch",
                        lambda self, batch: full_batch(self, batch) + np.arange(len(batch), dtype=np.float32)[:, None])
    root = tmp_path / "aist"
    shutil.copytree(videos, root)
    out = tmp_path / "out"
    dancedata.build_shards(str(root), str(out), **THREE_OPTIONS)
    before = _slots_in_shards(out)
    _grow(root)
    fresh = tmp_path / "fresh"
    dancedata.build_shards(str(root), str(fresh), **THREE_OPTIONS)
    assert json.loads((fresh / "manifest.json").read_text())["extractor"]["videos_per_batch"] == 3
    after = _slots_in_shards(fresh)
    kept = sorted(video for video, slot in before.items() if after[video] == slot)
    moved = sorted(set(before) - set(kept))
    assert kept and moved  # the added videos shift some old ones to another slot, not all
    garbled = {root / f"{video}.mp4": (root / f"{video}.mp4").read_bytes() for video in kept}
    for video in garbled:  # decoded again, they would be skipped: only reuse keeps their examples
        _garble(video)
    capsys.readouterr()
    dancedata.build_shards(str(root), str(out), update=True, **THREE_OPTIONS)
    assert f"; {3 + len(moved)} to decode" in capsys.readouterr().err  # the new videos and the moved ones
    assert build_outputs(out) == build_outputs(fresh)
    recorded = {}
    for record in (out / ".build").glob("*.tfrecord.json"):
        for entry in json.loads(record.read_text())["videos"]:
            recorded[entry[0]] = entry[4]
    assert recorded == after  # each record keeps the slot its examples were computed in

    # Resume: what a kill leaves (some shards committed, no manifest) ends as the fresh build.
    for video, data in garbled.items():  # a resume decodes the lost shards' videos again
        stat = video.stat()
        video.write_bytes(data)
        os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    for shard in sorted(out.glob("train-*.tfrecord"))[1::2]:
        shard.unlink()
    (out / "manifest.json").unlink()
    dancedata.build_shards(str(root), str(out), **THREE_OPTIONS)
    assert build_outputs(out) == build_outputs(fresh)


def test_a_record_from_before_slots_is_reused_only_with_one_video_a_batch():
    from dancedata import work_unit

    row = {"video_id": "v", "size": 10, "mtime_ns": 5}
    old = work_unit.Reuse([("old.tfrecord", {"videos": [["v", 10, 5, 0]], "skipped": []})])  # no slot recorded
    assert old.has(row, 0, 1)  # one video a batch: it was slot 0
    assert not any(old.has(row, slot, 3) for slot in range(3))  # unknown slot: computed again
    new = work_unit.Reuse([("new.tfrecord", {"videos": [["v", 10, 5, 0, 2]], "skipped": []})])
    assert [new.has(row, slot, 3) for slot in range(3)] == [False, False, True]
    failed = work_unit.Reuse([("f.tfrecord", {"videos": [], "skipped": [{**row, "reason": "empty file (0 bytes)"}]})])
    assert failed.find(row, 1, 3) == ("skipped", "empty file (0 bytes)", 0)  # a failure fails again in any slot


def test_a_partitioned_update_reuses_every_unchanged_video_wherever_it_lies(videos, tmp_path, capsys):
    root = tmp_path / "aist"
    shutil.copytree(videos, root)
    out = tmp_path / "out"
    for index in range(2):
        dancedata.build_shards(str(root), str(out), num_workers=2, worker_index=index, **SMALL_SHARDS)
    _grow(root)  # shifts shard boundaries: old examples now belong to units of the other part too
    fresh = tmp_path / "fresh"
    dancedata.build_shards(str(root), str(fresh), **SMALL_SHARDS)
    for video in sorted(root.glob("g[PLH]*.mp4")):  # none of them new
        _garble(video)  # any of them decoded again would be skipped, and the bytes would differ
    capsys.readouterr()
    decoded = 0
    for index in range(2):
        dancedata.build_shards(str(root), str(out), update=True, num_workers=2, worker_index=index, **SMALL_SHARDS)
        err = capsys.readouterr().err
        decoded += sum(int(line.split("; ")[1].split()[0]) for line in err.splitlines() if line.startswith("reusing "))
    assert decoded <= 3
    assert build_outputs(out) == build_outputs(fresh)


def _half_built(videos, tmp_path, name, *flags):
    """What a kill partway leaves: a build's committed shards, one removed, no manifest."""
    out = tmp_path / name
    assert cli.run(build_main, "build_shards", [str(videos), "--out", str(out), *flags]) == 0
    sorted(out.glob("train-*.tfrecord"))[0].unlink()
    (out / "manifest.json").unlink()
    return out


@pytest.fixture(scope="module")
def unfinished(videos, tmp_path_factory):
    """A half-built folder and one with part 1 of 2 built, made once: each test below works on copies."""
    base = tmp_path_factory.mktemp("unfinished")
    _half_built(videos, base, "out", *BUILD_FLAGS)
    assert cli.run(build_main, "build_shards", [str(videos), "--out", str(base / "parted"), *BUILD_FLAGS, "--num-workers", "2",
                                                "--worker-index", "0"]) == 0
    return base


@pytest.mark.parametrize("flag, change, said", [
    ("--mixed-precision", ["--mixed-precision", "on"], "--mixed-precision off → on"),
    ("--batch-size", ["--batch-size", "24"], "--batch-size 8 → 24"),
    ("--jit-compile", ["--jit-compile"], "--jit-compile False → True"),
    ("device", [], "device CPU"),
])
def test_every_option_that_changes_bytes_is_refused_on_resume_update_and_part(videos, unfinished, tmp_path, capsys, monkeypatch,
                                                                              flag, change, said):
    out, parted = tmp_path / "out", tmp_path / "parted"
    for name in ("out", "parted"):
        shutil.copytree(unfinished / name, tmp_path / name)
    if flag == "device":
        monkeypatch.setattr(extract, "device_kind", lambda: "GPU NVIDIA H100 80GB HBM3")
    flags = BUILD_FLAGS[:BUILD_FLAGS.index("--batch-size")] + (["--quiet"] if "--batch-size" in change else ["--batch-size", "8", "--quiet"])
    capsys.readouterr()
    runs = {"resume": [str(videos), "--out", str(out), *flags, *change],
            "update": [str(videos), "--out", str(out), *flags, *change, "--update"],
            "part": [str(videos), "--out", str(parted), *flags, *change, "--num-workers", "2", "--worker-index", "1"]}
    if flag == "--jit-compile":  # XLA compiles the backbone before the check: once is enough
        runs = {"resume": runs["resume"]}
    for what, argv in runs.items():
        assert cli.run(build_main, "build_shards", argv) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0] and "already holds a build with other options" in err[0], (what, err)


def _holding_build(videos, out, *extra):
    """A build subprocess stuck on a hanging video, so it holds its lock; returns it once it holds it."""
    env = cli_env(DANCEDATA_DECODER="faulty_decoder:read_clip")
    process = subprocess.Popen([sys.executable, "-m", "dancedata.build_shards", str(videos), "--out", str(out), *BUILD_FLAGS,
                                "--video-timeout", "600", "--workers", "1", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lock = out / (".dancedata.lock" if "--num-workers" not in extra else  # noqa: E131
                  f".dancedata.part-{int(extra[extra.index('--worker-index') + 1]):05d}-of-"
                  f"{int(extra[extra.index('--num-workers') + 1]):05d}.lock")
    deadline = time.monotonic() + 600
    while not (lock.exists() and lock.read_text()):
        assert process.poll() is None, process.communicate()
        if time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"the build did not take its lock {lock} within 600 s")
        time.sleep(0.1)
    return process


def _stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def test_a_second_build_on_the_folder_stops_at_once_naming_the_first(videos, tmp_path, capsys):
    root = tmp_path / "aist"
    (root / "BR").mkdir(parents=True)
    for i in range(2):
        write_video(root / "BR" / f"v{i}.mp4", frames=12, colour=(0, 0, 220), seed=i)
    (root / "PO").mkdir()
    write_video(root / "PO" / "hang.mp4", frames=12, seed=5)  # the test decoder sleeps on it
    write_video(root / "PO" / "v2.mp4", frames=12, seed=6)
    out = tmp_path / "out"
    first = _holding_build(root, out, "--val-fraction", "0", "--test-fraction", "0")
    try:
        code = cli.run(build_main, "build_shards", [str(root), "--out", str(out), *BUILD_FLAGS, "--val-fraction", "0",
                                                    "--test-fraction", "0"])
        err = capsys.readouterr().err.strip().splitlines()
        # At once: it ended while the first (stuck on a decode with a 600 s timeout) still held the folder, so it
        # did not wait for it; a second build that had waited would have built (exit 0), not stopped.
        assert first.poll() is None, first.communicate()
        assert code == 2 and len(err) == 1, err
        assert f"is in use by another build (pid {first.pid} on host " in err[0] and "since " in err[0], err
        assert not (out / "manifest.json").exists()
    finally:
        _stop(first)
    # Its lock died with it: the next build takes it over, says so, and finishes. It decodes with the real
    # decoder: the hang was needed only to hold the lock (a timed-out decode is test_faults.py's; here it
    # cost a 20 s wait).
    done = subprocess.run([sys.executable, "-m", "dancedata.build_shards", str(root), "--out", str(out), *BUILD_FLAGS,
                           "--val-fraction", "0", "--test-fraction", "0"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"taking over the lock of pid {first.pid}" in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == [] and manifest["splits"]["train"]["num_examples"] == 4


def test_parts_lock_their_own_share_and_a_whole_build_waits_for_none(tmp_path, capsys):
    root = tmp_path / "videos"
    for label in ("BR", "PO"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            write_video(root / label / f"hang{i}.mp4", frames=12, seed=i)  # every decode hangs: part 1 holds on
    out = tmp_path / "out"
    part = _holding_build(root, out, "--num-workers", "2", "--worker-index", "0", "--val-fraction", "0", "--test-fraction", "0")
    try:
        same = [str(root), "--out", str(out), *BUILD_FLAGS, "--num-workers", "2", "--worker-index", "0"]
        assert cli.run(build_main, "build_shards", same) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert f"pid {part.pid}" in line and "part 1 of 2" in line
        whole = [str(root), "--out", str(out), *BUILD_FLAGS]
        assert cli.run(build_main, "build_shards", whole) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert "in use by a partitioned build (part 1 of 2" in line and f"pid {part.pid}" in line
    finally:
        _stop(part)


def test_a_full_disk_while_finalizing_reads_like_one_while_writing(videos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real = fs.write_text

    def full(path, text):
        if path.endswith("manifest.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(fs, "write_text", full)
    assert cli.run(build_main, "build_shards", [str(videos), "--out", str(out), *BUILD_FLAGS]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"build_shards: error: cannot write {out}/manifest.json: No space left on device. Committed shards are "
                    "kept; free space or fix the folder, then run the same command to resume")
    monkeypatch.setattr(fs, "write_text", real)
    assert cli.run(build_main, "build_shards", [str(videos), "--out", str(out), *BUILD_FLAGS]) == 0
    assert "resuming: " in capsys.readouterr().err
