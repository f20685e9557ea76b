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


def _increasing(chosen: np.ndarray, count: int) -> np.ndarray:
    """Nearest strictly increasing indices within [0, count): where two targets fall on one frame
    (variable frame rate, a frozen stretch), the later one moves to the next frame."""
    chosen = np.clip(chosen, 0, count - 1).astype(np.int64)
    for k in range(1, len(chosen)):
        chosen[k] = max(chosen[k], chosen[k - 1] + 1)
    for k in range(len(chosen) - 1, -1, -1):  # pushed past the end: pull back
        chosen[k] = min(chosen[k], count - len(chosen) + k)
    return chosen


def at_or_before(times: np.ndarray, targets: np.ndarray, slack: float = 0.0) -> np.ndarray:
    """Index of the last frame shown at or before each target time; a frame starting within `slack`
    seconds after a target counts as at it (timestamps are rounded to the container's time base)."""
    return np.searchsorted(times, targets + slack, side="right") - 1


def is_constant_rate(times: np.ndarray, tick: float = 0.0) -> bool:
    """True when every frame lasts as long as the others, up to the container's rounding (one tick)."""
    if len(times) < 3:
        return True
    steps = np.diff(times)
    return float(steps.max() - steps.min()) <= max(tick, float(np.median(steps)) * 1e-3) * 1.001


def pick(config: SamplingConfig, times: np.ndarray, tick: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(indices [T], mask [T]) from the presentation times (seconds, increasing) of every frame the
    stream holds; `tick` is their resolution (the stream's time base).

    A constant-rate stream gets the frame-number rules above (uniform: the centre frame of each of T
    equal segments; stride --fps: every round(video fps / fps)-th frame). A variable-rate stream is
    sampled evenly in time: uniform takes the last frame shown at or before the centre time of each
    of T equal spans of the clip's duration, stride --fps the last frame at or before every 1/fps
    seconds, so a clip with a burst of fast frames is not over-sampled there.
    """
    times = np.asarray(times, np.float64)
    count = len(times)
    if count == 0:
        return pad(np.empty(0, np.int64), config.frames)
    if config.sampling == "first" or (config.sampling == "stride" and config.stride):
        return sample(config, count)
    step = float(np.median(np.diff(times))) if count > 1 else 0.0
    if is_constant_rate(times, tick):
        return sample(config, count, 1 / step if step > 0 else 0.0)
    slack = max(tick / 2, step * 1e-6)  # timestamps are rounded to the tick
    if config.sampling == "uniform":
        if count <= config.frames:
            return pad(np.arange(count), config.frames)
        duration = times[-1] - times[0] + step
        centres = times[0] + (np.arange(config.frames) + 0.5) * duration / config.frames
        return pad(_increasing(at_or_before(times, centres, slack), count), config.frames)
    targets = times[0] + np.arange(config.frames) / config.fps
    targets = targets[targets <= times[-1] + slack]
    chosen = np.unique(at_or_before(times, targets, slack))
    return pad(chosen[chosen >= 0][: config.frames], config.frames)
