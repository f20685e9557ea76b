"""Frame-exact decoding, proven by frames that carry their own index (tests/stamped.py).

The expected frame numbers are computed here from the documented rules and the frame times the test
wrote; the decoded pixels must carry exactly those numbers."""
import math

import numpy as np
import pytest
from stamped import BFRAMES, OPEN_GOP, read_stamp, write_opencv, write_pyav

from dancedata import decode
from dancedata.config import SamplingConfig
from dancedata.errors import DecodeError

SIZE = 64
COUNT = 150
MODES = {
    "uniform": SamplingConfig(frames=20),
    "first": SamplingConfig(frames=20, sampling="first"),
    "stride": SamplingConfig(frames=12, sampling="stride", stride=7),
    "stride-fps": SamplingConfig(frames=40, sampling="stride", fps=10),
}


def expected_indices(mode: str, times: list) -> list:
    """The documented rules, written out from the frame times (seconds from the first frame)."""
    config, count = MODES[mode], len(times)
    if mode == "first":
        return list(range(min(config.frames, count)))
    if mode == "stride":
        return list(range(0, count, config.stride))[: config.frames]
    step = float(np.median(np.diff(times)))
    if mode == "stride-fps":
        targets = [j / config.fps for j in range(config.frames) if j / config.fps <= times[-1] + 1e-6]
    else:
        if count <= config.frames:
            return list(range(count))
        duration = times[-1] - times[0] + step
        targets = [times[0] + (k + 0.5) * duration / config.frames for k in range(config.frames)]
    chosen = []
    for target in targets:  # the last frame shown at or before each target
        index = max(i for i, t in enumerate(times) if t <= target + 1e-6)
        if index not in chosen:
            chosen.append(index)
    return chosen


def check(path, mode, times, claimed=None):
    config = MODES[mode] if isinstance(mode, str) else mode
    clip = decode.read_clip(str(path), config, SIZE)
    real = int(clip.mask.sum())
    stamps = [read_stamp(frame) for frame in clip.frames]
    assert stamps == clip.indices[:real].tolist(), (path.name, mode)  # the pixels are the frames it names
    if isinstance(mode, str):
        assert clip.indices[:real].tolist() == expected_indices(mode, times), (path.name, mode)
    assert (clip.indices[real:] == -1).all() and not clip.mask[real:].any()
    np.testing.assert_allclose(clip.times[:real], [times[i] - times[0] for i in stamps], atol=1e-3)
    if claimed is not None:
        assert clip.claimed_frames == claimed
    return clip


