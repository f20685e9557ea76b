"""The build's decode step: exactly the sampled frames of a video, cropped and resized, with a report.

`read_clip` composes `video_decoder.VideoDecoder` (index from the packets, exact sparse decoding),
the sampling rule (`sampling.pick`, a pure function of the index's frame times) and the crop and
resize to the backbone's input, done while decoding (`frame_to_square`): wanted frames are converted
straight to the output size, nothing else is kept, so memory is T frames at the output size however
long the video is. `--keyframes` samples among the index's key frames and decodes only those
(skip_frame=NONKEY).
"""
from __future__ import annotations

import dataclasses
import functools
import os

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dancedata import sampling  # noqa: E402
from dancedata.config import SamplingConfig  # noqa: E402
from dancedata.errors import DecodeError  # noqa: E402
# UNOPENABLE: the reason the build records for a file that is no video; decode.UNOPENABLE is its old home.
from dancedata.video_decoder import UNOPENABLE, VideoDecoder, VideoIndex  # noqa: E402, F401


@dataclasses.dataclass
class Clip:
    """The kept frames of one video. `frames` holds only the real ones: [mask.sum(), S, S, 3] uint8 RGB."""

    frames: np.ndarray
    indices: np.ndarray  # [T] int64 frame numbers in presentation order, -1 where padded
    mask: np.ndarray  # [T] bool
    claimed_frames: int  # what the container says; may be wrong (0: it says nothing)
    fps: float
    times: np.ndarray = None  # [T] float32 seconds of each kept frame from the first frame, -1 where padded
    decoded_frames: int = 0  # frames the stream really holds (its decodable packets)
    truncated: bool = False  # the container claims more frames than the stream holds, or a wanted frame did not decode

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


def frame_to_square(frame, size: int) -> np.ndarray:
    """A decoded frame -> [size, size, 3] uint8 RGB: scaled so its short side is `size` and converted
    to RGB in one swscale pass (area averaging when shrinking; 0.7 ms for a 1080p frame against 5 ms
    for converting it whole and resizing after), then centre-cropped."""
    side = min(frame.width, frame.height)
    width, height = max(size, round(frame.width * size / side)), max(size, round(frame.height * size / side))
    method = "AREA" if side > size else "BILINEAR"
    scaled = frame.reformat(width=width, height=height, format="rgb24", interpolation=method).to_ndarray()
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(scaled[top : top + size, left : left + size])


_threads = 0  # decoder threads per video; 0 lets FFmpeg choose (all cores)


def use_threads(count: int) -> None:
    """Decoder threads for every video opened from now on in this process (0: FFmpeg's choice).
    Decode workers use CPUs // workers (decode_pool.threads_per_worker), so `--workers N` uses about the
    CPUs this process may use instead of N x cores threads."""
    global _threads
    _threads = count
    cv2.setNumThreads(max(count, 1))


def read_clip(path: str, config: SamplingConfig, size: int) -> Clip:
    """Decodes exactly the frames `config` samples from `path`, as [size, size, 3] centre squares.

    A container may over-state or omit its frame count: the index from its packets decides, so a
    video with at least T decodable frames yields T real frames. Raises DecodeError, with one plain
    sentence (the build records it beside the path), when not a single frame can be decoded.
    """
    try:
        decoder = VideoDecoder(path, threads=_threads)
    except DecodeError as error:
        raise DecodeError(error.reason) from None
    with decoder:
        try:
            convert = functools.partial(frame_to_square, size=size)
            idx, positions, wanted, kept = _decode_sampled(decoder, config, convert)
        except av.error.FFmpegError as error:
            raise DecodeError(f"the decoder failed: {error}") from None
    claimed = idx.claimed_frames
    if not kept:  # a file cut short says so, as a build's `truncated` list does for one that yields frames
        cut = "truncated: " if not idx.complete or claimed > idx.frame_count else ""
        raise DecodeError(f"{cut}no frame could be decoded (container claims {claimed} frames)")
    present = [k for k, stamp in enumerate(wanted) if stamp in kept]
    real = len(present)
    indices = np.full(config.frames, -1, np.int64)
    indices[:real] = np.asarray(positions)[present]
    times = np.full(config.frames, -1.0, np.float32)
    times[:real] = idx.seconds[indices[:real]]
    mask = np.zeros(config.frames, bool)
    mask[:real] = True
    frames = np.stack([kept[wanted[k]] for k in present])
    truncated = real < len(wanted) or not idx.complete or (claimed > idx.frame_count)
    return Clip(frames, indices, mask, claimed, idx.fps, times, idx.frame_count, bool(truncated))


def _decode_sampled(decoder: VideoDecoder, config: SamplingConfig, convert) -> tuple:
    """(index, positions, their pts, {pts: converted frame}) for the frames `config` samples.
    The index is the decoder's, or the part of it before a cut file's undecodable tail."""
    idx = decoder.index
    positions = _sampled(config, idx)
    if not len(positions):
        raise DecodeError(f"no frame could be decoded (container claims {idx.claimed_frames} frames)")
    wanted = [int(idx.pts[p]) for p in positions]
    kept = decoder._kept(wanted, convert, keyframes_only=config.keyframes)
    missing = [stamp for stamp in wanted if stamp not in kept]
    if missing and kept and min(missing) > max(kept) and not config.keyframes:
        # The last packets do not decode (a cut file): sample again from the frames before them.
        idx = _before(idx, min(missing))
        positions = _sampled(config, idx)
        wanted = [int(idx.pts[p]) for p in positions]
        kept = decoder._kept(wanted, convert, seek=False)
    return idx, positions, wanted, kept


def _sampled(config: SamplingConfig, idx: VideoIndex) -> np.ndarray:
    """The frame numbers `config` picks from the index: among all frames, or among key frames only."""
    if not config.keyframes:
        chosen, mask = sampling.pick(config, idx.seconds, idx.time_base)
        return chosen[mask]
    keys = idx.key_frames
    chosen, mask = sampling.pick(config, idx.seconds[keys] if len(keys) else np.empty(0), idx.time_base)
    return keys[chosen[mask]] if len(keys) else np.empty(0, np.int64)


def _before(idx: VideoIndex, stamp: int) -> VideoIndex:
    """The index cut before the frame at `stamp`: what a cut file really holds."""
    count = int(np.searchsorted(idx.pts, stamp))
    return dataclasses.replace(idx, pts=idx.pts[:count], seconds=idx.seconds[:count],
                               key_frames=idx.key_frames[idx.key_frames < count], complete=False)
