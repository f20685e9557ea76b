"""Partitioned builds: machines building their share of the plan's work units into one folder end
with the bytes of a single-machine build."""
import re
import subprocess
import sys

import pytest
from conftest import BUILD_FLAGS as FLAGS
from conftest import SMALL_SHARDS, build_outputs, cli_env, make_aist_folder

import dancedata
from dancedata import cli
from dancedata.build_shards import main as build_main


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts") / "aist"
    make_aist_folder(root, performances=4, cameras=2)
    return root


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """The single-machine build of `videos` that every partitioned build must equal, made once (tests
    only read it)."""
    out = tmp_path_factory.mktemp("parts-reference") / "reference"
    dancedata.build_shards(str(videos), str(out), **SMALL_SHARDS)
    return out


def part(videos, out, index, count, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "dancedata.build_shards", str(videos), "--out", str(out), *FLAGS,
         "--num-workers", str(count), "--worker-index", str(index), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )


def test_two_parts_at_once_equal_a_single_machine_build(videos, reference, tmp_path):
    out = tmp_path / "out"
    parts = [part(videos, out, i, 2) for i in range(2)]  # both at once, like two machines on NFS
    built = []
    for process in parts:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        built.append(int(re.search(r"\((\d+) shards built", err).group(1)))
    assert build_outputs(out) == build_outputs(reference)  # the part that finished last wrote the manifest
    shards = [name for name in build_outputs(reference) if name.endswith(".tfrecord")]
    assert len(shards) >= 6 and built == [(len(shards) + 1) // 2, len(shards) // 2]  # each its own share


def test_finalize_writes_the_manifest_and_refuses_while_parts_are_missing(videos, reference, tmp_path, capsys):
    out = tmp_path / "out"
    first = part(videos, out, 0, 3)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert "part 1 of 3 built" in err and not (out / "manifest.json").exists()
    assert cli.run(build_main, "build_shards", ["--finalize", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "shards of 2 part(s) are not built yet" in line and "--worker-index 1" in line
    for index in (1, 2):
        process = part(videos, out, index, 3)
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    assert "every part is built: writing manifest.json" in err  # the last part wrote it
    assert build_outputs(out) == build_outputs(reference)
    (out / "manifest.json").unlink()  # as if the parts had died just before it: --finalize writes it
    assert cli.run(build_main, "build_shards", ["--finalize", str(out)]) == 0
    assert build_outputs(out) == build_outputs(reference)
    assert "examples:" in capsys.readouterr().out
    (out / "manifest.json").unlink()  # machines finishing at the same moment all write the same manifest
    finalizers = [subprocess.Popen([sys.executable, "-m", "dancedata.build_shards", "--finalize", str(out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()) for _ in range(3)]
    for process in finalizers:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    assert build_outputs(out) == build_outputs(reference)


def test_a_part_that_dies_is_rerun_by_the_same_command(videos, reference, tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    dying = part(videos, out, 1, 2)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / ".build").glob("*.tfrecord.json"))) < 1:
        assert dying.poll() is None
        time.sleep(0.005)
    dying.send_signal(signal.SIGKILL)
    dying.wait()
    for index in (0, 1):  # part 0 meanwhile, then part 1 again: it resumes its own share
        process = part(videos, out, index, 2)
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    assert build_outputs(out) == build_outputs(reference)


def test_part_flags_are_checked(videos, tmp_path, capsys):
    code = cli.run(build_main, "build_shards", [str(videos), "--out", str(tmp_path / "o"), *FLAGS, "--num-workers", "2", "--worker-index", "2"])
    assert code == 2 and "worker_index must be in 0..1, got 2" in capsys.readouterr().err
    code = cli.run(build_main, "build_shards", ["--finalize", str(tmp_path / "nothing")])
    assert code == 2 and "holds no build plan" in capsys.readouterr().err
    code = cli.run(build_main, "build_shards", [str(videos), "--out", str(tmp_path / "o"), "--num-workers", "2", "--overwrite"])
    assert code == 2 and "overwrite cannot be combined with num_workers > 1" in capsys.readouterr().err
    assert cli.run(build_main, "build_shards", []) == 2
    assert "the input folder is required (or --finalize OUT" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_parts_bring_an_earlier_build_up_to_date(videos, tmp_path):
    """--update with parts running at once: unchanged videos are reused, and the bytes are those of a
    fresh single-machine build of the new folder."""
    import shutil

    from conftest import aist_name, write_video

    folder = tmp_path / "aist"
    shutil.copytree(videos, folder)
    out = tmp_path / "out"
    dancedata.build_shards(str(folder), str(out), **SMALL_SHARDS)
    write_video(folder / f"{aist_name('BR', camera=3, dancer=30, choreo=9)}.mp4", frames=12, seed=99)  # one more video
    next(iter(sorted(folder.glob("gPO*.mp4")))).unlink()  # and one fewer
    reference = tmp_path / "reference"
    dancedata.build_shards(str(folder), str(reference), **SMALL_SHARDS)
    parts = [part(folder, out, i, 2, "--update") for i in range(2)]
    said = ""
    for process in parts:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        said += err
    assert build_outputs(out) == build_outputs(reference)
    assert "reusing" in said  # unchanged videos came from the earlier shards, not from decoding
    assert not (out / ".build" / "reuse").exists()
