"""The edges of a build where users meet it first: a Ctrl-C at any moment (real process groups, real
SIGINT, moments found by events on stderr or on disk, never by sleeping), the build API called from a
plain script, and the decoder threads a worker gets from the CPUs this process may use."""
import ast
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import BUILD_FLAGS as FLAGS
from conftest import FAST_EXTRACTOR, FROM_A_TERMINAL, cli_env, make_aist_folder

from dancedata import decode_pool
from dancedata.build_shards import INTERRUPTED
from dancedata.errors import DecodeError


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges") / "aist"
    make_aist_folder(root, performances=4, cameras=2)  # 32 videos: a build long enough to be stopped in the middle
    return root


@pytest.fixture
def groups():
    """Process groups started by a test; what is left of them is killed when it ends (a failed or timed-out test)."""
    started = []
    yield started
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


class Moment:
    """A moment of a build, known by an event: an import completing (`python -X importtime` prints one line on
    stderr each, in the build and in the forkserver it starts) or a shard committed to disk."""

    def __init__(self, after: str | None = None, then: str | None = None, shard: bool = False):
        self.after, self.then, self.shard, self.seen = after, then, shard, after is None

    def reached(self, line: str | None, out) -> bool:
        if self.shard:
            return any((out / ".build").glob("*.tfrecord.json"))
        if line is None:
            return False
        if not self.seen:
            self.seen = bool(re.search(self.after, line))
            return False
        return bool(re.search(self.then, line))


MOMENTS = {
    # The first import that completes after dancedata.cli's: `import dancedata` is still loading its modules.
    "starting": lambda: Moment(after=r"\| +dancedata\.cli$", then=r"^import time:"),
    # PyAV imported by the forkserver's preload (the build itself never imports it): the forkserver is starting
    # while the backbone is made. Here a Ctrl-C gave three tracebacks and exit status 1.
    "forkserver": lambda: Moment(then=r"\| +av$"),
    # The forkserver's preload done: the decode workers are being started, the backbone is still being made.
    "workers": lambda: Moment(then=r"\| +dancedata\.decode$"),
    "mid-build": lambda: Moment(shard=True),
}
BUILD = [sys.executable, "-X", "importtime", "-m", "dancedata.build_shards"]
CONSOLE = [sys.executable, "-X", "importtime", os.path.join(os.path.dirname(sys.executable), "dancedata"), "build"]


