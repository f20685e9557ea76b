"""`VideoDecoder`: exact frames of a video by frame number or by time, decoding only what they need.

1. Index: opening a video demuxes its stream's packets without decoding them. Their timestamps give
   every frame's presentation time (variable frame rate included) and the true frame count, whatever
   the container's header claims; their key-frame flags say where decoding can start.
2. Decode: for each wanted frame, seek to the key frame before it when that lies beyond the next key
   frame, else decode forward. Packets of frames nobody wants are decoded with skip_frame=NONREF:
   pictures that no other picture references are never reconstructed, which is exact. (BIDIR,
   NONINTRA and skip_loop_filter are lossy and never used.) Every kept frame is identified by its
   timestamp, never by counting, and a wanted frame that a seek missed is found by decoding forward
   from the start instead. The tail of a group of pictures after its last wanted frame is not sent
   at all; decoding restarts at the next key frame as after a seek (an open GOP's key frame is no
   IDR, and H.264 decoders output nothing after such a gap until they recover).

Frames come back whole (RGB, full size): cropping and resizing are the caller's steps. The build
(`decode.read_clip`) is one such caller; it converts while decoding, which is why the conversion is
a parameter of the private `_kept`.
"""
from __future__ import annotations

import bisect
import dataclasses
import os
from typing import Callable, NamedTuple

import av
import numpy as np

from dancedata import sampling
from dancedata.errors import ConfigError, DecodeError

UNOPENABLE = "cannot be opened as a video (not a video file, or an unsupported codec)"
TRUNCATED = "truncated: the file ends partway through, before its index (a download cut short?); download it again"


class Frames(NamedTuple):
    """Decoded frames in the order asked for (a duplicate request is a duplicate row)."""

    data: np.ndarray  # [N, H, W, 3] uint8 RGB, full size
    indices: np.ndarray  # [N] int64 frame numbers in presentation order
    seconds: np.ndarray  # [N] float64 presentation times, from the first frame


@dataclasses.dataclass(frozen=True)
class VideoIndex:
    """Every frame of a video stream, read from its packets (nothing decoded)."""

    pts: np.ndarray  # [N] int64 presentation timestamps in `time_base` units, increasing: frame i is the i-th shown
    key_frames: np.ndarray  # [K] int64 frame numbers of the key frames (where decoding can start)
    seconds: np.ndarray  # [N] float64 presentation times from the first frame (a stream starting at 2.5 s starts at 0)
    time_base: float  # seconds per timestamp unit: the resolution of `seconds`
    fps: float  # the container's average frame rate (0: it states none)
    claimed_frames: int  # the frame count the container's header states (0: none); may be wrong
    complete: bool  # False when demuxing stopped at damaged data (a cut file): the frames before it count

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end, which is taken to last as long
        as the gap before it (1 / fps for a single frame): frames are shown in [0, duration)."""
        if self.frame_count > 1:
            return float(2 * self.seconds[-1] - self.seconds[-2])
        return 1 / self.fps if self.frame_count and self.fps > 0 else 0.0


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError("file not found")
    if os.path.isdir(path):
        raise DecodeError("is a folder, not a video file")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    with open(path, "rb") as handle:  # permission denied or an I/O error is the machine's, and raises OSError
        handle.read(1)


def _cut_short(path: str) -> bool:
    """Whether `path` is an MP4/MOV (ISO BMFF) whose boxes run past its end: a file cut short. Cut
    before its index (the moov box, at the end unless written for streaming), it cannot be opened."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if handle.read(8)[4:8] != b"ftyp":
            return False
        at = 0
        while at + 8 <= size:
            handle.seek(at)
            header = handle.read(16)
            length = int.from_bytes(header[:4], "big")
            if length == 1:  # a 64-bit size follows the type
                length = int.from_bytes(header[8:16], "big")
            if length < 8:  # 0: the box runs to the end of the file; less: not boxes after all
                return False
            at += length
        return at != size  # past the end, or cut inside the next box's header


