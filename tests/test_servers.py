"""The `python -m dancedata.data_service` servers say, when they start, that they listen on every interface
without authentication and what whoever reaches them can do (docs/servers.md)."""
import getpass
import os
import queue
import socket
import stat
import subprocess
import sys
import threading

import pytest
from conftest import cli_env

COMMAND = [sys.executable, "-m", "dancedata.data_service"]
START_TIMEOUT = 300  # seconds for a server to import TensorFlow and start listening (generous: a busy 2-core runner)
STOP_TIMEOUT = 300  # seconds for a server to stop once told to (waits on an event, not a speed check)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(*arguments) -> subprocess.Popen:
    server = subprocess.Popen(COMMAND + list(arguments), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=cli_env())
    server.lines = queue.Queue()  # stderr, read by a thread so that waiting for a line can time out
    threading.Thread(target=_pump, args=(server,), daemon=True).start()
    return server


def _pump(server: subprocess.Popen) -> None:
    for line in server.stderr:
        server.lines.put(line)
    server.lines.put(None)  # the server exited


def _stop(server: subprocess.Popen) -> None:
    server.kill()
    server.wait(timeout=STOP_TIMEOUT)


def _start_line(server: subprocess.Popen) -> str:
    """The server's `data_service:` line on stderr; fails with what it printed instead."""
    seen = []
    while True:
        try:
            line = server.lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no data_service: line on stderr within {START_TIMEOUT} s; it printed: {''.join(seen)!r}")
        if line is None:
            pytest.fail(f"the server exited ({server.wait()}) before the data_service: line: {''.join(seen)!r}")
        if line.startswith("data_service:"):
            return line
        seen.append(line)


def _rest(server: subprocess.Popen) -> list:
    """The lines of stderr not read yet, once the server has exited."""
    found = []
    while (line := server.lines.get(timeout=STOP_TIMEOUT)) is not None:
        found.append(line)
    return found


def _assert_warns(line: str, role: str, port: int) -> None:
    assert line.startswith(f"data_service: the {role} listens on port {port} on every network interface")
    assert "TensorFlow offers no bind address" in line and "without authentication" in line
    assert "anyone who can reach the port can run TensorFlow operations" in line
    assert f"as user {getpass.getuser()};" in line and "docs/servers.md" in line
    assert line.count("\n") == 1


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory):
    """A dispatcher command on a free port with a --work-dir it must create: (port, work_dir, its line)."""
    port, work_dir = _free_port(), tmp_path_factory.mktemp("dispatcher") / "journal" / "state"
    server = _start("dispatcher", "--port", str(port), "--work-dir", str(work_dir))
    try:
        yield port, work_dir, _start_line(server)
    finally:
        _stop(server)


def test_the_dispatcher_says_who_can_reach_it(dispatcher):
    port, _, line = dispatcher
    _assert_warns(line, "dispatcher", port)


def test_the_dispatcher_creates_its_work_dir_for_its_user_only(dispatcher):
    _, work_dir, _ = dispatcher
    assert stat.S_IMODE(os.stat(work_dir).st_mode) == 0o700


def test_a_worker_says_who_can_reach_it_and_the_dispatcher_lists_it(dispatcher):
    """The dispatcher's GetWorkers answer (what a trainer's watchdog reads) names the worker's port."""
    from dancedata.data_service import answers, registered_workers

    dispatcher_port, port = dispatcher[0], _free_port()
    server = _start("worker", "--dispatcher", f"127.0.0.1:{dispatcher_port}", "--port", str(port))
    try:
        _assert_warns(_start_line(server), "worker", port)
        assert f"localhost:{port}" in registered_workers(f"127.0.0.1:{dispatcher_port}")
        assert answers(f"localhost:{port}")
    finally:
        _stop(server)
    assert not answers(f"localhost:{port}")  # killed: its port refuses connections


def test_a_timeout_that_is_not_positive_is_one_line(dispatcher):
    server = _start("worker", "--dispatcher", f"127.0.0.1:{dispatcher[0]}", "--heartbeat", "0")
    try:
        assert server.wait(timeout=START_TIMEOUT) == 2
        assert _rest(server) == ["data_service: error: heartbeat must be positive, got 0.0\n"]
    finally:
        _stop(server)


def test_a_server_stops_on_sigterm_with_one_line(dispatcher):
    """A scheduler's stop (SIGTERM) ends a server as Ctrl-C does, even while it serves in C++ threads."""
    server = _start("worker", "--dispatcher", f"127.0.0.1:{dispatcher[0]}", "--port", str(_free_port()))
    try:
        _start_line(server)
        server.terminate()
        assert server.wait(timeout=STOP_TIMEOUT) == 130
        assert "data_service: interrupted; server stopped\n" in _rest(server)
    finally:
        _stop(server)