def interrupt(command: list, out, moment: Moment, groups: list) -> tuple:
    """Runs `command` in a process group of its own, sends SIGINT to the whole group (as a terminal's Ctrl-C
    does) once `moment` is reached; returns (exit status, stderr)."""
    process = subprocess.Popen([*FROM_A_TERMINAL, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=cli_env(), start_new_session=True)
    groups.append(process)
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    read = 0
    while True:
        new, read = lines[read:], len(lines)
        if any(moment.reached(line, out) for line in new) or moment.reached(None, out):
            break
        assert process.poll() is None, "the build ended before the moment:\n" + "".join(lines)[-3000:]
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGINT)
    process.wait()
    reader.join()
    return process.returncode, "".join(line for line in lines if not line.startswith("import time:"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_at_any_moment_of_a_build_is_one_line_and_status_130(videos, tmp_path, groups, moment):
    out = tmp_path / "out"
    code, err = interrupt([*BUILD, str(videos), "--out", str(out), *FLAGS], out, MOMENTS[moment](), groups)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert code == 130, err
    assert err.strip().splitlines()[-1] == f"build_shards: interrupted; {INTERRUPTED}"


@pytest.mark.timeout(900)
def test_ctrl_c_while_the_dancedata_command_starts(videos, tmp_path, groups):
    out = tmp_path / "out"
    code, err = interrupt([*CONSOLE, str(videos), "--out", str(out), *FLAGS], out, MOMENTS["starting"](), groups)
    assert "Traceback" not in err, err
    assert code == 130 and err.strip().splitlines()[-1] == f"dancedata build: interrupted; {INTERRUPTED}", err


def script_call(videos, out) -> str:
    options = {"frames": 8, "shard_mb": 0.1, "quiet": True, **FAST_EXTRACTOR}
    return f"dancedata.build_shards({str(videos)!r}, {str(out)!r}, **{options!r})"


@pytest.mark.timeout(900)
def test_a_plain_script_gets_one_clear_error_before_any_work(videos, tmp_path, groups):
    """docs/frames.md's call pasted at a script's top level: every decode worker would run the script again
    (multiprocessing's "bootstrapping phase" RuntimeError 32 times, and a build that never ended)."""
    out = tmp_path / "out"
    script = tmp_path / "plain.py"
    script.write_text(f"import dancedata\n\nmanifest = {script_call(videos, out)}\nprint('built')\n")
    process = subprocess.Popen([sys.executable, "-X", "importtime", str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli_env(), start_new_session=True)
    groups.append(process)
    stdout, err = process.communicate()
    assert process.returncode == 1 and stdout == ""
    imported = [line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")]
    assert "tensorflow" not in imported and "av" not in imported  # at once: before TensorFlow loads or a worker starts
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("import time:"))
    assert "bootstrapping phase" not in err and err.count("Traceback") == 1  # the script's own, raised in the parent
    assert err.strip().splitlines()[-1] == (
        f'dancedata.errors.ConfigError: {script} calls dancedata at its top level (line 3), outside `if __name__ == '
        '"__main__":`. Decoding runs in worker processes, and Python starts each one by running the main script again, '
        'so every worker would run line 3 again. Put the script\'s work under `if __name__ == "__main__":` '
        '(docs/building.md, "Calling the build from a script")'
    )
    assert not out.exists()


@pytest.mark.timeout(900)
def test_a_script_with_the_guard_builds(videos, tmp_path, groups):
    """The call inside a function called from under the guard: the main frame's line is inside it."""
    out = tmp_path / "out"
    script = tmp_path / "guarded.py"
    script.write_text(textwrap.dedent(f"""\
        import dancedata


        def build():
            return {script_call(videos, out)}


        if __name__ == "__main__":
            manifest = build()
            print(sum(split["num_examples"] for split in manifest["splits"].values()))
        """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cli_env(), start_new_session=True)
    groups.append(process)
    stdout, err = process.communicate()
    assert process.returncode == 0, err
    assert stdout.split() == ["32"] and (out / "manifest.json").exists()


@pytest.mark.parametrize("source, line, guarded", [
    ('if __name__ == "__main__":\n    build()\n', 2, True),
    ("if '__main__' == __name__:\n    x = 1\n    build()\n", 3, True),
    ('if __name__ != "__main__":\n    pass\nelse:\n    build()\n', 4, True),
    ('if __name__ != "__main__":\n    build()\n', 2, False),
    ('build()\nif __name__ == "__main__":\n    pass\n', 1, False),
    ('if __name__ == "__main__":\n    pass\nelse:\n    build()\n', 4, False),
    ('if __name__ == "__main__":\n    for i in range(2):\n        with open(f) as g:\n            build(\n'
     '                1)\n', 5, True),
    ('if x == "__main__":\n    build()\n', 2, False),
])
def test_the_main_guard_is_found_where_the_line_is(source, line, guarded):
    assert decode_pool._in_main_guard(ast.parse(source), line) is guarded


def write_cgroup(root, files: dict):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(root)


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "400000\n"}, 4),  # no period written: the kernel's default, 100 ms
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # cgroup v1 without a quota
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "50000\n"}, 2),
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),
])
def test_the_cpu_quota_is_read_from_cgroup_v2_or_v1(tmp_path, files, cpus):
    assert decode_pool.cpu_quota(write_cgroup(tmp_path, files)) == cpus


def test_the_quota_caps_the_usable_cpus(tmp_path):
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert decode_pool.usable_cpus(write_cgroup(tmp_path / "none", {"cpu.max": "max 100000"})) == allowed
    assert decode_pool.usable_cpus(write_cgroup(tmp_path / "one", {"cpu.max": "100000 100000"})) == 1
    assert decode_pool.usable_cpus(write_cgroup(tmp_path / "many", {"cpu.max": "6400000 100000"})) == allowed
    assert decode_pool.threads_per_worker(2, cpus=64) == 32 and decode_pool.threads_per_worker(4, cpus=2) == 1


def report_threads(path, config, size):
    """A decoder for the workers below (imported there by name): reports the FFmpeg threads its worker was given."""
    from dancedata import decode

    raise DecodeError(f"threads={decode._threads}")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and at least two CPUs to leave one out")
def test_a_worker_decodes_with_the_cpus_this_process_may_use(tmp_path):
    """A process pinned to one CPU (taskset, a batch scheduler) gives its one worker one thread, not the
    machine's core count."""
    code = textwrap.dedent("""\
        import os, sys
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from dancedata.config import SamplingConfig
        from dancedata.decode_pool import DecodePool, usable_cpus

        with DecodePool(1, SamplingConfig(), 32, timeout=120, decoder="test_build_edges:report_threads") as pool:
            [(row, error)] = list(pool.imap([{"path": "x.mp4"}]))
        print(usable_cpus(sys.argv[1]), error)
        """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "threads=1"]
    assert os.cpu_count() >= 2  # what os.cpu_count() // 1 would have given that worker