def _open(path: str, threads: int):
    """(container, video stream); a file that is not a readable video raises DecodeError with the reason alone."""
    _check_file(path)
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        raise DecodeError(TRUNCATED if _cut_short(path) else UNOPENABLE) from None
    if not container.streams.video:
        container.close()
        raise DecodeError("holds no video stream (audio or data only)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    return container, stream


def _index(container, stream) -> VideoIndex:
    """Demuxes the stream's packets (reads the file, decodes nothing)."""
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    claimed = int(stream.frames or 0)
    pts, keys, complete = [], [], True
    try:
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if packet.size == 0 or stamp is None:
                continue
            pts.append(stamp)
            if packet.is_keyframe:
                keys.append(stamp)
    except av.error.FFmpegError:
        complete = False  # a damaged or cut file: the frames before the damage still count
    unique = np.unique(np.asarray(pts, np.int64))
    base = float(stream.time_base) if len(unique) else 0.0
    key_frames = np.searchsorted(unique, np.unique(np.asarray(keys, np.int64)))
    seconds = (unique - unique[0]) * base if len(unique) else np.empty(0)
    return VideoIndex(unique, key_frames.astype(np.int64), seconds, base, fps, claimed, complete)


class _SparseDecoder:
    """Decodes frames by timestamp: seeking where that skips whole groups of pictures, and skipping
    non-reference pictures nobody asked for. `convert` turns each wanted av.VideoFrame into an array."""

    def __init__(self, container, stream, first_pts: int, keys: list, convert: Callable, keyframes_only: bool = False):
        self.container, self.stream, self.first_pts, self.keys = container, stream, first_pts, keys
        self.codec = stream.codec_context
        self.convert, self.keyframes_only = convert, keyframes_only
        self.kept: dict = {}

    def _key_before(self, stamp: int):
        position = bisect.bisect_right(self.keys, stamp) - 1
        return self.keys[position] if position >= 0 else None

    def _seek(self, key) -> None:
        self._drain()
        try:
            self.container.seek(int(key if key is not None else self.first_pts), stream=self.stream, backward=True)
        except av.error.FFmpegError:
            self.container.seek(0, stream=self.stream, backward=True)
        self.codec.flush_buffers()

    def _drain(self) -> None:
        try:
            for frame in self.codec.decode(None):
                self._take(frame)
        except av.error.FFmpegError:
            pass
        self.codec.flush_buffers()

    def _take(self, frame) -> None:
        stamp = frame.pts if frame.pts is not None else frame.dts
        if stamp in self.wanted and stamp not in self.kept:
            self.kept[stamp] = self.convert(frame)

    def decode(self, wanted: list, seek: bool = True) -> dict:
        """{pts: frame} for every wanted pts the stream yields.

        Decoding order only refers backwards, so once the packet of the last wanted frame of a group
        of pictures has been sent, the rest of that group is needed by nobody: it is skipped up to the
        next key frame (or a seek jumps further), and demuxing stops when every wanted packet is sent.
        """
        self.wanted = set(wanted)
        key_of = {stamp: self._key_before(stamp) for stamp in self.wanted}
        unsent = set(self.wanted)
        self._seek(key_of[min(unsent)] if seek else None)
        current_key, skipping = None, False
        for packet in self.container.demux(self.stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if packet.is_keyframe:
                if skipping:
                    # Start afresh here, as after a seek: an open GOP's key frame is no IDR, and an H.264
                    # decoder that saw the skipped reference frames missing outputs nothing until it recovers.
                    self._drain()
                current_key, skipping = stamp, False
            if not unsent:
                break
            if skipping or stamp is None:
                continue
            target_key = key_of[min(unsent)]
            if seek and current_key is not None and target_key is not None:
                later = bisect.bisect_right(self.keys, current_key)
                next_key = self.keys[later] if later < len(self.keys) else None
                if next_key is not None and target_key > next_key:
                    self._seek(target_key)  # whole groups of pictures lie between: jump over them
                    current_key = None
                    continue
            if self.keyframes_only:
                self.codec.skip_frame = "NONKEY"
            else:
                self.codec.skip_frame = "DEFAULT" if stamp in self.wanted else "NONREF"
            try:
                for frame in self.codec.decode(packet):
                    self._take(frame)
            except av.error.FFmpegError:
                pass  # a damaged packet: the frames it carried are missing, later ones may decode
            unsent.discard(stamp)
            next_group = key_of[min(unsent)] if unsent else None
            if current_key is not None and next_group is not None and next_group > current_key:
                skipping = True  # every wanted frame of this group is sent: its tail is needed by nobody
        self._drain()
        return self.kept


def _rgb(frame) -> np.ndarray:
    return frame.reformat(format="rgb24").to_ndarray()


class VideoDecoder:
    """Exact frames of one video, by frame number (`frames_at`) or by time (`frames_played_at`).

    Opening it reads the index (`index`: frame count, key frames, timestamps), which costs one pass
    over the file's packets and no decoding. Each request then decodes only what its frames need (see
    the module docstring). `threads`: FFmpeg decoder threads (0: FFmpeg's choice, about one per core).
    Use it as a context manager, or call `close()`; it is not safe to share between threads.

    Raises DecodeError "<path>: <reason>" when the file is missing, a folder, empty, not a video, or
    holds no video stream.
    """

    def __init__(self, path, *, threads: int = 1):
        if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) or threads < 0:
            raise ConfigError(f"threads must be a whole number, 0 (FFmpeg's choice) or more, got {threads!r}")
        threads = int(threads)
        self.path = os.fspath(path)
        try:
            self._container, self._stream = _open(self.path, threads)
        except DecodeError as error:
            raise _failure(self.path, str(error)) from None
        try:
            self._index = _index(self._container, self._stream)
        except BaseException:
            self._container.close()
            raise
        self._keys = self._index.pts[self._index.key_frames].tolist()

    @property
    def index(self) -> VideoIndex:
        return self._index

    def frames_at(self, indices) -> Frames:
        """The frames with these numbers (0 is the first shown; -1 the last), in the order asked.

        Any order and repeats are fine: each distinct frame is decoded once, in file order. Raises
        IndexError naming the frame count for a number outside [-frame_count, frame_count), and
        DecodeError when a frame the index lists does not decode (damaged or cut data)."""
        positions = self._positions(indices)
        wanted = [int(stamp) for stamp in self._index.pts[positions]]
        try:
            kept = self._kept(wanted, _rgb)
        except av.error.FFmpegError as error:
            raise _failure(self.path, f"the decoder failed: {error}") from None
        missing = sorted({int(p) for p, stamp in zip(positions, wanted) if stamp not in kept})
        if missing:
            count = self._index.frame_count
            raise _failure(self.path, f"frame(s) {missing} of its {count} did not decode (damaged or cut data)")
        if not wanted:
            height, width = self._stream.codec_context.height, self._stream.codec_context.width
            return Frames(np.empty((0, height, width, 3), np.uint8), positions, np.empty(0))
        return Frames(np.stack([kept[stamp] for stamp in wanted]), positions, self._index.seconds[positions])

    def frames_played_at(self, seconds) -> Frames:
        """The frame shown at each time (seconds from the first frame, as in `index.seconds`): the last
        one that starts at or before it. A time must lie in [0, index.duration), else IndexError."""
        times = np.atleast_1d(np.asarray(seconds, np.float64))
        duration = self._index.duration
        outside = ~((times >= 0) & (times < duration))  # NaN included
        if outside.any():
            raise IndexError(f"{times[outside][0]:g} s is outside {self.path}: "
                             f"its frames are shown from 0 to {duration:g} s")
        slack = self._index.time_base / 2  # timestamps are rounded to the time base
        return self.frames_at(sampling.at_or_before(self._index.seconds, times, slack))

    def _positions(self, indices) -> np.ndarray:
        self._check_open()
        asked = np.atleast_1d(np.asarray(indices))
        if asked.size and not np.issubdtype(asked.dtype, np.integer):
            raise TypeError(f"frame numbers must be integers, got {asked.dtype} values")
        asked = asked.astype(np.int64).reshape(-1)
        count = self._index.frame_count
        outside = (asked < -count) | (asked >= count)
        if outside.any():
            raise IndexError(f"frame {asked[outside][0]} is out of range: "
                             f"{self.path} holds {count} frames (0 to {count - 1})")
        return np.where(asked < 0, asked + count, asked)

    def _kept(self, wanted: list, convert: Callable, *, keyframes_only: bool = False, seek: bool = True) -> dict:
        """{pts: convert(frame)} for every wanted pts that decodes. With `seek`, a frame a seek missed
        is looked for again by decoding forward from the start."""
        self._check_open()
        if not wanted:
            return {}
        first = int(self._index.pts[0])
        decoder = _SparseDecoder(self._container, self._stream, first, self._keys, convert, keyframes_only)
        kept = decoder.decode(wanted, seek=seek)
        if seek and len(kept) < len(set(wanted)):
            kept = decoder.decode(wanted, seek=False)
        return kept

    def _check_open(self) -> None:
        if self._container is None:
            raise ValueError(f"the VideoDecoder of {self.path} is closed")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoDecoder({self.path!r}, {self._index.frame_count} frames)"


def _failure(path: str, reason: str) -> DecodeError:
    """A DecodeError that names the video; `reason` alone is what the build records beside the path."""
    error = DecodeError(f"{path}: {reason}")
    error.reason = reason
    return error
