"""Build throughput: the notebook's per-frame path against build_shards, and both against the floors.

    python benchmarks/build_throughput.py [--videos 10] [--folder benchmarks/data/videos] [--json results.json]

Same videos (AIST-named 1080p60 H.264, made by benchmarks/videos.py) and the same extractor
(InceptionV3 @224, random weights: timing does not depend on the weights) for every row.
Floors: decoding alone of exactly the frames a mode needs, and batched extraction alone of that many
already-decoded frames. efficiency = (decode floor + extraction floor) / actual.
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
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import videos as video_maker  # noqa: E402

FRAMES = 20
SIZE = 224
GPU_OPTIONS = {}  # --mixed-precision / --jit: the options a GPU run compares


def notebook_baseline(paths, model_size=SIZE):
    """The keras-io notebook: decode and crop/resize every frame, keep the first 20, predict() per frame."""
    import cv2
    import keras

    backbone = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg", input_shape=(model_size, model_size, 3))
    inputs = keras.Input((model_size, model_size, 3))
    extractor = keras.Model(inputs, backbone(keras.applications.inception_v3.preprocess_input(inputs)))

    def crop_center_square(frame):
        y, x = frame.shape[0:2]
        side = min(y, x)
        return frame[y // 2 - side // 2 : y // 2 + side // 2, x // 2 - side // 2 : x // 2 + side // 2]

    def load_video(path):
        cap = cv2.VideoCapture(path)
        frames = []
        while True:
            ret, frame = cap.read()
            if not ret:
                break
            frame = cv2.resize(crop_center_square(frame), (model_size, model_size))[:, :, [2, 1, 0]]
            frames.append(frame)
        cap.release()
        return np.array(frames)

    extractor.predict(np.zeros((1, model_size, model_size, 3)), verbose=0)  # build outside the timing
    start = time.perf_counter()
    for path in paths:
        frames = load_video(path)[None, ...]
        features = np.zeros((1, FRAMES, 2048), dtype="float32")
        for j in range(min(FRAMES, frames.shape[1])):
            features[0, j, :] = extractor.predict(frames[0, None, j, :], verbose=0)
    return time.perf_counter() - start


def build(folder, sampling, out, keyframes=False):
    import dancedata

    shutil.rmtree(out, ignore_errors=True)
    dancedata.build_shards(
        folder, out, frames=FRAMES, sampling=sampling, keyframes=keyframes, weights="none", backbone="InceptionV3", image_size=SIZE,
        batch_size=0, quiet=True, val_fraction=0.0, test_fraction=0.0, split="random", **GPU_OPTIONS,
    )
    with open(os.path.join(out, "build_info.json")) as handle:  # timings live beside the manifest, not in it
        info = json.load(handle)
    # the extractor's one-time construction is excluded, as it is for the baseline
    return info["elapsed_s"] - info["extractor_setup_s"]


def decode_floor(paths, sampling, keyframes=False):
    from dancedata import decode
    from dancedata.config import SamplingConfig

    config = SamplingConfig(frames=FRAMES, sampling=sampling, keyframes=keyframes)
    start = time.perf_counter()
    frames = [decode.read_clip(p, config, SIZE).frames for p in paths]
    return time.perf_counter() - start, np.concatenate(frames)


def extraction_floor(frames):
    from dancedata.config import ExtractorConfig
    from dancedata.extract import Extractor

    extractor = Extractor(ExtractorConfig(weights="none", image_size=SIZE, **GPU_OPTIONS))
    start = time.perf_counter()
    extractor(frames)
    return time.perf_counter() - start


def peak_memory(count, tmp):
    """Peak RSS (MB) of a build of `count` short videos, in a fresh process."""
    folder = os.path.join(tmp, f"mem{count}")
    video_maker.make(folder, count, seconds=2, size="320x240")
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so this child would report the peak of
    # the benchmark process that started it (which holds TensorFlow and the baseline's model).
    code = (
        "import dancedata;"
        f"dancedata.build_shards({folder!r}, {folder + '_out'!r}, weights='none', backbone='InceptionV3', image_size=96,"
        " quiet=True, overwrite=True);"
        "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


def check_targets(rows, baseline, memory):
    """(target, measured, met) for each goal of the benchmark issue."""
    def speedup(mode):
        return baseline / rows[f"build_shards --sampling {mode} --frames {FRAMES}"][0]

    efficiency = rows[f"build_shards --sampling first --frames {FRAMES}"][2]
    targets = [
        ("first >= 5x", f"{speedup('first'):.1f}x", speedup("first") >= 5),
        ("first efficiency >= 0.85", f"{efficiency:.2f}", efficiency >= 0.85),
        ("uniform >= 2.5x", f"{speedup('uniform'):.1f}x", speedup("uniform") >= 2.5),
        ("uniform --keyframes >= 5x", f"{speedup('uniform --keyframes'):.1f}x", speedup("uniform --keyframes") >= 5),
    ]
    if memory:
        ratio = memory[100] / memory[10]
        targets.append(("peak memory 100 vs 10 videos <= 1.10", f"{ratio:.2f}", ratio <= 1.10))
    return targets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=10, help="fewer runs faster but swings more with this machine's noise")
    parser.add_argument("--folder", default=os.path.join(os.path.dirname(__file__), "data", "videos"))
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "build.json"))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "on", "off"), help="extractor compute dtype")
    parser.add_argument("--jit", action="store_true", help="compile the extractor with XLA")
    args = parser.parse_args()
    GPU_OPTIONS.update(mixed_precision=args.mixed_precision, jit_compile=args.jit)

    import tensorflow as tf

    paths = video_maker.make(args.folder, args.videos)
    n = len(paths)
    tmp = tempfile.mkdtemp(prefix="dancedata-bench-")
    selected = os.path.join(tmp, "videos")  # exactly these n videos, however many --folder holds
    os.makedirs(selected)
    for path in paths:
        os.symlink(os.path.abspath(path), os.path.join(selected, os.path.basename(path)))
    rows = {}
    baseline = notebook_baseline(paths)
    rows["notebook baseline (decode all, predict per frame)"] = (baseline, n * FRAMES, None)
    for sampling, keyframes in (("first", False), ("uniform", False), ("uniform", True)):
        mode = sampling + (" --keyframes" if keyframes else "")
        actual = build(selected, sampling, os.path.join(tmp, mode.replace(" ", "")), keyframes)
        decode_s, frames = decode_floor(paths, sampling, keyframes)
        extract_s = extraction_floor(frames)
        rows[f"build_shards --sampling {mode} --frames {FRAMES}"] = (actual, len(frames), (decode_s + extract_s) / actual)
        rows[f"  floor: decode only ({mode})"] = (decode_s, len(frames), None)
        rows[f"  floor: batched extraction only ({mode}, {len(frames)} frames)"] = (extract_s, len(frames), None)

    header = (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"GPU: {', '.join(d.name for d in tf.config.list_physical_devices('GPU')) or 'none'}; "
        f"TensorFlow {tf.__version__}; {n} videos, 1920x1080 60 fps H.264 ~10 Mbps 10 s; InceptionV3 @{SIZE}; "
        f"mixed precision {args.mixed_precision}, XLA {'on' if args.jit else 'off'}"
    )
    print(header + "\n")
    print("| path | s/video | frames/s | speed-up vs baseline | efficiency |")
    print("|---|---:|---:|---:|---:|")
    results = []
    for name, (seconds, frames, efficiency) in rows.items():
        speedup = baseline / seconds
        print(f"| {name} | {seconds / n:.2f} | {frames / seconds:.1f} | {speedup:.1f}x | {'' if efficiency is None else f'{efficiency:.2f}'} |")
        results.append({"path": name.strip(), "seconds": seconds, "s_per_video": seconds / n, "frames_per_s": frames / seconds,
                        "speedup": speedup, "efficiency": efficiency})
    memory = {}
    if not args.skip_memory:
        memory = {count: peak_memory(count, tmp) for count in (10, 100)}
        print(f"\npeak memory of a build: 10 videos {memory[10]:.0f} MB, 100 videos {memory[100]:.0f} MB "
              f"(ratio {memory[100] / memory[10]:.2f})")
    targets = check_targets(rows, baseline, memory)
    print("\ntargets for a 2-core CPU: " + "; ".join(f"{name}: {value} {'met' if met else 'NOT met'}" for name, value, met in targets))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"header": header, "rows": results, "peak_memory_mb": memory,
                   "targets": [{"target": name, "value": value, "met": met} for name, value, met in targets]}, handle, indent=2)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
