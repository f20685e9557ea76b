"""The public decoder, proven by frames that carry their own index (tests/stamped.py): the test, not
the decoder, says which frame is which, and PyAV decoding every frame says what the index must hold."""
import gc
import math
import os

import av
import numpy as np
import pytest
from stamped import BFRAMES, HEIGHT, LEFT, OPEN_GOP, WIDTH, read_stamp, write_opencv, write_pyav

from dancedata.errors import ConfigError, DecodeError
from dancedata.video_decoder import Frames, VideoDecoder

COUNT, FPS, KEY_INTERVAL = 150, 30, 24  # BFRAMES: a key frame every 24 frames, no scene cuts


def stamps(frames: Frames) -> list:
    """The numbers stamped into full-size frames (read from their centre squares)."""
    return [read_stamp(frame[:, LEFT : LEFT + HEIGHT]) for frame in frames.data]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stamped")
    return {
        "bframes": write_pyav(folder / "bframes.mp4", COUNT, options=BFRAMES),
        "open-gop": write_pyav(folder / "open-gop.mkv", COUNT, options=OPEN_GOP),
        "mjpg": write_opencv(folder / "mjpg.avi", COUNT, "MJPG"),
    }


def decode_everything(path) -> list:
    """(pts, key frame?) of every frame PyAV's plain decoder yields, in presentation order."""
    with av.open(str(path)) as container:
        return sorted((frame.pts, bool(frame.key_frame)) for frame in container.decode(video=0))


@pytest.mark.parametrize("name", ["bframes", "open-gop", "mjpg"])
def test_frames_at_returns_the_frames_asked_for_in_any_order(videos, name):
    rng = np.random.default_rng(0)
    requests = [
        [0], [COUNT - 1], [COUNT - 2, COUNT - 1],  # the very end, past the last key frame
        sorted(rng.choice(COUNT, 7, replace=False).tolist()),  # sparse
        rng.permutation(COUNT)[:12].tolist(),  # random order
        [140, 3, 97, 2, 141],  # backwards across groups of pictures, after the requests above moved the decoder
        list(range(COUNT)),  # every frame
    ]
    with VideoDecoder(videos[name]) as decoder:
        for asked in requests:
            frames = decoder.frames_at(asked)
            assert frames.data.shape == (len(asked), HEIGHT, WIDTH, 3) and frames.data.dtype == np.uint8  # full size
            assert stamps(frames) == asked == frames.indices.tolist()
            np.testing.assert_allclose(frames.seconds, np.asarray(asked) / FPS, atol=1e-3)


def test_repeats_and_negative_numbers(videos):
    with VideoDecoder(videos["bframes"]) as decoder:
        frames = decoder.frames_at([5, 90, 5, -1, -COUNT])
    assert stamps(frames) == [5, 90, 5, COUNT - 1, 0] == frames.indices.tolist()
    assert np.array_equal(frames.data[0], frames.data[2])
    with VideoDecoder(videos["bframes"]) as decoder:
        empty = decoder.frames_at([])
    assert empty.data.shape == (0, HEIGHT, WIDTH, 3) and empty.indices.tolist() == []


def test_frames_are_the_same_whatever_the_order_or_thread_count(videos):
    """Frame 77 decoded alone, after a seek back, among all frames, and with several threads: one picture."""
    with VideoDecoder(videos["bframes"]) as decoder:
        alone = decoder.frames_at([77]).data[0]
        decoder.frames_at([149])
        after_seek_back = decoder.frames_at([77]).data[0]
        among_all = decoder.frames_at(range(COUNT)).data[77]
    with VideoDecoder(videos["bframes"], threads=2) as decoder:
        threaded = decoder.frames_at([77]).data[0]
    with av.open(str(videos["bframes"])) as container:
        plain = [frame for frame in container.decode(video=0)]
    plain.sort(key=lambda frame: frame.pts)
    reference = plain[77].to_ndarray(format="rgb24")  # PyAV decoding every frame: the independent oracle
    for frame in (alone, after_seek_back, among_all, threaded):
        assert np.array_equal(frame, reference)


def test_frames_played_at_picks_the_frame_on_screen(videos):
    times = [0.0, 0.01, 1 / FPS, 2 / FPS - 0.002, 2.5, 4.99, 3.0, 0.5]  # Matroska's clock ticks in ms
    with VideoDecoder(videos["open-gop"]) as decoder:
        frames = decoder.frames_played_at(times)
    shown = [math.floor(t * FPS + 1e-9) for t in times]  # frame i is on screen during [i / fps, (i + 1) / fps)
    assert stamps(frames) == shown == frames.indices.tolist()


def test_frames_played_at_on_variable_frame_rate(tmp_path):
    """125 fps for a second, then 40 fps: the frame on screen is the last one that started."""
    times = [i * 0.008 for i in range(125)] + [1 + i * 0.025 for i in range(120)]
    path = write_pyav(tmp_path / "vfr.mp4", len(times), times=times, options=BFRAMES)
    asked = [0.0, 0.5, 0.999, 1.0, 1.03, 3.9, 2.0]
    with VideoDecoder(path) as decoder:
        frames = decoder.frames_played_at(asked)
        assert decoder.index.duration == pytest.approx(times[-1] + 0.025, abs=1e-3)  # the last lasts as the one before
    expected = [max(i for i, t in enumerate(times) if t <= moment + 1e-6) for moment in asked]
    assert stamps(frames) == expected == frames.indices.tolist()
    np.testing.assert_allclose(frames.seconds, [times[i] for i in expected], atol=1e-3)


