"""Frame sampling: pure functions of (frame count, config) -> (indices, mask). No video needed.

`indices` has exactly `frames` entries: the frame numbers to keep, increasing, then -1 padding;
`mask` is True where an index is real. Real entries always come first (right padding), which is what
masked RNNs (and cuDNN's GRU) expect.
"""
from __future__ import annotations

import numpy as np

from dancedata.config import SamplingConfig

UNKNOWN = -1


def uniform(frame_count: int, frames: int) -> np.ndarray:
    """The centre frame of each of `frames` equal segments of the clip (all frames if fewer)."""
    if frame_count <= frames:
        return np.arange(max(frame_count, 0))
    return ((np.arange(frames) + 0.5) * frame_count / frames).astype(np.int64)


def first(frame_count: int, frames: int) -> np.ndarray:
    """The first `frames` frames: the original notebook's behaviour."""
    return np.arange(frames if frame_count == UNKNOWN else min(frames, frame_count))


def strided(frame_count: int, frames: int, stride: int) -> np.ndarray:
    """Every `stride`-th frame from the start, at most `frames` of them."""
    indices = np.arange(frames) * stride
    return indices if frame_count == UNKNOWN else indices[indices < frame_count]


def stride_for(config: SamplingConfig, video_fps: float) -> int:
    """The configured stride, or the one that brings `video_fps` closest to `config.fps`."""
    if config.stride:
        return config.stride
    if video_fps <= 0:
        return 1
    return max(1, round(video_fps / config.fps))


def needs_frame_count(config: SamplingConfig) -> bool:
    """Only uniform sampling must know how long the clip is before it picks frames."""
    return config.sampling == "uniform"


def sample(config: SamplingConfig, frame_count: int, video_fps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(indices [T] int64 with -1 padding, mask [T] bool) for a clip of `frame_count` frames.

    `frame_count` may be UNKNOWN for `first` and `stride`: decoding then stops when the stream does.
    """
    if config.sampling == "uniform":
        if frame_count == UNKNOWN:
            raise ValueError("uniform sampling needs the frame count")
        chosen = uniform(frame_count, config.frames)
    elif config.sampling == "first":
        chosen = first(frame_count, config.frames)
    else:
        chosen = strided(frame_count, config.frames, stride_for(config, video_fps))
    return pad(chosen, config.frames)


def pad(chosen: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads chosen indices to `frames` with -1; the mask marks the real ones."""
    indices = np.full(frames, -1, dtype=np.int64)
    indices[: len(chosen)] = chosen
    mask = np.zeros(frames, dtype=bool)
    mask[: len(chosen)] = True
    return indices, mask
