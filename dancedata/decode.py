"""Decode exactly the sampled frames of a video, at a cost that does not grow with its length.

1. Index: the video stream's packets are demuxed without decoding. Their timestamps give every
   frame's presentation time (variable frame rate included) and the true frame count, whatever the
   container's header claims; their key-frame flags say where decoding can start.
2. Pick: the sampling rule chooses frames from that index (`sampling.pick`, a pure function).
3. Decode: for each wanted frame, seek to the key frame before it when that lies beyond the next key
   frame, else decode forward. Packets of frames nobody wants are decoded with skip_frame=NONREF:
   pictures that no other picture references are never reconstructed, which is exact. (BIDIR,
   NONINTRA and skip_loop_filter are lossy and never used.) Every kept frame is identified by its
   timestamp, never by counting, and a wanted frame that a seek missed is found by decoding forward
   from the start instead.
4. Keep: wanted frames are converted to RGB, centre-cropped to a square and resized; nothing else is
   kept, so memory is T frames at the output size however long the video is.

`--keyframes` indexes the same way and decodes only the chosen key frames (skip_frame=NONKEY).
"""
from __future__ import annotations

import bisect
import dataclasses
import os

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dancedata import sampling  # noqa: E402
from dancedata.config import SamplingConfig  # noqa: E402
from dancedata.errors import DecodeError  # noqa: E402


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


def to_square(frame_rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop, resized to size x size (area averaging when shrinking)."""
    height, width = frame_rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame_rgb[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


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


def to_square_rgb(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop, resize, BGR -> RGB (for frames read with OpenCV)."""
    return cv2.cvtColor(to_square(frame_bgr, size), cv2.COLOR_BGR2RGB)


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


@dataclasses.dataclass
class Index:
    """Every frame of a video stream, from its packets: presentation timestamps in stream time base."""

    pts: np.ndarray  # [N] int64, increasing: frame i is the i-th picture shown
    keys: list  # pts of key frames, increasing
    seconds: np.ndarray  # [N] float64, from the first frame
    complete: bool  # False when demuxing stopped at damaged data
    tick: float = 0.0  # seconds per timestamp unit: the resolution of `seconds`


def index(container, stream) -> Index:
    """Demuxes the stream's packets (reads the file, decodes nothing)."""
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
    if len(unique) == 0:
        return Index(unique, [], np.empty(0), complete)
    base = float(stream.time_base)
    return Index(unique, sorted(set(keys)), (unique - unique[0]) * base, complete, base)


class _Decoder:
    """Decodes frames by timestamp: seeking where that skips whole groups of pictures, and skipping
    non-reference pictures nobody asked for."""

    def __init__(self, container, stream, idx: Index, size: int, keyframes_only: bool = False):
        self.container, self.stream, self.idx, self.size = container, stream, idx, size
        self.codec = stream.codec_context
        self.keyframes_only = keyframes_only
        self.kept: dict = {}

    def _key_before(self, stamp: int):
        position = bisect.bisect_right(self.idx.keys, stamp) - 1
        return self.idx.keys[position] if position >= 0 else None

    def _seek(self, key) -> None:
        self._drain()
        try:
            self.container.seek(int(key if key is not None else self.idx.pts[0]), stream=self.stream, backward=True)
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
            self.kept[stamp] = frame_to_square(frame, self.size)

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
                current_key, skipping = stamp, False
            if not unsent:
                break
            if skipping or stamp is None:
                continue
            first_unsent = min(unsent)
            target_key = key_of[first_unsent]
            if seek and current_key is not None and target_key is not None:
                later = bisect.bisect_right(self.idx.keys, current_key)
                next_key = self.idx.keys[later] if later < len(self.idx.keys) else None
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
            if unsent and current_key is not None and key_of[min(unsent)] is not None and key_of[min(unsent)] > current_key:
                skipping = True  # every wanted frame of this group is sent: its tail is needed by nobody
        self._drain()
        return self.kept


def _open(path: str):
    _check_file(path)
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        raise DecodeError(UNOPENABLE) from None
    if not container.streams.video:
        container.close()
        raise DecodeError("holds no video stream (audio or data only)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = _threads
    return container, stream


def read_clip(path: str, config: SamplingConfig, size: int) -> Clip:
    """Decodes exactly the frames `config` samples from `path` (see the module docstring).

    A container may over-state or omit its frame count: the index from its packets decides, so a
    video with at least T decodable frames yields T real frames. Raises DecodeError, with one plain
    sentence, when not a single frame can be decoded.
    """
    container, stream = _open(path)
    try:
        claimed = int(stream.frames or 0)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        idx = index(container, stream)
        if config.keyframes:
            keys = np.searchsorted(idx.pts, np.asarray(idx.keys, np.int64))
            seconds = idx.seconds[keys] if len(keys) else np.empty(0)
            chosen, mask = sampling.pick(config, seconds, idx.tick)
            positions = keys[chosen[mask]] if len(keys) else np.empty(0, np.int64)
        else:
            chosen, mask = sampling.pick(config, idx.seconds, idx.tick)
            positions = chosen[mask]
        if not len(positions):
            raise DecodeError(f"no frame could be decoded (container claims {claimed} frames)")
        wanted = [int(idx.pts[p]) for p in positions]
        decoder = _Decoder(container, stream, idx, size, keyframes_only=config.keyframes)
        try:
            kept = decoder.decode(wanted)
            if len(kept) < len(wanted):  # a seek landed past a wanted frame: find it by decoding forward
                kept = decoder.decode(wanted, seek=False)
            missing = [stamp for stamp in wanted if stamp not in kept]
            if missing and kept and min(missing) > max(kept) and not config.keyframes:
                # The last packets do not decode (a cut file): sample again from the frames before them.
                idx = Index(idx.pts[idx.pts < min(missing)], idx.keys, idx.seconds[idx.pts < min(missing)], False, idx.tick)
                chosen, mask = sampling.pick(config, idx.seconds, idx.tick)
                positions = chosen[mask]
                wanted = [int(idx.pts[p]) for p in positions]
                kept = _Decoder(container, stream, idx, size).decode(wanted, seek=False)
        except av.error.FFmpegError as error:
            raise DecodeError(f"the decoder failed: {error}") from None
    finally:
        container.close()
    if not kept:
        raise DecodeError(f"no frame could be decoded (container claims {claimed} frames)")
    present = [k for k, stamp in enumerate(wanted) if stamp in kept]
    real = len(present)
    indices = np.full(config.frames, -1, np.int64)
    indices[:real] = np.asarray(positions)[present]
    times = np.full(config.frames, -1.0, np.float32)
    times[:real] = idx.seconds[indices[:real]]
    mask = np.zeros(config.frames, bool)
    mask[:real] = True
    frames = np.stack([kept[wanted[k]] for k in present])
    truncated = real < len(wanted) or not idx.complete or (claimed > len(idx.pts))
    return Clip(frames, indices, mask, claimed, fps, times, int(len(idx.pts)), bool(truncated))


def read_clip_or_error(path: str, config: SamplingConfig, size: int):
    """read_clip, but a failure of the video comes back as a DecodeError value (for predict, which
    decodes in-process). Configuration and machine errors still raise."""
    from dancedata.decode_pool import is_environment_failure
    from dancedata.errors import ConfigError

    try:
        return read_clip(path, config, size)
    except ConfigError:
        raise
    except DecodeError as error:
        return error
    except Exception as error:  # noqa: BLE001 - FFmpeg and OpenCV raise assorted types on damaged files
        if is_environment_failure(error):
            raise
        return DecodeError(f"{type(error).__name__}: {error}")