def test_the_index_agrees_with_decoding_every_frame(videos):
    decoded = decode_everything(videos["bframes"])
    with VideoDecoder(videos["bframes"]) as decoder:
        index = decoder.index
    assert index.frame_count == len(decoded) == COUNT
    assert index.pts.tolist() == [pts for pts, _ in decoded]
    keys = [i for i, (_, key) in enumerate(decoded) if key]
    assert index.key_frames.tolist() == keys == list(range(0, COUNT, KEY_INTERVAL))  # what the encoder was told
    np.testing.assert_allclose(index.seconds, np.arange(COUNT) / FPS, atol=1e-3)
    assert index.fps == FPS and index.duration == pytest.approx(COUNT / FPS, abs=1e-3)
    assert index.claimed_frames == COUNT and index.complete


def test_the_index_counts_frames_a_header_does_not_state(videos):
    with VideoDecoder(videos["open-gop"]) as decoder:
        assert decoder.index.claimed_frames == 0 and decoder.index.frame_count == COUNT  # Matroska states no count


def test_a_stream_that_starts_late_is_timed_from_its_first_frame(tmp_path):
    times = [2.5 + i * 0.025 for i in range(40)]
    path = write_pyav(tmp_path / "offset.mp4", len(times), times=times, options=BFRAMES)
    with VideoDecoder(path) as decoder:
        assert decoder.index.seconds[0] == 0 and decoder.index.seconds[-1] == pytest.approx(39 * 0.025, abs=1e-3)
        assert stamps(decoder.frames_played_at([0.0, 0.5])) == [0, 20]


def test_out_of_range_requests_name_the_frame_count(videos):
    path = videos["bframes"]
    with VideoDecoder(path) as decoder:
        expected = rf"^frame {COUNT} is out of range: .*bframes.mp4 holds {COUNT} frames \(0 to {COUNT - 1}\)$"
        with pytest.raises(IndexError, match=expected):
            decoder.frames_at([3, COUNT])
        with pytest.raises(IndexError, match=rf"frame -{COUNT + 1} is out of range"):
            decoder.frames_at([-COUNT - 1])
        with pytest.raises(IndexError, match=r"^5 s is outside .*bframes.mp4: its frames are shown from 0 to 5 s$"):
            decoder.frames_played_at([1.0, 5.0])
        for bad in (-0.1, float("nan")):
            with pytest.raises(IndexError, match="is outside"):
                decoder.frames_played_at([bad])
        with pytest.raises(TypeError, match="frame numbers must be integers, got float64"):
            decoder.frames_at([1.5])


@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    ("folder", "is a folder, not a video file"),  # docs/decoding.md: DecodeError, not IsADirectoryError
    (b"", "empty file (0 bytes)"),
    (b"<html>504 Gateway Time-out</html>" * 20,
     "cannot be opened as a video (not a video file, or an unsupported codec)"),
])
def test_files_that_are_not_videos_fail_with_their_path_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DecodeError) as caught:
        VideoDecoder(path)
    assert str(caught.value) == f"{path}: {reason}"


def test_bad_thread_counts_are_refused():
    for threads in (-1, 1.5, True):
        expected = rf"threads must be a whole number, 0 \(FFmpeg's choice\) or more, got {threads!r}"
        with pytest.raises(ConfigError, match=expected):
            VideoDecoder("any.mp4", threads=threads)


def test_a_closed_decoder_says_so_and_leaks_no_file(videos):
    def open_files():
        gc.collect()  # decoders other tests dropped without closing
        return len(os.listdir("/proc/self/fd"))

    before = open_files()
    for _ in range(20):
        with VideoDecoder(videos["mjpg"]) as decoder:
            decoder.frames_at([1])
    decoder.close()  # closing twice is fine
    assert open_files() == before
    with pytest.raises(ValueError, match=r"the VideoDecoder of .*mjpg.avi is closed"):
        decoder.frames_at([1])


def test_the_build_keeps_every_sparse_frame_of_an_open_gop_video(videos):
    """Frames a group of pictures or more apart: the build used to lose those after a skipped tail
    (an open GOP's key frame is no IDR), and marked the video truncated."""
    from dancedata import decode
    from dancedata.config import SamplingConfig

    uniform = decode.read_clip(str(videos["open-gop"]), SamplingConfig(frames=3), 64)
    assert [read_stamp(f) for f in uniform.frames] == uniform.indices.tolist() == [25, 75, 125]
    assert not uniform.truncated and uniform.decoded_frames == COUNT
    keys = list(range(0, COUNT, KEY_INTERVAL))
    keyframes = decode.read_clip(str(videos["open-gop"]), SamplingConfig(frames=5, keyframes=True), 64)
    picked = [keys[math.floor((j + 0.5) * len(keys) / 5)] for j in range(5)]
    assert [read_stamp(f) for f in keyframes.frames] == keyframes.indices.tolist() == picked
