"""Build throughput before and after a change, in one run: the same videos built by a git ref and by
the working tree, alternating (A, B, A, B, ...) so this machine's drift hits both alike.

    python benchmarks/compare_commits.py --before f9af549 [--after HEAD] [--videos 10] [--sampling first uniform] [--repeats 2]

Each build runs in a fresh process (as a user runs it) and is timed without the extractor's one-time
set-up, as build_throughput.py does; the table gives the median s/video per side and after/before.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import videos as video_maker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs inside the checkout under test; old builds kept timings in the manifest, new ones in build_info.json.
BUILD = """
import json, os, sys
sys.path.insert(0, {checkout!r})
import dancedata
manifest = dancedata.build_shards({videos!r}, {out!r}, frames=20, sampling={sampling!r}, weights="none",
    backbone="InceptionV3", image_size=224, quiet=True, val_fraction=0.0, test_fraction=0.0, split="random")
info_path = os.path.join({out!r}, "build_info.json")
info = json.load(open(info_path)) if os.path.exists(info_path) else manifest["build"]
print(json.dumps({{"seconds": info["elapsed_s"] - info["extractor_setup_s"]}}))
"""


def build_seconds(checkout: str, videos: str, sampling: str, out: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    code = BUILD.format(checkout=checkout, videos=videos, out=out, sampling=sampling)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": checkout}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=checkout)
    if result.returncode:
        sys.exit(f"build with {checkout} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git ref to compare against (e.g. main, a commit)")
    parser.add_argument("--after", default="", help="git ref for the other side (default: the working tree; a ref keeps "
                        "the run safe from edits made while it runs)")
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--sampling", nargs="+", default=["first", "uniform"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folder", default=os.path.join(ROOT, "benchmarks", "data", "videos"))
    args = parser.parse_args()

    paths = video_maker.make(args.folder, args.videos)
    tmp = tempfile.mkdtemp(prefix="dancedata-compare-")
    try:
        selected = os.path.join(tmp, "videos")
        os.makedirs(selected)
        for path in paths:
            os.symlink(os.path.abspath(path), os.path.join(selected, os.path.basename(path)))
        before = os.path.join(tmp, "before")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", before, args.before], check=True, capture_output=True)
        after = ROOT
        if args.after:
            after = os.path.join(tmp, "after")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", after, args.after], check=True, capture_output=True)
        sides = {"before": before, "after": after}
        times = {(side, s): [] for side in sides for s in args.sampling}
        for _ in range(args.repeats):
            for sampling in args.sampling:
                for side, checkout in sides.items():
                    times[(side, sampling)].append(build_seconds(checkout, selected, sampling, os.path.join(tmp, "out")))
        print(f"{len(paths)} videos (1080p60 H.264 10 s), InceptionV3 @224, --frames 20; median of {args.repeats}, alternating")
        print(f"before = {args.before}, after = {args.after or 'working tree'}\n")
        print("| sampling | before s/video | after s/video | after / before |")
        print("|---|---:|---:|---:|")
        for sampling in args.sampling:
            b = statistics.median(times[("before", sampling)]) / len(paths)
            a = statistics.median(times[("after", sampling)]) / len(paths)
            print(f"| {sampling} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    finally:
        for side in ("before", "after"):
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", os.path.join(tmp, side)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
