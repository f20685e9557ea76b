"""What a user sees first, through the real commands: `dancedata sample` never overwrites, usage lines
name what was typed, a build's output holds nothing stray (no empty progress bar, no empty shard of kept
frames, a cut download listed as truncated), an offline weight download ends in our one line, the
library's TensorFlow ops stay quiet in a notebook, and predict finds a folder's videos as build does."""
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import cli_env

from dancedata import sample

DANCEDATA = os.path.join(os.path.dirname(sys.executable), "dancedata")  # installed with the package
SMALL = ["--genres", "BR,PO", "--dancers", "2", "--choreographies", "1", "--cameras", "2", "--seconds", "1",
         "--width", "128", "--height", "96"]
BUILD = ["--frames", "8", "--backbone", "ResNet50", "--weights", "none", "--image-size", "32", "--batch-size", "8"]
TF_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog", re.M)  # TensorFlow's C++ log lines


def run(*args, env=None, cwd=None):
    return subprocess.run(list(args), capture_output=True, text=True, env=env or cli_env(), cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small sample and its build with kept PNG frames and shards far smaller than one example, as a user
    runs them (progress bar on)."""
    base = tmp_path_factory.mktemp("entry")
    made = run(DANCEDATA, "sample", str(base / "sample"), *SMALL)
    assert made.returncode == 0, made.stderr
    done = run(DANCEDATA, "build", str(base / "sample"), "--out", str(base / "shards"), *BUILD, "--keep-frames", "png",
               "--shard-mb", "0.01")
    assert done.returncode == 0, done.stderr
    return {"base": base, "build": done}


def test_sample_refuses_a_folder_that_holds_files_unless_told_to_overwrite(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "gBR_sBM_c01_d01_mBR0_ch01.mp4").write_bytes(b"a real download")
    (folder / "notes.txt").write_text("mine")
    refused = run(DANCEDATA, "sample", str(folder), *SMALL)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"dancedata sample: error: {folder} already holds 2 file(s) (e.g. gBR_sBM_c01_d01_mBR0_ch01.mp4): the sample is "
        "written into an empty or new folder; choose another, or pass --overwrite to delete them first"]
    assert (folder / "gBR_sBM_c01_d01_mBR0_ch01.mp4").read_bytes() == b"a real download"
    assert (folder / "notes.txt").read_text() == "mine"

    first = run(DANCEDATA, "sample", str(folder), *SMALL, "--overwrite")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"deleted the 2 file(s) {folder} held (gBR_sBM_c01_d01_mBR0_ch01.mp4, notes.txt), "
                                   "as --overwrite asks\nwrote 8 videos")
    assert (folder / "gBR_sBM_c01_d01_mBR0_ch01.mp4").read_bytes()[4:8] == b"ftyp"  # the sample's clip now

    # A second sample with other options: refused, or (--overwrite) alone in the folder, so no dancer number
    # belongs to dancers of two genres.
    again = run(DANCEDATA, "sample", str(folder), *SMALL[:1], "PO,BR", *SMALL[2:])
    assert again.returncode == 2 and "already holds 12 file(s)" in again.stderr
    again = run(DANCEDATA, "sample", str(folder), *SMALL[:1], "PO,BR", *SMALL[2:], "--overwrite")
    assert again.returncode == 0, again.stderr
    genres_of = {}
    for name in os.listdir(folder):
        found = re.match(r"g(\w\w)_s\w\w_c\d\d_(d\d\d)_", name)
        if found:
            genres_of.setdefault(found.group(2), set()).add(found.group(1))
    assert genres_of and all(len(genres) == 1 for genres in genres_of.values()), genres_of
    assert genres_of["d01"] == {"PO"}

    (folder / "kept").mkdir()
    refused = run(DANCEDATA, "sample", str(folder), *SMALL, "--overwrite")
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        f"dancedata sample: error: {folder} holds a folder (kept/): --overwrite deletes files only, never folders; "
        "remove it or choose another folder"]
    assert len(os.listdir(folder)) == 13  # nothing deleted


def test_usage_lines_name_the_program_the_user_typed(tmp_path):
    helped = run(DANCEDATA, "sample", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: dancedata sample ")
    helped = run(DANCEDATA, "train", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: dancedata train ")
    helped = run(DANCEDATA, "data-service", "worker", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: dancedata data-service worker ")
    wrong = run(DANCEDATA, "sample")
    assert wrong.stderr == "dancedata sample: error: the following arguments are required: out\n"
    wrong = run(sys.executable, "-m", "dancedata", "sample")
    assert wrong.stderr == "python -m dancedata sample: error: the following arguments are required: out\n"
    wrong = run(sys.executable, "-m", "dancedata.sample")
    assert wrong.stderr == "python -m dancedata.sample: error: the following arguments are required: out\n"
    wrong = run(sys.executable, "-m", "dancedata", "nope")
    assert wrong.stderr.startswith("python -m dancedata: error: unknown command 'nope'")


def test_a_build_shows_one_progress_bar_with_its_total(built):
    err = built["build"].stderr  # text mode: the bar's carriage returns read as line ends
    bars = [line for line in err.splitlines() if "video/s]" in line]
    assert not re.search(r"(^|\s)0video \[", err) and re.match(r"^ *0%\|.*\| 0/10 \[", bars[0]), err  # first drawn with its total
    assert not TF_LINE.search(err), err


def test_kept_frames_in_small_shards_make_no_empty_shard(built):
    manifest = json.loads((built["base"] / "shards" / "manifest.json").read_text())
    shards = [shard for split in manifest["splits"].values() for shard in split["shards"]]
    failed = [entry for entry in manifest["skipped"] if entry["path"].endswith("_ch09.mp4")]  # the error page
    assert len(failed) == 1
    # Every example is larger than --shard-mb: one a shard, and an empty shard only where its one video failed.
    assert all(shard["num_examples"] == 1 for shard in shards if shard["num_examples"])
    assert sum(1 for shard in shards if not shard["num_examples"]) <= len(failed)
    assert sum(shard["num_examples"] for shard in shards) == 9  # 8 clips and the cut one


def test_the_cut_download_is_listed_as_truncated(built):
    shown = run(DANCEDATA, "inspect", str(built["base"] / "shards"))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("truncated: ")))
    assert lines[at] == "truncated: 1 video(s) whose stream ended before a sampled frame"
    assert re.match(r"^ +\S+/gBR_sBM_c01_d05_mBR0_ch09\.mp4 \(claims 30 frames, \d+ kept\)$", lines[at + 1]), lines[at + 1]
    assert "gBR_sBM_c01_d05_mBR0_ch09" not in "\n".join(lines[:at])  # not among the skipped


def test_a_cut_mp4_without_its_index_is_reported_truncated(tmp_path):
    import numpy as np

    from dancedata import decode
    from dancedata.config import SamplingConfig
    from dancedata.errors import DecodeError

    path = str(tmp_path / "cut.mp4")
    sample.write_clip(path, (np.full((64, 64, 3), 8 * i, np.uint8) for i in range(30)))  # index (moov) at the end
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(DecodeError, match=r"^truncated: "):
        decode.read_clip(path, SamplingConfig(frames=8), 32)
    page = tmp_path / "page.mp4"
    page.write_text("<html><body>504 Gateway Time-out</body></html>\n")
    with pytest.raises(DecodeError, match=r"^cannot be opened as a video"):
        decode.read_clip(str(page), SamplingConfig(frames=8), 32)


def test_an_offline_weight_download_says_one_line_and_prints_nothing_on_stdout(built, tmp_path):
    keras_home = tmp_path / "keras"
    keras_home.mkdir()
    closed = "http://127.0.0.1:9"  # nothing listens: the download fails at once, as offline
    env = cli_env(KERAS_HOME=str(keras_home), https_proxy=closed, HTTPS_PROXY=closed, http_proxy=closed, HTTP_PROXY=closed)
    done = run(DANCEDATA, "build", str(built["base"] / "sample"), "--out", str(tmp_path / "out"),
               *[flag if flag != "none" else "imagenet" for flag in BUILD], env=env)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dancedata build: error: cannot load ImageNet weights for ResNet50 ("), lines


def test_the_library_keeps_tensorflow_quiet_in_a_notebook(built):
    script = ("import dancedata\n"
              f"builder = dancedata.DatasetBuilder({str(built['base'] / 'shards')!r})\n"
              "next(iter(builder.as_dataset('train', batch_size=1)))\n"
              "config = dancedata.ExampleConfig(with_metadata=True)\n"  # streamed: TFRecordDataset
              "next(iter(builder.as_dataset('train', batch_size=1, example_config=config)))\n"
              "print('read')\n")
    env = {key: value for key, value in cli_env().items() if key != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's kernel has it
    done = run(sys.executable, "-c", script, env=env)
    assert done.returncode == 0 and done.stdout == "read\n", done.stderr
    assert not TF_LINE.search(done.stderr), done.stderr


def test_predict_takes_a_folders_videos_as_build_does(tmp_path):
    from dancedata import predict

    for name in ("a.mp4", ".partial.mp4", "sub/b.MP4", ".cache/c.mp4", "sub/.d.mp4", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert predict.expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.mp4"), str(tmp_path / "sub" / "b.MP4")]


PEEK_AND_END = """
import sys
import dancedata
from dancedata import ReadConfig
if sys.argv[2] == "unprotected":  # as it was: nothing released at exit
    from dancedata import pipelines
    pipelines._release_registered = True
builder = dancedata.DatasetBuilder(sys.argv[1])
kept = []  # iterators still reading ahead when the script ends
for batch_size in range(1, 9):
    read = ReadConfig(shuffle=True, repeat=True)
    kept.append(iter(builder.as_dataset("train", batch_size=batch_size, read_config=read)))
next(kept[-1])
print("peeked")
"""


def test_a_script_that_ends_with_half_read_iterators_exits(built, tmp_path):
    # A plain script that peeks at the default reader and ends: its iterators, still reading ahead, are destroyed
    # at exit. They were destroyed in the interpreter's teardown, when tf.data's threads could no longer enter
    # Python for the mapped reader's gather, and the process hung: this script, "unprotected", hung in 3 runs of 8
    # (so five runs catch it 9 times in 10; an AIST-sized epoch hung 3 runs in 4). Now they are released before
    # the teardown (pipelines.release_iterators_at_exit). A hang here ends in the per-test timeout.
    script = tmp_path / "peek.py"
    script.write_text(PEEK_AND_END)
    for _ in range(5):
        done = run(sys.executable, str(script), str(built["base"] / "shards"), "protected")
        assert done.returncode == 0 and done.stdout == "peeked\n", done.stderr
