"""Stored frames (--keep-frames) and builds from them (--from-frames): the frames are the decoded ones,
TFDS decodes them, and a build from PNG frames writes the bytes a build from the videos writes, with
the videos deleted; resume, partitioned and Beam runners, --update and the identity rules hold."""
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import FAST_EXTRACTOR, add_bad_files, build_outputs, make_aist_folder, write_truncated_avi, write_video

import dancedata
from dancedata import cli, decode, inspect, schema
from dancedata.build_shards import main as build_main
from dancedata.config import SamplingConfig

FRAMES, SIZE = 8, 32
# Backbone B; float32, as MobileNetV2's random-weight features underflow float16 (cosines need them whole).
OTHER = {"backbone": "MobileNetV2", "weights": "none", "image_size": SIZE, "batch_size": 8, "frames": FRAMES, "quiet": True,
         "dtype": "float32"}
OTHER_FLAGS = ["--backbone", "MobileNetV2", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--quiet",
               "--dtype", "float32"]


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """Builds from one video folder (good, failing and truncated videos): direct ones with backbone B
    (MobileNetV2), ones keeping PNG and JPEG frames with backbone A (ResNet50) and smaller shards; the
    frames each video decodes to; then the videos are deleted."""
    base = tmp_path_factory.mktemp("frames")
    root = base / "aist"
    make_aist_folder(root, performances=4, cameras=2)
    write_truncated_avi(root / "gHO_sBM_c01_d23_mHO0_ch13.avi", frames=40)
    add_bad_files(root)
    dancedata.build_shards(str(root), str(base / "direct"), shard_mb=0.1, **OTHER)
    dancedata.build_shards(str(root), str(base / "direct_png"), shard_mb=0.1, keep_frames="png", **OTHER)
    for fmt in ("png", "jpeg"):
        dancedata.build_shards(str(root), str(base / fmt), frames=FRAMES, shard_mb=0.05, keep_frames=fmt, quiet=True, **FAST_EXTRACTOR)
    clips = {}
    for path in sorted(root.glob("g*")):
        try:
            clips[path.stem] = decode.read_clip(str(path), SamplingConfig(frames=FRAMES), SIZE)
        except Exception:  # noqa: BLE001 - the bad files
            pass
    shutil.rmtree(root)  # from here on no build can open a video
    return base, clips


def from_frames(old, out, *extra):
    return cli.run(build_main, "build_shards", ["--from-frames", str(old), "--out", str(out), *OTHER_FLAGS, *extra])


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def examples(folder):
    """{video_id: parsed example} of every shard, read with plain tf.data and the manifest's own spec."""
    manifest = manifest_of(folder)
    spec = schema.parse_spec(manifest["feature_spec"])
    files = [str(folder / shard["file"]) for split in manifest["splits"].values() for shard in split["shards"]]
    found = {}
    for record in tf.data.TFRecordDataset(files):
        example = {key: value.numpy() for key, value in tf.io.parse_single_example(record, spec).items()}
        features = np.frombuffer(example["features"], np.dtype(manifest["feature_dtype"])).reshape(FRAMES, -1)
        found[example["video_id"].decode()] = {**example, "features": features.astype(np.float32)}
    return found


def test_from_png_frames_the_bytes_of_a_build_from_the_videos(kept, tmp_path):
    base, _ = kept
    assert not (base / "aist").exists()
    for out, reference, extra in ((tmp_path / "new", base / "direct", []),
                                  (tmp_path / "new_png", base / "direct_png", ["--keep-frames", "png"])):
        assert from_frames(base / "png", out, "--shard-mb", "0.1", *extra) == 0
        assert build_outputs(out, same_input=False) == build_outputs(reference, same_input=False)
    manifest, old = manifest_of(tmp_path / "new"), manifest_of(base / "png")
    assert manifest["source"]["frames_from"] == str(base / "png")
    assert all(len(s["shards"]) > 1 for s in manifest["splits"].values())
    assert [len(s["shards"]) for s in manifest["splits"].values()] != [len(s["shards"]) for s in old["splits"].values()]
    reasons = {entry["path"].rsplit("/", 1)[-1]: entry["reason"] for entry in manifest["skipped"]}
    assert reasons["gPO_sBM_c01_d21_mPO0_ch11.mp4"].startswith("truncated: ")  # failed to decode then, recorded again
    assert [e["path"].rsplit("/", 1)[-1] for e in manifest["truncated"]] == ["gHO_sBM_c01_d23_mHO0_ch13.avi"]


