import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import FAST_EXTRACTOR, make_aist_folder, make_class_folders

import dancedata
from dancedata.build_shards import main as build_main
from dancedata import cli, decode, inspect, naming, schema
from dancedata.config import ExtractorConfig, SamplingConfig
from dancedata.extract import Extractor


def read_all(out, manifest):
    """Every example of every split, parsed with plain tf.data and the manifest's own spec."""
    spec = schema.parse_spec(manifest["feature_spec"])
    rows = []
    for name, split in manifest["splits"].items():
        files = [os.path.join(out, shard["file"]) for shard in split["shards"]]
        for record in tf.data.TFRecordDataset(files):
            example = tf.io.parse_single_example(record, spec)
            raw = tf.io.decode_raw(example["features"], tf.float16)
            row = {k: v.numpy().decode() for k, v in example.items() if v.dtype == tf.string and k != "features"}
            row.update(
                split=name,
                label=int(example["label"]),
                mask=example["mask"].numpy(),
                frame_indices=example["frame_indices"].numpy(),
                features=tf.reshape(raw, [manifest["num_frames"], manifest["feature_dim"]]).numpy(),
            )
            rows.append(row)
    return rows


def test_every_labelled_video_is_written_once_with_its_label(built):
    manifest, rows = built["manifest"], read_all(built["out"], built["manifest"])
    assert sorted(r["video_id"] for r in rows) == sorted(built["videos"])
    for row in rows:
        genre = built["videos"][row["video_id"]]
        assert row["genre"] == genre == naming.parse_aist_name(row["video_id"])["genre"]
        assert manifest["classes"][row["label"]] == genre
    assert manifest["classes"] == sorted(naming.GENRES)


def test_bad_files_are_skipped_with_path_and_reason(built):
    skipped = {os.path.basename(entry["path"]): entry["reason"] for entry in built["manifest"]["skipped"]}
    assert set(skipped) == set(built["bad"])
    for name, reason in built["bad"].items():
        assert reason in skipped[name]
    assert sorted(entry["path"] for entry in built["manifest"]["skipped"]) == sorted(str(built["root"] / n) for n in built["bad"])


def test_truncated_video_is_sampled_over_the_frames_it_really_holds(built):
    """The AVI claims 40 frames and holds about 20: uniform sampling spreads over those, so all 8 are real."""
    row = next(r for r in read_all(built["out"], built["manifest"]) if r["video_id"].startswith("gHO_sBM_c01_d23"))
    assert row["mask"].all() and row["features"].any()
    assert row["frame_indices"].max() < 25 and (row["frame_indices"] >= 0).all()


def test_round_trip_equals_direct_batched_extraction(built):
    """Features read back are exactly what one batched extraction of the same frames gives (as float16)."""
    manifest = built["manifest"]
    rows = [r for r in read_all(built["out"], manifest) if r["mask"].all()][:5]
    sampling = SamplingConfig(**manifest["sampling"])
    extractor = Extractor(ExtractorConfig(**FAST_EXTRACTOR))
    assert extractor.fingerprint == manifest["extractor"]["fingerprint"]
    clips = [decode.read_clip(str(built["root"] / f"{r['video_id']}.mp4"), sampling, 32) for r in rows]
    direct = extractor(np.concatenate([c.frames for c in clips])).reshape(len(rows), 8, -1)
    for row, clip, expected in zip(rows, clips, direct):
        assert row["frame_indices"].tolist() == clip.indices.tolist()
        np.testing.assert_array_equal(row["features"], expected.astype(np.float16))


