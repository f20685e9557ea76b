"""The `dancedata` console command runs the same tools as the `python -m` forms."""
import os
import subprocess
import sys

from conftest import BUILD_FLAGS, SMALL_SHARDS, build_outputs, cli_env, make_aist_folder

import dancedata

DANCEDATA = os.path.join(os.path.dirname(sys.executable), "dancedata")  # installed with the package


def run(*args):
    return subprocess.run([DANCEDATA, *args], capture_output=True, text=True, env=cli_env(), timeout=600, cwd="/")


def test_build_and_inspect_through_the_console_command(tmp_path):
    videos = tmp_path / "aist"
    make_aist_folder(videos, performances=2, cameras=1)
    reference = tmp_path / "reference"
    dancedata.build_shards(str(videos), str(reference), **SMALL_SHARDS)
    done = run("build", str(videos), "--out", str(tmp_path / "out"), *BUILD_FLAGS)
    assert done.returncode == 0, done.stderr
    assert build_outputs(tmp_path / "out") == build_outputs(reference)
    done = run("inspect", str(tmp_path / "out"))
    assert done.returncode == 0 and "examples: [8 frames x 2048] float16" in done.stdout


def test_console_usage_and_mistakes():
    done = run()
    assert done.returncode == 2 and "build" in done.stdout and "data-service" in done.stdout
    done = run("nope")
    assert done.returncode == 2 and done.stderr.strip() == (
        "dancedata: error: unknown command 'nope'; one of build, inspect, train, predict, download, sample, data-service")
    done = run("train", "--shards", "/nowhere")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("dancedata train: error: no manifest.json in /nowhere")
