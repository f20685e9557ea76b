"""The README's Quick start, run line by line in an empty folder, offline: the landing page cannot drift
from the program. The sample it makes is checked on its own too: real H.264 with B-frames, AIST names,
deterministic pixels for a seed, and the awkward files a real folder holds."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_lines() -> list:
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    section = readme[readme.index("## Quick start"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.timeout(1800)  # the slowest test: six commands, a build and a training run (4.5 min on 2 busy cores)
def test_the_readme_quick_start_runs_word_for_word(tmp_path):
    setup, *steps = quickstart_lines()
    # The set-up line is what .ci/run does before the tests: this environment is its result.
    assert setup.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e .")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # the activated environment
    said = {}
    for line in steps:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-3000:])
        said[line.split()[1]] = said.get(line.split()[1], "") + done.stdout + done.stderr
    assert re.search(r"^test accuracy: \d\.\d{4}$", said["train"], re.M), said["train"][-2000:]
    assert re.search(r"sample/gPO_sBM_c01_d04_mPO0_ch01\.mp4", said["predict"]), said["predict"]
    assert (tmp_path / "preview.png").stat().st_size > 1000
    assert "skipped: 3 file(s)" in said["inspect"]  # the awkward files, each with its reason
    assert "truncated: 1 video(s)" in said["inspect"]  # the download cut short: its first frames are kept
    noise = [line for text in said.values() for line in text.splitlines() if line[:5] in ("E0000", "W0000", "I0000")]
    assert not noise, noise


def test_the_sample_is_real_h264_with_b_frames_and_deterministic(tmp_path):
    import av

    from dancedata import naming, sample

    cfg = sample.SampleConfig(genres="BR,PO", dancers=2, choreographies=1, cameras=2, seconds=1.0, width=320, height=180)
    made = sample.make_sample(str(tmp_path / "a"), cfg)
    assert len(made["videos"]) == 2 * 2 * 1 * 2
    for name in made["videos"]:
        naming.parse_aist_name(name[:-4])
    first = str(tmp_path / "a" / made["videos"][0])
    with av.open(first) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 30
        pictures = {getattr(frame.pict_type, "name", frame.pict_type) for frame in container.decode(video=0)}
    assert pictures & {"B", 3}, pictures  # AV_PICTURE_TYPE_B (PyAV gives the enum or its value)
    again = sample.make_sample(str(tmp_path / "b"), cfg)
    for name in again["videos"]:
        frames = [[f.to_ndarray(format="rgb24") for f in av.open(str(tmp_path / folder / name)).decode(video=0)]
                  for folder in ("a", "b")]
        np.testing.assert_array_equal(np.stack(frames[0]), np.stack(frames[1]))
    with pytest.raises(dancedata_config_error()):
        sample.SampleConfig(genres="XX")


def dancedata_config_error():
    from dancedata.errors import ConfigError

    return ConfigError
