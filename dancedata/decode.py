"""Decode only the sampled frames of a video, in one forward pass that stops after the last one.

Frames that are not kept are `grab()`bed (decoded, never converted); kept frames are retrieved,
centre-cropped to a square, resized and turned into RGB. The whole video is never in memory: only
the T kept frames at the output size are.
"""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # bad files are reported by us, with their path

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dancedata import sampling  # noqa: E402
from dancedata.config import SamplingConfig  # noqa: E402
from dancedata.errors import ConfigError, DecodeError  # noqa: E402


@dataclasses.dataclass
class Clip:
    """The kept frames of one video. `frames` holds only the real ones: [mask.sum(), S, S, 3] uint8 RGB."""

    frames: np.ndarray
    indices: np.ndarray  # [T] int64, -1 where padded
    mask: np.ndarray  # [T] bool
    claimed_frames: int  # what the container says; may be wrong
    fps: float
    times: np.ndarray = None  # [T] float32 seconds of each kept frame, -1 where padded
    decoded_frames: int = 0  # frames decoded to reach the last kept one (or the end of the stream)
    truncated: bool = False  # the stream ended before a frame the sampling asked for

    def report(self) -> dict:
        """The decode report stored with each example (schema.FRAME_TIMES ...)."""
        from dancedata import schema

        times = self.times if self.times is not None else np.full(len(self.mask), -1.0, np.float32)
        return {
            schema.FRAME_TIMES: times,
            schema.FPS: self.fps,
            schema.CLAIMED_FRAMES: max(self.claimed_frames, 0),
            schema.DECODED_FRAMES: self.decoded_frames,
            schema.TRUNCATED: int(self.truncated),
        }


def to_square_rgb(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop, resize to size x size, BGR -> RGB."""
    height, width = frame_bgr.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame_bgr[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (size, size), interpolation=interpolation)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


UNOPENABLE = "cannot be opened as a video (not a video file, or an unsupported codec)"
_threads = 0  # decoder threads per video; 0 lets FFmpeg choose (all cores)


def use_threads(count: int) -> None:
    """Decoder threads for every video opened from now on in this process (0: FFmpeg's choice).
    Decode workers use 1, so `--workers N` uses about N cores instead of N x cores threads."""
    global _threads
    _threads = count
    cv2.setNumThreads(max(count, 1))


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError("file not found")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    with open(path, "rb") as handle:  # permission denied or an I/O error is the machine's, and raises OSError
        handle.read(1)


def _open(path: str) -> cv2.VideoCapture:
    _check_file(path)
    params = [cv2.CAP_PROP_N_THREADS, _threads] if _threads else []
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        raise DecodeError(UNOPENABLE)
    return capture


def count_frames(path: str) -> int:
    """Frames the stream really decodes to (a grab-only pass): for containers that state no count."""
    capture = _open(path)
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def read_keyframes(path: str, config: SamplingConfig, size: int) -> Clip:
    """Fast mode: only key frames are decoded (PyAV, `skip_frame=NONKEY`); the sampling rule then
    picks among them. Each kept key frame is scaled by the decoder's own scaler, then centre-cropped."""
    import av  # SamplingConfig(keyframes=True) has already said what to install when it is missing

    _check_file(path)
    indices, times, frames, claimed = [], [], [], 0
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError):
        raise DecodeError(UNOPENABLE) from None
    try:
        with container:
            stream = container.streams.video[0]
            stream.codec_context.skip_frame = "NONKEY"
            stream.thread_type = "AUTO"
            if _threads:
                stream.codec_context.thread_count = _threads
            fps = float(stream.average_rate or 0)
            claimed = stream.frames
            for frame in container.decode(stream):
                scale = size / min(frame.width, frame.height)
                width, height = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
                scaled = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
                top, left = (height - size) // 2, (width - size) // 2
                frames.append(scaled[top : top + size, left : left + size])
                indices.append(round(frame.time * fps) if frame.time is not None and fps else len(indices))
                times.append(frame.time if frame.time is not None else (indices[-1] / fps if fps else -1.0))
                if config.sampling == "first" and len(frames) == config.frames:
                    break
    except (av.error.FFmpegError, IndexError) as error:
        if not frames:
            raise DecodeError(f"cannot decode key frames: {error}") from None
    if not frames:
        raise DecodeError(f"no key frame could be decoded (container claims {claimed} frames)")
    chosen, mask = sampling.sample(config, len(frames))
    real = chosen[mask]
    picked = np.full(config.frames, -1, dtype=np.int64)
    picked[: len(real)] = np.asarray(indices)[real]
    picked_times = np.full(config.frames, -1.0, dtype=np.float32)
    picked_times[: len(real)] = np.asarray(times, np.float32)[real]
    decoded = (picked[len(real) - 1] + 1) if len(real) else 0
    return Clip(np.stack([frames[i] for i in real]), picked, mask, claimed, fps, picked_times, int(decoded))


def read_clip(path: str, config: SamplingConfig, size: int) -> Clip:
    """Decodes the frames `config` samples from `path`, stopping after the last one.

    A container may over-state its frame count (a truncated file claims 120 and decodes 58): the clip
    then holds the sampled frames that exist and its mask says which those are.
    Raises DecodeError when not a single frame can be decoded.
    """
    if config.keyframes:
        return read_keyframes(path, config, size)
    capture = _open(path)
    try:
        claimed = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frame_count = claimed if claimed > 0 else sampling.UNKNOWN
        if frame_count == sampling.UNKNOWN and sampling.needs_frame_count(config):
            frame_count = count_frames(path)
        indices, mask = sampling.sample(config, frame_count, fps)
        wanted = indices[mask]
        kept, times = [], []
        position = 0
        for target in wanted:
            while position < target and capture.grab():
                position += 1
            if position < target or not capture.grab():
                break  # the stream ended before this frame
            milliseconds = capture.get(cv2.CAP_PROP_POS_MSEC)
            ok, frame = capture.retrieve()
            position += 1
            if not ok or frame is None:
                break
            kept.append(to_square_rgb(frame, size))
            times.append(milliseconds / 1000 if milliseconds >= 0 else (target / fps if fps else -1.0))
    finally:
        capture.release()
    if not kept:
        raise DecodeError(f"no frame could be decoded (container claims {claimed} frames)")
    real = len(kept)
    truncated = real < len(wanted) or (config.sampling == "first" and claimed > real < config.frames)
    indices[real:] = -1
    mask[real:] = False
    frame_times = np.full(config.frames, -1.0, np.float32)
    frame_times[:real] = times
    return Clip(np.stack(kept), indices, mask, claimed, fps, frame_times, position, bool(truncated))


def read_clip_or_error(path: str, config: SamplingConfig, size: int):
    """read_clip, but any failure comes back as a DecodeError value: one broken file in a
    13,939-video dataset must not stop the others. Configuration errors still raise."""
    try:
        return read_clip(path, config, size)
    except ConfigError:
        raise
    except DecodeError as error:
        return error
    except Exception as error:  # OpenCV and FFmpeg raise assorted types on damaged files
        return DecodeError(f"{type(error).__name__}: {error}")
