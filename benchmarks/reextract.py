"""Re-extraction from stored frames against a build from the videos, in one run.

    python benchmarks/reextract.py [--videos 10] [--folder benchmarks/data/studio] [--json results/reextract.json]

Inputs: studio-like AIST-named 1080p60 H.264 clips (benchmarks/videos.py make_studio: x264 medium,
B-frames, a key frame a second, 10 s). First two builds keep the frames (--keep-frames jpeg and png;
their disk per video is measured). Then, for a light backbone (MobileNetV3Small) and InceptionV3, each
@224, uniform 20 frames, random weights (timing does not depend on the weights; no download):
  from videos:  build_shards VIDEOS --backbone B            (decode + extract)
  from frames:  build_shards --from-frames KEPT --backbone B (no video opened)
s/video excludes the one-time construction of the extractor, as benchmarks/build_throughput.py does, and
is the best of --repeats builds, each in a fresh process (other processes on a shared machine only
ever slow a build down; a process that has built before carries its models and traces along).
For each backbone it also compares the features: from PNG frames they must equal the videos' byte for
byte; from JPEG frames the cosine similarity of each real frame's features is reported. Features are
stored float32 here: random-weight MobileNetV3Small features underflow float16 to zero rows, which
have no cosine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import videos as video_maker  # noqa: E402

FRAMES, SIZE = 20, 224
BACKBONES = ("MobileNetV3Small", "InceptionV3")
COMMON = {"frames": FRAMES, "weights": "none", "image_size": SIZE, "quiet": True, "val_fraction": 0.0, "test_fraction": 0.0,
          "split": "random", "dtype": "float32"}
REPEATS = [2]  # --repeats


def timed_build(source, out, **options) -> float:
    """Seconds a build took, without the extractor's construction: the best of --repeats, each in a
    fresh process as a user runs it (`source` None: options name from_frames)."""
    flags = []
    for name, value in {**COMMON, **options}.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    command = [sys.executable, "-m", "dancedata.build_shards", *([source] if source else []), "--out", out, *flags]
    best = None
    for _ in range(REPEATS[0]):
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        with open(os.path.join(out, "build_info.json")) as handle:
            info = json.load(handle)
        seconds = info["elapsed_s"] - info["extractor_setup_s"]
        best = seconds if best is None else min(best, seconds)
    return best


def features(out) -> dict:
    """{video_id: (features [T, D] float32, mask [T] bool)} of a build, read with the manifest's spec."""
    import tensorflow as tf

    from dancedata import manifest as manifest_lib
    from dancedata import schema

    manifest = manifest_lib.load(out)
    spec = {key: manifest["feature_spec"][key] for key in (schema.FEATURES, schema.MASK, schema.VIDEO_ID)}
    files = [os.path.join(out, s["file"]) for split in manifest["splits"].values() for s in split["shards"]]
    found = {}
    for record in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(record, schema.parse_spec(spec))
        values = np.frombuffer(example[schema.FEATURES].numpy(), manifest["feature_dtype"]).reshape(FRAMES, -1)
        found[example[schema.VIDEO_ID].numpy().decode()] = (values.astype(np.float32), example[schema.MASK].numpy().astype(bool))
    return found


