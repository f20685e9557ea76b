"""Test videos whose every frame carries its own index as a pattern that survives compression,
centre-cropping and resizing: 16 bits in a 2 x 8 grid of black/white cells inside the centre square.
The test, not the decoder, says which frame is which."""
from __future__ import annotations

import fractions

import cv2
import numpy as np

WIDTH, HEIGHT = 192, 128  # the centre square is x in [32, 160)
LEFT = (WIDTH - HEIGHT) // 2


def stamped_frame(index: int) -> np.ndarray:
    """[HEIGHT, WIDTH, 3] uint8 RGB: grey surround, the index's bits as white cells in the centre square."""
    image = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
    cell_w, cell_h = HEIGHT // 8, HEIGHT // 2
    for bit in range(16):
        row, column = divmod(bit, 8)
        value = 255 if (index >> bit) & 1 else 0
        image[row * cell_h : (row + 1) * cell_h, LEFT + column * cell_w : LEFT + (column + 1) * cell_w] = value
    return image


def read_stamp(frame: np.ndarray) -> int:
    """The index stamped into a decoded, centre-cropped, resized RGB frame of any square size."""
    size = frame.shape[0]
    grey = frame.mean(axis=2)
    value = 0
    for bit in range(16):
        row, column = divmod(bit, 8)
        y, x = int((row + 0.5) * size / 2), int((column + 0.5) * size / 8)
        patch = grey[y - 1 : y + 2, x - 1 : x + 2]
        value |= int(patch.mean() > 128) << bit
    return value


def write_pyav(path, count, codec="libx264", times=None, rate=30, options=None, pix_fmt="yuv420p", container_format=None):
    """`count` stamped frames encoded with PyAV. `times` (seconds per frame) makes a variable-rate
    or offset stream; otherwise frame i is shown at i / rate."""
    import av

    resolution = 1000 if times is not None else rate
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        stream.options = options or {}
        if times is not None:
            stream.time_base = fractions.Fraction(1, resolution)
            stream.codec_context.time_base = fractions.Fraction(1, resolution)
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(stamped_frame(i), format="rgb24")
            if times is not None:
                frame.pts = int(round(times[i] * resolution))
                frame.time_base = fractions.Fraction(1, resolution)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_opencv(path, count, fourcc="mp4v", fps=30):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (WIDTH, HEIGHT))
    assert writer.isOpened(), path
    for i in range(count):
        writer.write(cv2.cvtColor(stamped_frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


# x264 with B-frames (3, pyramid), a key frame every 24 frames and no scene-cut keys: the hard case.
BFRAMES = {"bf": "3", "g": "24", "sc_threshold": "0", "preset": "medium", "crf": "18"}
OPEN_GOP = {**BFRAMES, "x264-params": "open-gop=1"}