def test_no_sequence_lands_in_two_splits(built):
    by_sequence = {}
    for row in read_all(built["out"], built["manifest"]):
        by_sequence.setdefault(row["sequence_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_sequence.values())
    assert {s for splits in by_sequence.values() for s in splits} == {"train", "val", "test"}


def test_manifest_contract(built):
    manifest = json.loads((built["out"] / "manifest.json").read_text())
    for key in ("schema_version", "feature_spec", "classes", "num_frames", "feature_dim", "feature_dtype",
                "extractor", "sampling", "splits", "skipped", "build"):
        assert key in manifest
    assert manifest["feature_dtype"] == "float16" and manifest["num_frames"] == 8
    assert manifest["extractor"]["backbone"] == "ResNet50" and manifest["extractor"]["image_size"] == 32
    for name, split in manifest["splits"].items():
        assert split["num_examples"] == sum(s["num_examples"] for s in split["shards"])
        for shard in split["shards"]:
            path = built["out"] / shard["file"]
            assert path.exists() and len(shard["sha256"]) == 64
            assert re.fullmatch(rf"{name}-\d{{5}}-of-{len(split['shards']):05d}\.tfrecord", shard["file"])
    assert not list(built["out"].glob("*.incomplete"))


def test_float32_storage_and_first_sampling(tmp_path):
    root = tmp_path / "aist"
    make_aist_folder(root, genres=("BR", "PO"), performances=1, cameras=1, frames=6)
    manifest = dancedata.build_shards(
        str(root), str(tmp_path / "out"), frames=10, sampling="first", dtype="float32", split="random",
        val_fraction=0.0, test_fraction=0.0, quiet=True, **FAST_EXTRACTOR,
    )
    rows = []
    spec = schema.parse_spec(manifest["feature_spec"])
    for record in tf.data.TFRecordDataset([str(tmp_path / "out" / s["file"]) for s in manifest["splits"]["train"]["shards"]]):
        rows.append(tf.io.parse_single_example(record, spec))
    assert len(rows) == 2 and manifest["feature_dtype"] == "float32"
    assert rows[0]["frame_indices"].numpy().tolist() == [0, 1, 2, 3, 4, 5, -1, -1, -1, -1]
    assert len(rows[0]["features"].numpy()) == 10 * manifest["feature_dim"] * 4


def test_class_per_subfolder_and_csv_layouts(tmp_path):
    root = make_class_folders(tmp_path / "clips", count=2)
    (root / "stray.mp4").write_bytes(b"")
    manifest = dancedata.build_shards(str(root), str(tmp_path / "a"), frames=4, quiet=True, val_fraction=0.0, test_fraction=0.0, **FAST_EXTRACTOR)
    assert manifest["classes"] == ["salsa", "tango"] and manifest["splits"]["train"]["num_examples"] == 4
    assert manifest["skipped"] == [{"path": str(root / "stray.mp4"), "reason": "not inside a class subfolder"}]

    csv = tmp_path / "list.csv"
    csv.write_text("path,label\nclips/salsa/salsa0.mp4,fast\nclips/tango/tango1.mp4,slow\nclips/missing.mp4,slow\n")
    manifest = dancedata.build_shards(str(csv), str(tmp_path / "b"), frames=4, quiet=True, val_fraction=0.0, test_fraction=0.0, **FAST_EXTRACTOR)
    assert manifest["classes"] == ["fast", "slow"] and manifest["splits"]["train"]["num_examples"] == 2
    assert [e["reason"] for e in manifest["skipped"]] == ["file not found"]


def test_inspect_shows_splits_genres_and_skipped(built, capsys):
    assert inspect.main([str(built["out"])]) == 0
    text = capsys.readouterr().out
    assert "Break" in text and "train" in text and "skipped: 5 file(s)" in text and "empty file (0 bytes)" in text


def run_cli(main, argv, capsys, prog="build_shards"):
    code = cli.run(main, prog, argv)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "input folder not found"),
        (["{empty}"], "no video files in"),
        (["{junk}"], "no usable video in"),
        (["{junk}", "--frames", "0"], "frames must be positive, got 0"),
        (["{junk}", "--sampling", "fancy"], "sampling must be one of uniform, first, stride; got 'fancy'"),
        (["{junk}", "--frames", "many"], "argument --frames: invalid int value: 'many'"),
        (["{junk}", "--weights", "/no/such/weights.h5"], "no file at '/no/such/weights.h5'"),
        (["{junk}", "--backbone", "AlexNet"], "backbone must be one of InceptionV3"),
        (["{junk}", "--split", "crossmodal"], "no usable video in"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "gBR_sBM_c01_d01_mBR0_ch01.mp4").write_bytes(b"")
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "junk": tmp_path / "junk"}
    argv = [a.format(**paths) for a in args] + ["--out", str(tmp_path / "out"), "--quiet", "--weights", "none"]
    if "--weights" in args:
        argv = argv[:-2]
    code, err = run_cli(build_main, argv, capsys)
    assert code == 2
    assert len(err) == 1 and message in err[0], err


def test_refuses_to_overwrite_an_earlier_build_unless_asked(built, tmp_path, capsys):
    argv = [str(built["root"]), "--out", str(built["out"]), "--quiet", "--weights", "none"]
    code, err = run_cli(build_main, argv, capsys)
    assert code == 2 and "already holds a build" in err[0] and "--overwrite" in err[0]


def test_module_entry_point_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dancedata.build_shards", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"build_shards: error: input folder not found: {tmp_path / 'nope'}"
    help_text = subprocess.run([sys.executable, "-m", "dancedata.build_shards", "--help"], capture_output=True, text=True).stdout
    for flag in ("--frames", "--sampling", "--backbone", "--weights", "--batch-size", "--workers", "--split", "--dtype", "--out"):
        assert flag in help_text