def cosines(a: dict, b: dict) -> np.ndarray:
    """Cosine similarity of every real frame's features, a against b."""
    found = []
    for video_id, (values, mask) in a.items():
        x, y = values[mask], b[video_id][0][mask]
        found += list((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    return np.asarray(found)


def disk(out, count: int) -> dict:
    with open(os.path.join(out, "manifest.json")) as handle:
        manifest = json.load(handle)
    shards = sum(s["bytes"] for split in manifest["splits"].values() for s in split["shards"])
    return {"frames_mb_per_video": manifest["frames"]["bytes"] / count / 1e6, "shards_mb_per_video": shards / count / 1e6}


def run(folder: str, count: int, tmp: str) -> dict:
    paths = video_maker.make_studio(folder, count)
    selected = os.path.join(tmp, "videos")  # exactly these videos, however many the folder holds
    os.makedirs(selected)
    for path in paths:
        os.symlink(os.path.abspath(path), os.path.join(selected, os.path.basename(path)))
    result = {"disk": {}, "backbones": {}, "keep_frames_s_per_video": {}}
    light = BACKBONES[0]
    for fmt in ("jpeg", "png"):  # the builds that keep frames, with the light backbone
        seconds = timed_build(selected, os.path.join(tmp, fmt), backbone=light, keep_frames=fmt)
        result["keep_frames_s_per_video"][fmt] = seconds / count
        result["disk"][fmt] = disk(os.path.join(tmp, fmt), count)
    for backbone in BACKBONES:
        row = {}
        direct = os.path.join(tmp, f"{backbone}-videos")
        row["videos_s_per_video"] = timed_build(selected, direct, backbone=backbone) / count
        reference = features(direct)
        for fmt in ("jpeg", "png"):
            out = os.path.join(tmp, f"{backbone}-{fmt}")
            row[f"{fmt}_s_per_video"] = timed_build(None, out, from_frames=os.path.join(tmp, fmt), backbone=backbone) / count
            similarity = cosines(features(out), reference)
            row[f"{fmt}_cosine"] = {"min": float(similarity.min()), "mean": float(similarity.mean())}
            row[f"{fmt}_speedup"] = row["videos_s_per_video"] / row[f"{fmt}_s_per_video"]
        row["png_identical"] = all(open(os.path.join(tmp, f"{backbone}-png", name), "rb").read()
                                   == open(os.path.join(direct, name), "rb").read()
                                   for name in os.listdir(direct) if name.endswith((".tfrecord", ".index")))
        result["backbones"][backbone] = row
    return result


def report(result: dict, count: int) -> str:
    import tensorflow as tf

    gpus = ", ".join(d.name for d in tf.config.list_physical_devices("GPU")) or "none"
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, GPU: {gpus}; TensorFlow "
             f"{tf.__version__}; {count} studio-like 1080p60 H.264 clips of 10 s; uniform {FRAMES} frames @{SIZE}, random weights",
             "", "| backbone | from videos s/video | from JPEG frames s/video | speed-up | from PNG frames s/video | speed-up "
             "| PNG features identical | JPEG cosine min / mean |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for backbone, row in result["backbones"].items():
        lines.append(f"| {backbone} | {row['videos_s_per_video']:.3f} | {row['jpeg_s_per_video']:.3f} | {row['jpeg_speedup']:.1f}x "
                     f"| {row['png_s_per_video']:.3f} | {row['png_speedup']:.1f}x | {'yes' if row['png_identical'] else 'NO'} "
                     f"| {row['jpeg_cosine']['min']:.4f} / {row['jpeg_cosine']['mean']:.5f} |")
    lines += ["", "| frames kept | frames MB/video | shards MB/video | build with frames s/video |", "|---|---:|---:|---:|"]
    for fmt, sizes in result["disk"].items():
        lines.append(f"| {fmt} | {sizes['frames_mb_per_video']:.3f} | {sizes['shards_mb_per_video']:.3f} "
                     f"| {result['keep_frames_s_per_video'][fmt]:.3f} |")
    light = result["backbones"][BACKBONES[0]]
    met = min(light["jpeg_speedup"], light["png_speedup"])
    lines.append(f"\ntarget: {BACKBONES[0]} from frames >= 5x faster per video than from the videos: {met:.1f}x "
                 f"{'met' if met >= 5 else 'NOT met'}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--folder", default=os.path.join(os.path.dirname(__file__), "data", "studio"))
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "reextract.json"))
    parser.add_argument("--repeats", type=int, default=2, help="builds of each kind; the fastest counts")
    args = parser.parse_args()
    REPEATS[0] = args.repeats
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="dancedata-reextract-")
    try:
        result = run(args.folder, args.videos, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(result, args.videos) + (f"\nload average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
                                          f"on {os.cpu_count()} cores; best of {args.repeats} builds each")
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"videos": args.videos, **result, "report": text}, handle, indent=2)


if __name__ == "__main__":
    main()
