"""What `VideoDecoder` costs against decoding everything, on a clip with long groups of pictures.

    python benchmarks/video_decoder_cost.py [--seconds 60]

Writes (once, in benchmarks/data/) a 720p30 H.264 clip with B-frames and a key frame every 250
frames (x264's default interval; veryfast preset), then times, best of three: opening it (the index),
one frame at a key frame, one at the end of a group, 20 uniform frames with 1 and 2 threads, and
PyAV decoding every frame to RGB with one thread (once).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import av
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from dancedata.video_decoder import VideoDecoder  # noqa: E402

WIDTH, HEIGHT, FPS, KEY_INTERVAL = 1280, 720, 30, 250


def make_clip(path: str, frames: int) -> None:
    """A static noisy background and one moving block: cheap to encode, H.264 structure as a camera's."""
    background = np.random.default_rng(0).integers(40, 90, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(KEY_INTERVAL), "bf": "3"}
        for i in range(frames):
            image = background.copy()
            x = int((WIDTH - 200) * (0.5 + 0.5 * np.sin(i / 20)))
            image[200:520, x : x + 200] = (200, 60 + i % 100, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def best(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def frames(path: str, indices, threads: int = 1):
    def run():
        with VideoDecoder(path, threads=threads) as decoder:
            decoder.frames_at(indices)

    return run


def everything(path: str):
    def run():
        with av.open(path) as container:
            container.streams.video[0].codec_context.thread_count = 1
            for frame in container.decode(video=0):
                frame.to_ndarray(format="rgb24")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="clip length (default: 60)")
    args = parser.parse_args()
    count = args.seconds * FPS
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    path = os.path.join(HERE, "data", f"decoder-{HEIGHT}p-{args.seconds}s.mp4")
    if not os.path.exists(path):
        make_clip(path, count)
    uniform = ((np.arange(20) + 0.5) * count / 20).astype(int)
    with VideoDecoder(path) as decoder:
        print(f"{path}: {decoder.index.frame_count} frames, key frames every {KEY_INTERVAL}")
    print(f"open (index):                     {best(lambda: VideoDecoder(path).close()):.3f} s")
    print(f"open + frame 0 (a key frame):     {best(frames(path, [0])):.3f} s")
    print(f"open + frame {KEY_INTERVAL - 1} (group's end):  {best(frames(path, [KEY_INTERVAL - 1])):.3f} s")
    print(f"open + 20 uniform, 1 thread:      {best(frames(path, uniform)):.3f} s")
    print(f"open + 20 uniform, 2 threads:     {best(frames(path, uniform, threads=2)):.3f} s")
    print(f"every frame to RGB, 1 thread:     {best(everything(path), repeats=1):.3f} s")


if __name__ == "__main__":
    main()
