"""Fixtures: tiny videos written with OpenCV inside the tests, never downloads."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

# One colour per genre, so a correct pipeline can learn genre from pixels (BGR).
GENRE_COLOURS = {"BR": (0, 0, 220), "PO": (0, 200, 0), "LO": (220, 0, 0), "HO": (0, 220, 220)}
FAST_EXTRACTOR = {"backbone": "MobileNetV2", "weights": "none", "image_size": 32, "batch_size": 8}


def write_video(path, frames=12, colour=(0, 0, 255), size=(48, 64), fps=30, seed=0):
    """An mp4v video of `frames` frames: a coloured square moving over noise; frame i has i encoded in a bar."""
    height, width = size
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), path
    for i in range(frames):
        image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        x = (i * 3) % (width - 20)
        image[10:30, x : x + 20] = colour
        writer.write(image)
    writer.release()
    return path


def aist_name(genre, camera=1, dancer=1, music=0, choreo=1, situation="BM"):
    return f"g{genre}_s{situation}_c{camera:02d}_d{dancer:02d}_m{genre}{music}_ch{choreo:02d}"


def make_aist_folder(root, genres=("BR", "PO", "LO", "HO"), performances=3, cameras=2, frames=12):
    """genres x performances x cameras AIST-named videos; returns {video_id: genre}."""
    root.mkdir(parents=True, exist_ok=True)
    made = {}
    for g, genre in enumerate(genres):
        for p in range(performances):
            for c in range(1, cameras + 1):
                stem = aist_name(genre, camera=c, dancer=g * 4 + p + 1, music=p % 6, choreo=p + 1)
                write_video(root / f"{stem}.mp4", frames=frames, colour=GENRE_COLOURS[genre], seed=len(made))
                made[stem] = genre
    return made


@pytest.fixture
def aist_folder(tmp_path):
    root = tmp_path / "aist"
    return root, make_aist_folder(root)
