"""Process lifetime: nothing a build starts (the forkserver, the resource tracker, every decode worker)
outlives it, also when the build is killed with SIGKILL while a worker is stuck in a decode. Real
processes, a real hang (tests/faulty_decoder.py, and one that holds the GIL like a stuck C decoder), a
real kill -9."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import BUILD_FLAGS, aist_name, cli_env, make_aist_folder, write_video
from faulty_decoder import SPEC, read_clip

from dancedata import decode_pool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def stat(pid):
    """(ppid, session, start time, state) of `pid` from /proc, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return int(fields[1]), int(fields[3]), int(fields[19]), fields[0]


def processes():
    """{pid: stat(pid)} of every process on the machine."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := stat(int(entry))) is not None:
            found[int(entry)] = info
    return found


def descendants(root):
    """{pid: start time} of every living process below `root`, by following parent pids."""
    table = processes()
    found, frontier = {}, {root}
    while frontier:
        frontier = {pid for pid, (ppid, *_rest) in table.items() if ppid in frontier and pid not in found}
        found.update({pid: table[pid][2] for pid in frontier})
    return found


def alive(pid, started):
    """True while `pid` is the process that started at `started` and has not exited (zombies have)."""
    info = stat(pid)
    return info is not None and info[2] == started and info[3] not in "ZX"


def command(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as file:
            return file.read().replace("\0", " ")[:120]
    except OSError:
        return "?"


def wchan(pid):
    """Where in the kernel `pid` waits ("hrtimer_nanosleep" in time.sleep)."""
    try:
        with open(f"/proc/{pid}/wchan") as file:
            return file.read()
    except OSError:
        return ""


def asleep_in_decode(pid):
    """True when `pid` is blocked in the hanging decoder's time.sleep (a nanosleep in the kernel)."""
    return "nanosleep" in wchan(pid)


@pytest.mark.parametrize("decoder", [SPEC, "test_lifetime:read_clip_holding_the_gil"])
def test_a_killed_build_takes_its_forkserver_and_stuck_workers_along(tmp_path, decoder):
    root = tmp_path / "aist"
    make_aist_folder(root, genres=("BR", "PO"), performances=2, cameras=1, frames=6)
    (root / "hang").mkdir()  # the fault is chosen by the folder's name: the file keeps an AIST name
    write_video(root / "hang" / f"{aist_name('BR', dancer=30, choreo=9)}.mp4", frames=6)
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a surviving worker would hold a pipe open
    with log.open("w") as err:
        build = subprocess.Popen(
            [sys.executable, "-m", "dancedata.build_shards", str(root), "--out", str(tmp_path / "out"), *BUILD_FLAGS,
             "--workers", "2", "--video-timeout", "600"],
            stdout=subprocess.DEVNULL, stderr=err, env=cli_env(**{decode_pool.DECODER_VARIABLE: decoder}),
            start_new_session=True,  # the build's own session: whatever it starts can be found, and killed, by it
        )
    below = {}
    try:
        deadline = time.monotonic() + 600
        while True:
            assert build.poll() is None, log.read_text()
            table = processes()
            workers = [pid for pid in descendants(build.pid) if pid in table and table[pid][0] != build.pid]  # below the forkserver
            if any(asleep_in_decode(pid) for pid in workers):
                break
            assert time.monotonic() < deadline, f"no decode worker reached the hanging video: {[wchan(p) for p in workers]}"
            time.sleep(0.1)
        below = descendants(build.pid)  # the pids are taken now: once the build dies, init adopts them
        assert len(below) >= 3  # the forkserver, the resource tracker and at least the stuck worker

        os.kill(build.pid, signal.SIGKILL)
        build.wait()
        # They go soon after (the parent-death signal, the forkserver's end); a stuck worker left behind would
        # sleep for an hour and a forkserver would live on, so a bound of minutes tells the two apart on a busy
        # machine too.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(alive(pid, started) for pid, started in below.items()):
            time.sleep(0.05)
        left = {pid: command(pid) for pid, started in below.items() if alive(pid, started)}
        assert not left, f"still running 120 s after kill -9 of the build: {left}"
        session = [pid for pid, (_, sid, _, state) in processes().items() if sid == build.pid and state not in "ZX"]
        assert not session, f"processes of the build's session still running: {session}"
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        for pid, started in below.items():  # a failed test leaves nothing running
            if alive(pid, started):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(build.pid, signal.SIGKILL)  # and whatever started after the pids were taken
        except ProcessLookupError:
            pass


def read_clip_holding_the_gil(path, config, size):
    """The faulty decoder, except that its hang holds the GIL, as a stuck C decoder can: no Python thread runs."""
    if os.path.basename(os.path.dirname(path)) == "hang":
        import ctypes

        ctypes.PyDLL(None).sleep(3600)  # PyDLL keeps the GIL through the call
    return read_clip(path, config, size)
