"""Decoding cost against video length, on clips that look like AIST to an encoder.

    python benchmarks/decode_length.py [--baseline-videos 5]

In one run: uniform-20 build time per video for six 10 s, three 60 s and one 10-minute 1080p60 clips (x264 default
preset, B-frames, one key frame a second; the long ones are 10 s clips joined without re-encoding),
the decode floor of each, the speed-up over the notebook baseline on the 10 s clips, and peak memory
of --keyframes decoding a 10 s and the 10-minute clip (each in a fresh process that imports only the
decoder, so the comparison is the decoder's own memory, not TensorFlow's). Ends with each target met
or not. Inputs are made once in benchmarks/data/studio/ (ffmpeg needed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import videos as video_maker  # noqa: E402
from build_throughput import notebook_baseline  # noqa: E402

FRAMES = 20
# Peak RSS from VmHWM: Linux keeps ru_maxrss across exec, so a child started by this process (which
# holds TensorFlow, ~1.4 GB) would report the parent's peak; VmHWM belongs to the new address space.
MEMORY = """
import sys
from dancedata import decode
from dancedata.config import SamplingConfig
decode.read_clip(sys.argv[1], SamplingConfig(frames=20, keyframes=True), 224)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def build_seconds(folder: str, out: str) -> float:
    import dancedata

    shutil.rmtree(out, ignore_errors=True)
    dancedata.build_shards(folder, out, frames=FRAMES, weights="none", backbone="InceptionV3", image_size=224,
                           quiet=True, val_fraction=0.0, test_fraction=0.0, split="random")
    with open(os.path.join(out, "build_info.json")) as handle:
        info = json.load(handle)
    return info["elapsed_s"] - info["extractor_setup_s"]


def decode_seconds(paths: list) -> float:
    from dancedata import decode
    from dancedata.config import SamplingConfig

    start = time.perf_counter()
    for path in paths:
        decode.read_clip(path, SamplingConfig(frames=FRAMES), 224)
    return time.perf_counter() - start


def peak_mb(path: str) -> float:
    result = subprocess.run([sys.executable, "-c", MEMORY, path], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(HERE))
    return int(result.stdout.split()[-1]) / 1024


def linked(folder: str, paths: list) -> str:
    os.makedirs(folder)
    for path in paths:
        os.symlink(os.path.abspath(path), os.path.join(folder, os.path.basename(path)))
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-videos", type=int, default=6)
    parser.add_argument("--folder", default=os.path.join(HERE, "data", "studio"))
    parser.add_argument("--json", default=os.path.join(HERE, "results", "decode_length.json"))
    args = parser.parse_args()

    short = video_maker.make_studio(args.folder, 6)  # 10 s each
    minute = [video_maker.concatenated(os.path.join(args.folder, f"gBR_sFM_c0{k + 1}_d40_mBR{k}_ch40.mp4"),
                                       [short[(k + j) % 6] for j in range(6)]) for k in range(3)]
    ten_minutes = video_maker.concatenated(os.path.join(args.folder, "gPO_sFM_c01_d41_mPO0_ch41.mp4"), [minute[k % 3] for k in range(10)])
    tmp = tempfile.mkdtemp(prefix="dancedata-length-")
    try:
        # Each build's fixed start-up (decode worker pool, plan, manifest; ~1 s) is spread over its videos,
        # as in a real build; the single 10-minute clip carries all of it.
        sets = {"10 s": short, "60 s": minute, "10 min": [ten_minutes]}
        rows = {}
        for name, paths in sets.items():
            built = build_seconds(linked(os.path.join(tmp, name.replace(" ", "")), paths), os.path.join(tmp, "out"))
            rows[name] = {"build_s_per_video": built / len(paths), "decode_s_per_video": decode_seconds(paths) / len(paths)}
        baseline = notebook_baseline(short[: args.baseline_videos]) / args.baseline_videos
        memory = {"10 s": peak_mb(short[0]), "10 min": peak_mb(ten_minutes)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("studio-like 1080p60 H.264 (x264 medium, B-frames, key frame every 60), InceptionV3 @224, uniform --frames 20\n")
    print("| clip | build s/video | vs 10 s | decode floor s/video | speed-up vs notebook |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        ratio = row["build_s_per_video"] / rows["10 s"]["build_s_per_video"]
        print(f"| {name} | {row['build_s_per_video']:.2f} | {ratio:.2f}x | {row['decode_s_per_video']:.2f} | "
              f"{baseline / row['build_s_per_video'] if name == '10 s' else float('nan'):.1f}x |".replace("nanx", ""))
    print(f"\nnotebook baseline on the 10 s clips: {baseline:.2f} s/video")
    print(f"--keyframes peak memory (decoder process): 10 s clip {memory['10 s']:.0f} MB, 10 min clip {memory['10 min']:.0f} MB "
          f"({memory['10 min'] / memory['10 s']:.2f}x)")
    b = {name: row["build_s_per_video"] for name, row in rows.items()}
    targets = [
        ("60 s <= 1.5x 10 s", f"{b['60 s'] / b['10 s']:.2f}x", b["60 s"] / b["10 s"] <= 1.5),
        ("10 min < 3x 10 s", f"{b['10 min'] / b['10 s']:.2f}x", b["10 min"] / b["10 s"] < 3),
        ("uniform-20 >= 4x notebook", f"{baseline / b['10 s']:.1f}x", baseline / b["10 s"] >= 4),
        ("--keyframes memory 10 min within 10% of 10 s", f"{memory['10 min'] / memory['10 s']:.2f}x", memory["10 min"] / memory["10 s"] <= 1.10),
    ]
    print("\ntargets for a 2-core CPU: " + "; ".join(f"{t}: {v} {'met' if ok else 'NOT met'}" for t, v, ok in targets))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"rows": rows, "baseline_s_per_video": baseline, "keyframes_peak_mb": memory,
                   "targets": [{"target": t, "value": v, "met": ok} for t, v, ok in targets]}, handle, indent=2)


if __name__ == "__main__":
    main()