def test_stored_frames_are_the_decoded_frames_and_tfds_yields_them(kept):
    tfds = pytest.importorskip("tensorflow_datasets")
    base, clips = kept
    for fmt in ("png", "jpeg"):
        stored = examples(base / fmt)
        assert stored.keys() == clips.keys()  # every video that decodes, and only those
        builder = tfds.builder_from_directory(str(base / fmt))
        assert builder.info.features["frames"].shape == (FRAMES, SIZE, SIZE, 3)
        seen = 0
        for split in builder.info.splits:
            for example in tfds.as_numpy(builder.as_dataset(split=split)):
                video_id = example["video_id"].decode()
                clip, images = clips[video_id], stored[video_id]["frames"]
                frames, mask = example["frames"], example["mask"].astype(bool)
                assert frames.dtype == np.uint8 and frames.shape == (FRAMES, SIZE, SIZE, 3)
                np.testing.assert_array_equal(mask, clip.mask)
                assert not frames[~mask].any()  # padding slots hold black images
                if fmt == "png":
                    np.testing.assert_array_equal(frames[mask], clip.frames)
                else:  # the decoded frames as OpenCV writes them at quality 90; TFDS decodes those bytes
                    for k, frame in enumerate(clip.frames):
                        assert images[k] == cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                        np.testing.assert_array_equal(frames[k], tf.io.decode_jpeg(images[k]).numpy())
                    assert np.abs(frames[mask].astype(int) - clip.frames).mean() > 1  # lossy: not the decoded pixels
                seen += 1
        assert seen == sum(split.num_examples for split in builder.info.splits.values()) == len(clips)


