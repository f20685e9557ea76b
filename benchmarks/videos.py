"""Realistic benchmark inputs: AIST-named 1920x1080, 60 fps, H.264 at ~10 Mbps, ~10 s clips.

Made with ffmpeg (Debian: `apt-get install ffmpeg`): moving test patterns with noise, so the encoder
has real work and the decoder sees realistic bitrates. One keyframe per second (-g 60).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

GENRES = ("BR", "PO", "LO", "MH", "LH", "HO", "WA", "KR", "JS", "JB")


def make(folder: str, count: int, seconds: float = 10.0, size: str = "1920x1080", fps: int = 60, bitrate: str = "10M") -> list:
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg not found: install it (Debian/Ubuntu: apt-get install ffmpeg) to make realistic H.264 inputs")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        genre = GENRES[i % len(GENRES)]
        name = f"g{genre}_sBM_c{i % 9 + 1:02d}_d{i // 9 + 1:02d}_m{genre}{i % 6}_ch{i // 9 + 1:02d}.mp4"
        path = os.path.join(folder, name)
        paths.append(path)
        if os.path.exists(path):
            continue
        source = f"testsrc2=size={size}:rate={fps},noise=alls=12:allf=t"
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-t", str(seconds),
             "-c:v", "libx264", "-preset", "veryfast", "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", "20M",
             "-g", str(fps), "-pix_fmt", "yuv420p", path],
            check=True,
        )
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="1920x1080")
    args = parser.parse_args()
    print("\n".join(make(args.folder, args.count, args.seconds, args.size)))
