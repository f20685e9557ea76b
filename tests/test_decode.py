import numpy as np
import pytest
from conftest import write_truncated_avi, write_video

from dancedata import decode
from dancedata.config import SamplingConfig
from dancedata.errors import DecodeError


def test_reads_only_the_sampled_frames_at_the_output_size(tmp_path):
    path = write_video(tmp_path / "v.mp4", frames=30, size=(48, 64))
    clip = decode.read_clip(str(path), SamplingConfig(frames=5), size=32)
    assert clip.frames.shape == (5, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.indices.tolist() == [3, 9, 15, 21, 27]
    assert clip.mask.all() and clip.claimed_frames == 30


def test_frames_are_the_right_ones_in_rgb(tmp_path):
    """Frame i is solid colour i*8 in blue (BGR), so the decoded RGB blue channel tells its index."""
    import cv2

    path = tmp_path / "ramp.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (32, 32))
    for i in range(20):
        writer.write(np.dstack([np.full((32, 32), i * 8, np.uint8), np.zeros((32, 32, 2), np.uint8)]))
    writer.release()
    clip = decode.read_clip(str(path), SamplingConfig(frames=4, sampling="stride", stride=5), size=16)
    assert clip.indices.tolist() == [0, 5, 10, 15]
    blue = clip.frames[..., 2].mean(axis=(1, 2))
    assert np.allclose(blue, [0, 40, 80, 120], atol=3)
    assert clip.frames[..., 0].max() < 5  # red stays empty: BGR was converted


def test_truncated_file_yields_the_frames_it_has(tmp_path):
    path = write_truncated_avi(tmp_path / "cut.avi", frames=40, keep=0.5)
    clip = decode.read_clip(str(path), SamplingConfig(frames=40, sampling="first"), size=16)
    assert clip.claimed_frames == 40
    real = int(clip.mask.sum())
    assert 0 < real < 40 and len(clip.frames) == real
    assert clip.indices[:real].tolist() == list(range(real)) and (clip.indices[real:] == -1).all()
    assert clip.mask.tolist() == [True] * real + [False] * (40 - real)


def test_uniform_on_a_truncated_file_spreads_over_the_frames_it_holds(tmp_path):
    path = write_truncated_avi(tmp_path / "cut.avi", frames=40, keep=0.5)
    clip = decode.read_clip(str(path), SamplingConfig(frames=10), size=16)
    assert clip.mask.all() and clip.truncated and clip.claimed_frames == 40
    assert clip.indices.max() < clip.decoded_frames < 40


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"definitely not a video" * 50, "cannot be opened as a video")],
)
def test_unreadable_files_raise_decode_error_with_reason(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode.read_clip(str(path), SamplingConfig(), size=32)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="file not found"):
        decode.read_clip(str(tmp_path / "nope.mp4"), SamplingConfig(), size=32)


def test_centre_square_crop():
    import av

    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, 20:60] = 255  # the centre square of a 40x80 frame
    square = decode.frame_to_square(av.VideoFrame.from_ndarray(frame, format="rgb24"), 10)
    assert square.shape == (10, 10, 3) and square.min() == 255


def test_keyframes_mode_decodes_only_key_frames(tmp_path):
    import av

    path = write_video(tmp_path / "v.mp4", frames=90, size=(48, 64))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys = sorted(round(float(p.pts * p.time_base) * 30) for p in container.demux(stream) if p.is_keyframe and p.pts is not None)
    assert 2 < len(keys) < 90
    clip = decode.read_clip(str(path), SamplingConfig(frames=len(keys) + 2, keyframes=True), size=32)
    assert clip.indices[clip.mask].tolist() == keys and clip.frames.shape == (len(keys), 32, 32, 3)
    assert clip.mask.tolist() == [True] * len(keys) + [False] * 2
    spread = decode.read_clip(str(path), SamplingConfig(frames=2, keyframes=True), size=32)
    assert set(spread.indices.tolist()) <= set(keys) and spread.mask.all()
    first = decode.read_clip(str(path), SamplingConfig(frames=2, sampling="first", keyframes=True), size=32)
    assert first.indices.tolist() == keys[:2]
    # the same frame through the OpenCV path looks the same (same crop, close resize)
    exact = decode.read_clip(str(path), SamplingConfig(frames=1, sampling="first"), size=32)
    assert np.abs(first.frames[0].astype(int) - exact.frames[0].astype(int)).mean() < 12


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"<html>504</html>" * 20, "cannot be opened as a video")])
def test_keyframes_mode_reports_bad_files_like_the_default_path(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode.read_clip(str(path), SamplingConfig(keyframes=True), size=32)


def explodes(path, config, size):
    """A decoder for the worker below (imported there by name): FFmpeg and OpenCV raise assorted types."""
    raise RuntimeError("avcodec exploded")


def test_any_decoder_failure_becomes_a_recorded_reason():
    from dancedata.decode_pool import DecodePool

    with DecodePool(1, SamplingConfig(), 32, timeout=60, decoder="test_decode:explodes") as pool:
        [(row, error)] = list(pool.imap([{"path": "x.mp4"}]))
    assert row == {"path": "x.mp4"} and isinstance(error, DecodeError)
    assert str(error) == "RuntimeError: avcodec exploded"