def test_from_jpeg_frames_close_to_the_videos_and_never_mixed_with_them(kept, tmp_path, capsys):
    base, _ = kept
    out = tmp_path / "from_jpeg"
    assert from_frames(base / "jpeg", out, "--shard-mb", "0.1") == 0
    ours, direct = examples(out), examples(base / "direct")
    assert list(ours) == list(direct)  # the same videos, splits, shards and order
    cosines = []
    for video_id, example in ours.items():
        mask = example["mask"].astype(bool)
        a, b = example["features"][mask], direct[video_id]["features"][mask]
        cosines += list((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
        np.testing.assert_array_equal(example["frame_indices"], direct[video_id]["frame_indices"])
    assert 0.9 < np.min(cosines) and np.mean(cosines) < 1.0, (np.min(cosines), np.mean(cosines))
    plan = json.loads((out / ".build" / "plan.json").read_text())
    assert plan["identity"]["features_from_frames"] == {"format": "jpeg", "jpeg_quality": 90, "image_size": SIZE}
    capsys.readouterr()
    assert from_frames(base / "png", out, "--shard-mb", "0.1") == 2  # PNG-exact features would mix with these
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a build with other options" in err[0] and "features_from_frames" in err[0]


def test_a_resized_build_from_frames_says_so(kept, tmp_path):
    base, _ = kept
    out = tmp_path / "bigger"
    assert from_frames(base / "png", out, "--image-size", "48", "--keep-frames", "png") == 0
    manifest = manifest_of(out)
    assert manifest["extractor"]["image_size"] == 48 and manifest["frames"]["image_size"] == 48
    assert json.loads((out / ".build" / "plan.json").read_text())["identity"]["features_from_frames"]["image_size"] == SIZE
    frames = next(iter(examples(out).values()))["frames"]
    assert tf.io.decode_png(frames[0]).shape == (48, 48, 3)


def test_a_partitioned_build_from_frames_equals_one_machine(kept, tmp_path):
    """Parts in their own processes, re-encoding JPEG-decoded pixels as PNG: the bytes of one process's build."""
    base, _ = kept
    out, reference = tmp_path / "parts", tmp_path / "one"
    flags = [*OTHER_FLAGS, "--shard-mb", "0.1", "--keep-frames", "png"]
    command = [sys.executable, "-m", "dancedata.build_shards", "--from-frames", str(base / "jpeg"), "--out", str(out), *flags,
               "--num-workers", "2"]
    parts = [subprocess.Popen([*command, "--worker-index", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for process in parts:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    assert cli.run(build_main, "build_shards", ["--from-frames", str(base / "jpeg"), "--out", str(reference), *flags]) == 0
    assert build_outputs(out) == build_outputs(reference)
    assert sum(len(s["shards"]) for s in manifest_of(out)["splits"].values()) >= 4


def test_a_build_from_frames_resumes(kept, tmp_path, capsys):
    base, _ = kept
    out = tmp_path / "resumed"
    assert from_frames(base / "png", out, "--shard-mb", "0.1") == 0
    victim = manifest_of(out)["splits"]["train"]["shards"][1]["file"]
    (out / victim).unlink()  # as a kill before its commit leaves it
    (out / ".build" / f"{victim}.json").unlink()
    (out / "manifest.json").unlink()
    capsys.readouterr()
    assert from_frames(base / "png", out, "--shard-mb", "0.1") == 0
    shards = sum(len(s["shards"]) for s in manifest_of(out)["splits"].values())
    assert f"{shards - 1} of {shards} shards are already built" in capsys.readouterr().err
    assert build_outputs(out, same_input=False) == build_outputs(base / "direct", same_input=False)


def test_a_build_from_frames_on_beam_equals_the_local_one(kept, tmp_path):
    pytest.importorskip("apache_beam")
    base, _ = kept
    out = tmp_path / "beam"
    assert from_frames(base / "png", out, "--shard-mb", "0.1", "--runner", "beam", "--", "--runner=DirectRunner",
                       "--direct_running_mode=multi_processing", "--direct_num_workers=2") == 0
    assert build_outputs(out, same_input=False) == build_outputs(base / "direct", same_input=False)
    assert json.loads((out / "build_info.json").read_text())["beam"]["units_built"] > 1


def test_readers_and_inspect_see_the_features_and_what_the_frames_take(kept, capsys):
    base, _ = kept
    with_frames, without = dancedata.DatasetBuilder(str(base / "direct_png")), dancedata.DatasetBuilder(str(base / "direct"))

    def features(builder):
        found = {}
        batches = builder.as_dataset("train", batch_size=64, example_config=dancedata.ExampleConfig(with_metadata=True))
        for (values, mask), _, metadata in batches:
            found.update({v.decode(): (f, m) for v, f, m in zip(metadata["video_id"].numpy(), values.numpy(), mask.numpy())})
        return found

    mine, theirs = features(with_frames), features(without)
    assert mine.keys() == theirs.keys() and len(mine) > 10
    for video_id, (values, mask) in mine.items():
        np.testing.assert_array_equal(values, theirs[video_id][0])
        np.testing.assert_array_equal(mask, theirs[video_id][1])
    stored = sum(len(image) for example in examples(base / "direct_png").values() for image in example["frames"])
    assert manifest_of(base / "direct_png")["frames"]["bytes"] == stored
    assert cli.run(inspect.main, "inspect", [str(base / "direct_png")]) == 0
    assert f"frames: png at 32px, {stored / 1e6:.1f} MB" in capsys.readouterr().out


def test_update_keeps_the_frames_and_their_options_are_the_identity(tmp_path, capsys):
    root = tmp_path / "aist"
    made = make_aist_folder(root, genres=("BR", "PO"), performances=2, cameras=2)
    options = {"frames": FRAMES, "shard_mb": 0.05, "quiet": True, "keep_frames": "jpeg", **FAST_EXTRACTOR}
    dancedata.build_shards(str(root), str(tmp_path / "out"), **options)
    write_video(root / "gBR_sBM_c01_d09_mBR3_ch09.mp4", frames=12, seed=99)
    dancedata.build_shards(str(root), str(tmp_path / "out"), update=True, **options)
    dancedata.build_shards(str(root), str(tmp_path / "fresh"), **options)
    assert build_outputs(tmp_path / "out") == build_outputs(tmp_path / "fresh")
    assert len(examples(tmp_path / "out")) == len(made) + 1
    assert all(len(e["frames"]) == FRAMES for e in examples(tmp_path / "out").values())
    flags = [str(root), "--out", str(tmp_path / "out"), "--frames", "8", "--shard-mb", "0.05", "--backbone", "ResNet50",
             "--weights", "none", "--image-size", "32", "--batch-size", "8", "--quiet"]
    for extra, said in ((["--keep-frames", "jpeg", "--jpeg-quality", "80"], "--jpeg-quality 90 → 80"),
                        (["--keep-frames", "png"], "format jpeg → png"), ([], "--keep-frames {")):
        capsys.readouterr()
        assert cli.run(build_main, "build_shards", flags + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already holds a build with other options" in err[0] and said in err[0], err


@pytest.mark.parametrize("argv, message", [
    (["--from-frames", "{direct}", "--out", "{new}"], "holds no stored frames (it was built without --keep-frames)"),
    (["--from-frames", "{png}", "--out", "{new}", "--frames", "4"], "frames is 8 in the build whose frames"),
    (["--from-frames", "{png}", "--out", "{new}", "--split", "dancer"], "split is 'sequence' in the build whose frames"),
    (["{png}", "--from-frames", "{png}", "--out", "{new}"], "give the input folder or --from-frames OLD_OUT, not both"),
    (["--from-frames", "{png}", "--out", "{png}"], "from_frames and out must be different folders"),
    (["--from-frames", "{missing}", "--out", "{new}"], "no manifest.json in"),
    (["{missing}", "--keep-frames", "gif"], "keep_frames must be one of jpeg, png; got 'gif'"),
    (["{missing}", "--keep-frames", "jpeg", "--jpeg-quality", "0"], "jpeg_quality must be in 1..100, got 0"),
])
def test_user_mistakes_are_one_line_and_exit_2(kept, tmp_path, capsys, argv, message):
    base, _ = kept
    names = {"direct": base / "direct", "png": base / "png", "new": tmp_path / "new", "missing": tmp_path / "missing"}
    capsys.readouterr()
    assert cli.run(build_main, "build_shards", [a.format(**names) for a in argv] + OTHER_FLAGS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "new").exists()


def test_damaged_frames_are_named_not_used(kept, tmp_path, capsys):
    base, _ = kept
    old = tmp_path / "old"
    shutil.copytree(base / "png", old)
    shard = old / manifest_of(old)["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert from_frames(old, tmp_path / "new") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{shard} is corrupted" in err[0] and "cannot build from the frames" in err[0], err