CONSTANT = [i / 30 for i in range(COUNT)]
VIDEOS = {
    "h264-bframes.mp4": (lambda p: write_pyav(p, COUNT, options=BFRAMES), COUNT),
    "h264-open-gop.mkv": (lambda p: write_pyav(p, COUNT, options=OPEN_GOP), 0),  # Matroska states no frame count
    "mp4v.mp4": (lambda p: write_opencv(p, COUNT, "mp4v"), COUNT),
    "mjpg.avi": (lambda p: write_opencv(p, COUNT, "MJPG"), COUNT),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stamped")
    return {name: make(folder / name) for name, (make, _) in VIDEOS.items()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", VIDEOS)
def test_every_sampling_mode_is_frame_exact(videos, name, mode):
    check(videos[name], mode, CONSTANT, claimed=VIDEOS[name][1])


def test_b_frames_are_really_there(videos):
    import av

    with av.open(str(videos["h264-bframes.mp4"])) as container:
        types = [int(frame.pict_type) for frame in container.decode(video=0)]
    assert types.count(3) > COUNT // 3 and len(types) == COUNT  # 3: AV_PICTURE_TYPE_B


def test_variable_frame_rate_is_sampled_evenly_in_time(tmp_path):
    """A phone-style clip: its first second at 125 fps, then 40 fps (times exact in milliseconds, the
    container's resolution). Uniform sampling follows time, not frame numbers (which would take more
    than half the samples from the first second)."""
    times = [i * 0.008 for i in range(125)] + [1 + i * 0.025 for i in range(120)]
    path = write_pyav(tmp_path / "vfr.mp4", len(times), times=times, options=BFRAMES)
    clip = check(path, "uniform", times)
    assert sum(t < 1 for t in clip.times[clip.mask]) <= 6  # 1 s of a 4 s clip: about a quarter of 20, not 10
    check(path, "stride-fps", times)


def test_a_stream_that_starts_late_is_timed_from_its_first_frame(tmp_path):
    times = [2.5 + i * 0.025 for i in range(90)]
    path = write_pyav(tmp_path / "offset.mp4", len(times), times=times, options=BFRAMES)
    clip = check(path, "uniform", times)
    assert clip.times[0] == pytest.approx(times[clip.indices[0]] - 2.5, abs=1e-3)
    check(path, "first", times)


def test_a_truncated_file_yields_frames_it_really_holds(tmp_path):
    """An AVI cut at 60 %: the header claims 150 frames; the stream holds fewer, and uniform sampling
    spreads over those (today's OpenCV path kept 3 real frames of 20 from such files)."""
    full = write_opencv(tmp_path / "full.avi", COUNT, "MJPG")
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    clip = decode.read_clip(str(cut), MODES["uniform"], SIZE)
    assert clip.mask.all() and clip.claimed_frames == COUNT and clip.truncated
    held = clip.decoded_frames
    assert 60 < held < 100
    stamps = [read_stamp(frame) for frame in clip.frames]
    assert stamps == clip.indices.tolist() == expected_indices("uniform", CONSTANT[:held])
    keyframes = decode.read_clip(str(cut), SamplingConfig(frames=20, keyframes=True), SIZE)
    assert keyframes.mask.all() and [read_stamp(f) for f in keyframes.frames] == keyframes.indices.tolist()


def test_key_frame_mode_decodes_exactly_the_key_frames_it_names(videos):
    clip = decode.read_clip(str(videos["h264-bframes.mp4"]), SamplingConfig(frames=5, keyframes=True), SIZE)
    keys = list(range(0, COUNT, 24))  # g=24 without scene cuts
    picked = [keys[math.floor((j + 0.5) * len(keys) / 5)] for j in range(5)]
    assert [read_stamp(frame) for frame in clip.frames] == clip.indices.tolist() == picked


@pytest.mark.parametrize("codec, pix_fmt, suffix", [
    ("libx265", "yuv420p", ".mp4"),
    ("libx265", "yuv420p10le", ".mkv"),  # 10-bit
    ("libvpx-vp9", "yuv420p", ".webm"),
    ("libsvtav1", "yuv420p", ".mkv"),
])
def test_other_codecs_decode_exactly(tmp_path, codec, pix_fmt, suffix):
    path = write_pyav(tmp_path / f"{codec}-{pix_fmt}{suffix}", 40, codec=codec, pix_fmt=pix_fmt,
                      options={"crf": "20"} if codec != "libvpx-vp9" else {"crf": "20", "b": "0"})
    for mode in ("uniform", "first"):
        check(path, mode, CONSTANT[:40])


def test_failures_are_one_plain_sentence_in_every_mode(tmp_path):
    import av

    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 44100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (tmp_path / "page.mp4").write_text("<html>504 Gateway Time-out</html>")
    (tmp_path / "empty.mp4").write_bytes(b"")
    expected = {
        "audio.m4a": "holds no video stream (audio or data only)",
        "page.mp4": decode.UNOPENABLE,
        "empty.mp4": "empty file (0 bytes)",
    }
    for name, reason in expected.items():
        for config in (SamplingConfig(frames=8), SamplingConfig(frames=8, keyframes=True)):
            with pytest.raises(DecodeError) as caught:
                decode.read_clip(str(tmp_path / name), config, SIZE)
            assert str(caught.value) == reason
