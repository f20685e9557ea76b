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


def _ffmpeg(*args) -> None:
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg not found: install it (Debian/Ubuntu: apt-get install ffmpeg) to make realistic H.264 inputs")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make(folder: str, count: int, seconds: float = 10.0, size: str = "1920x1080", fps: int = 60, bitrate: str = "10M") -> list:
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
        _ffmpeg("-f", "lavfi", "-i", source, "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-b:v", bitrate,
                "-maxrate", bitrate, "-bufsize", "20M", "-g", str(fps), "-pix_fmt", "yuv420p", path)
    return paths


def make_studio(folder: str, count: int, seconds: float = 10.0, fps: int = 60) -> list:
    """Clips that look like AIST to an encoder: a static studio background and one moving figure,
    x264's default preset (medium: 3 B-frames, b-pyramid), one key frame a second (-g 60), 1080p60."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        genre = GENRES[i % len(GENRES)]
        path = os.path.join(folder, f"g{genre}_sFM_c{i % 9 + 1:02d}_d{i // 9 + 20:02d}_m{genre}{i % 6}_ch{i + 10:02d}.mp4")
        paths.append(path)
        if os.path.exists(path):
            continue
        figure = f"testsrc2=size=360x720:rate={fps}"
        studio = f"color=c=0x3c4650:size=1920x1080:rate={fps}"
        moving = f"[0][1]overlay=x='780+{400 + 40 * i}*sin(t*1.3+{i})':y='200+80*sin(t*2.1)',noise=alls=3:allf=t"
        _ffmpeg("-f", "lavfi", "-i", studio, "-f", "lavfi", "-i", figure, "-filter_complex", moving, "-t", str(seconds),
                "-c:v", "libx264", "-preset", "medium", "-g", str(fps), "-pix_fmt", "yuv420p", path)
    return paths


def concatenated(path: str, parts: list) -> str:
    """One long clip made by joining `parts` without re-encoding (the same decoding work as a clip
    encoded at that length, made in seconds instead of the tens of minutes x264 needs for 10 min)."""
    if os.path.exists(path):
        return path
    listing = path + ".txt"
    with open(listing, "w") as handle:
        handle.writelines(f"file '{os.path.abspath(p)}'\n" for p in parts)
    _ffmpeg("-f", "concat", "-safe", "0", "-i", listing, "-c", "copy", path)
    os.remove(listing)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="1920x1080")
    args = parser.parse_args()
    print("\n".join(make(args.folder, args.count, args.seconds, args.size)))
