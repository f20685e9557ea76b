"""The output folder's lock, with real processes holding it: busy, kill -9 and takeover, parts, waiting."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from dancedata import folder_lock
from dancedata.errors import DanceDataError
from dancedata.folder_lock import FolderBusy, FolderLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hold(out, part=None, release_after=None):
    """A subprocess holding `out`'s folder lock (or part (k, i)), started once it says "held"; it gives the
    lock back after `release_after` seconds, or keeps it until killed."""
    take = f"folder_lock.part_lock(out, {part[0]}, {part[1]})" if part else 'folder_lock.folder_lock(out, "build")'
    code = textwrap.dedent(f"""
        import sys, time
        from dancedata import folder_lock
        out = {str(out)!r}
        lock = {take}
        print("held", flush=True)
        if {release_after!r} is None:
            time.sleep(60)
        time.sleep({release_after or 0})
        lock.release()
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.fixture
def holders():
    started = []
    yield lambda *args, **kwargs: started.append(hold(*args, **kwargs)) or started[-1]
    for process in started:
        process.kill()
        process.wait()
        process.stdout.close()


def test_another_process_holding_the_folder_is_named(tmp_path, holders):
    other = holders(tmp_path)
    with pytest.raises(FolderBusy) as raised:
        folder_lock.folder_lock(tmp_path)
    message = str(raised.value)
    assert isinstance(raised.value, DanceDataError) and "\n" not in message
    assert f"pid {other.pid} on host {socket.gethostname()}" in message and ": build)" in message
    assert message.startswith(f"{tmp_path} is in use by another build (")
    assert message.endswith(f"run this command again (lock: {tmp_path / '.dancedata.lock'})")


def test_lock_of_a_killed_holder_is_taken_over(tmp_path, holders):
    other = holders(tmp_path)
    other.send_signal(signal.SIGKILL)
    other.wait()
    with folder_lock.folder_lock(tmp_path, what="finalize") as lock:
        assert lock.previous["pid"] == other.pid and lock.previous["what"] == "build"
        message = folder_lock.takeover_message(lock)
        assert message.startswith(f"taking over the lock of pid {other.pid} on host {socket.gethostname()} (since ")
        assert message.endswith(": build): that build is gone")
        assert lock.holder()["pid"] == os.getpid() and lock.holder()["what"] == "finalize"


def test_release_empties_the_file_and_the_lock_can_be_taken_again(tmp_path):
    first = folder_lock.folder_lock(tmp_path / "new" / "out")
    first.release()
    first.release()
    path = tmp_path / "new" / "out" / ".dancedata.lock"
    assert path.exists() and path.read_bytes() == b""
    with folder_lock.folder_lock(tmp_path / "new" / "out") as again:
        assert again.previous is None and folder_lock.takeover_message(again) is None
        assert '"pid"' in path.read_text()
    assert path.exists() and path.read_bytes() == b""


def test_a_folder_held_by_this_process_is_busy_too(tmp_path):
    with folder_lock.folder_lock(tmp_path):
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()} "):
            folder_lock.folder_lock(tmp_path)


def test_parts_lock_apart_and_are_listed_while_held(tmp_path, holders):
    other = holders(tmp_path, part=(4, 1))
    with folder_lock.part_lock(tmp_path, 4, 0) as mine, folder_lock.part_lock(tmp_path, 4, 2):
        assert (tmp_path / ".dancedata.part-00000-of-00004.lock").exists()
        with pytest.raises(FolderBusy, match=f"pid {other.pid} .*: part 2 of 4\\)"):
            folder_lock.part_lock(tmp_path, 4, 1)
        with pytest.raises(FolderBusy):
            folder_lock.part_lock(tmp_path, 4, 0)
        mine.release()
        held = folder_lock.held_part_locks(tmp_path)
        assert [(info["pid"], info["what"]) for info in held] == [(other.pid, "part 2 of 4"), (os.getpid(), "part 3 of 4")]
    assert [info["pid"] for info in folder_lock.held_part_locks(tmp_path)] == [other.pid]
    assert folder_lock.held_part_locks(tmp_path / "missing") == []


def test_part_index_out_of_range_is_refused(tmp_path):
    with pytest.raises(DanceDataError, match="worker_index must be between 0 and num_workers - 1 = 3, got 4"):
        folder_lock.part_lock(tmp_path, 4, 4)


def test_wait_gets_a_lock_released_meanwhile(tmp_path, holders):
    holders(tmp_path, release_after=0.5)
    start = time.monotonic()
    with folder_lock.folder_lock(tmp_path, wait=2) as lock:
        assert 0.2 < time.monotonic() - start < 2 and lock.previous is None


def test_wait_gives_up_after_the_wait(tmp_path, holders):
    holders(tmp_path)
    start = time.monotonic()
    with pytest.raises(FolderBusy):
        folder_lock.folder_lock(tmp_path, wait=1)
    assert 0.9 < time.monotonic() - start < 3
    start = time.monotonic()
    with pytest.raises(FolderBusy):
        folder_lock.folder_lock(tmp_path)
    assert time.monotonic() - start < 0.5


def test_holder_is_seen_without_holding_and_not_after_release(tmp_path, holders):
    lock = FolderLock(tmp_path, folder_lock.LOCK_NAME, "build")
    assert lock.holder() is None
    other = holders(tmp_path, release_after=0.3)
    assert lock.holder()["pid"] == other.pid
    deadline = time.monotonic() + 5
    while lock.holder() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.holder() is None


def test_lock_file_is_not_inherited_by_children(tmp_path):
    with folder_lock.folder_lock(tmp_path) as lock:
        assert not os.get_inheritable(lock._fd)
        child = subprocess.run(["ls", "-l", "/proc/self/fd/"], capture_output=True, text=True, close_fds=False)
        assert ".dancedata.lock" not in child.stdout
