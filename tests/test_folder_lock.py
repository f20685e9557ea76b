"""The output folder's lock, with real processes holding it: busy, kill -9 and takeover, parts, waiting."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dancedata import folder_lock
from dancedata.errors import DanceDataError
from dancedata.folder_lock import FolderBusy, FolderLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hold(out, part=None):
    """A subprocess holding `out`'s folder lock (or part (k, i)), started once it says "held". It gives the
    lock back when a line comes on its stdin (`give_back`), and holds it until then, or until killed: no
    timer, so a slow machine cannot make it let go early or late."""
    take = f"folder_lock.part_lock(out, {part[0]}, {part[1]})" if part else 'folder_lock.folder_lock(out, "build")'
    code = textwrap.dedent(f"""
        import sys
        from dancedata import folder_lock
        out = {str(out)!r}
        lock = {take}
        print("held", flush=True)
        sys.stdin.readline()
        lock.release()
        print("released", flush=True)
        sys.stdin.readline()
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def give_back(process):
    """Tells a holder to release its lock; returns once it has."""
    process.stdin.write("release\n")
    process.stdin.flush()
    assert process.stdout.readline().strip() == "released"


@pytest.fixture
def holders():
    started = []
    yield lambda *args, **kwargs: started.append(hold(*args, **kwargs)) or started[-1]
    for process in started:
        process.kill()
        process.wait()
        process.stdin.close()
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
    """The lock is given back while the waiter is waiting (it is still waiting, not failed, when the holder is
    told to let go): it gets the lock, as a clean release, whatever the machine's speed."""
    other = holders(tmp_path)
    got = {}

    def wait_for_it():
        try:
            got["lock"] = folder_lock.folder_lock(tmp_path, wait=600)
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            got["error"] = error

    waiter = threading.Thread(target=wait_for_it, daemon=True)
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive() and not got, got  # the lock is held: the waiter waits instead of failing
    give_back(other)
    waiter.join(600)
    assert not waiter.is_alive() and "error" not in got, got
    with got["lock"] as lock:
        assert lock.previous is None and lock.holder()["pid"] == os.getpid()


def test_wait_gives_up_after_the_wait(tmp_path, holders, monkeypatch):
    """It gives up once its wait is over, having slept no longer than that (what it asks of time.sleep does
    not depend on how busy the machine is); without a wait it gives up without sleeping at all."""
    holders(tmp_path)
    slept = []
    real_sleep = time.sleep
    monkeypatch.setattr(folder_lock.time, "sleep", lambda seconds: slept.append(seconds) or real_sleep(seconds))
    start = time.monotonic()
    with pytest.raises(FolderBusy):
        folder_lock.folder_lock(tmp_path, wait=1)
    assert time.monotonic() - start >= 1  # it did wait (a lower bound: a busy machine only adds to it)
    assert slept and sum(slept) <= 1 + folder_lock.POLL, slept
    slept.clear()
    with pytest.raises(FolderBusy):
        folder_lock.folder_lock(tmp_path)
    assert slept == []


def test_holder_is_seen_without_holding_and_not_after_release(tmp_path, holders):
    lock = FolderLock(tmp_path, folder_lock.LOCK_NAME, "build")
    assert lock.holder() is None
    other = holders(tmp_path)
    assert lock.holder()["pid"] == other.pid
    give_back(other)
    assert lock.holder() is None


def test_lock_file_is_not_inherited_by_children(tmp_path):
    with folder_lock.folder_lock(tmp_path) as lock:
        assert not os.get_inheritable(lock._fd)
        child = subprocess.run(["ls", "-l", "/proc/self/fd/"], capture_output=True, text=True, close_fds=False)
        assert ".dancedata.lock" not in child.stdout


def test_a_part_lock_held_before_its_holder_describes_itself_counts_as_held(tmp_path):
    """Between a part's flock and its description the file is empty: that part is running all the same,
    so a whole build beside it is refused (flock locks belong to an open file, so a second open of the
    same file in this process is refused like another process)."""
    import fcntl

    path = tmp_path / folder_lock.part_lock_name(2, 1)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lock, and no description yet
        assert FolderLock(tmp_path, path.name, "").holder() == {}
        assert folder_lock.held_part_locks(tmp_path) == [{}]
        with pytest.raises(FolderBusy) as caught:
            with folder_lock.owned(str(tmp_path)):
                pass
        assert str(caught.value) == (
            f"{tmp_path} is in use by a partitioned build (a part whose process is starting and has not described "
            "itself yet); wait for its parts to finish or stop them, then run this command again")
        os.write(fd, b'{"pid": 7, "host"')  # cut short while describing itself: still held
        assert folder_lock.held_part_locks(tmp_path) == [{}]
    finally:
        os.close(fd)
    assert folder_lock.held_part_locks(tmp_path) == []  # closed: the part ended, its half description is history
    with folder_lock.owned(str(tmp_path)):
        pass
