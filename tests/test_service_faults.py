"""Training through a tf.data service when one of its processes dies (issue 24): real dispatcher, worker
and trainer processes on 127.0.0.1, a real kill -9; every wait is bounded, and each test asserts how the
run ends (it finishes, or it stops with one line and exit status 1 and the same command continues)."""
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import cli_env

SERVICE = [sys.executable, "-m", "dancedata.data_service"]
START = 300  # seconds for a process to import TensorFlow and say it is ready (generous: 2 busy cores)
WATCHDOG = 20  # the trainer's --data-service-timeout in these tests
# A run that must end does so within this (start-up, epochs, the watchdog's wait, on a busy machine): a bound
# of minutes on an event, not a speed check; the silent wait it guards against never ends.
ENDS = 600


class Process:
    """A command whose stdout and stderr lines are kept and can be waited for with a timeout."""

    def __init__(self, *arguments):
        self.popen = subprocess.Popen(list(arguments), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=cli_env())
        self.out, self.err, self.lines = [], [], queue.Queue()
        self.pumps = [threading.Thread(target=self._pump, args=(stream, kept), daemon=True)
                      for stream, kept in ((self.popen.stdout, self.out), (self.popen.stderr, self.err))]
        for pump in self.pumps:
            pump.start()

    def _pump(self, stream, kept):
        for line in stream:
            kept.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = START) -> str:
        """The first line (stdout or stderr) matching `pattern`; fails with what it printed instead."""
        deadline, ended = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                ended += 1
                if ended == 2:
                    pytest.fail(f"exited ({self.popen.wait()}) before a line matching {pattern!r}:\n{self.text()}")
            elif re.search(pattern, line):
                return line
        pytest.fail(f"no line matching {pattern!r} within {timeout} s:\n{self.text()}")

    def finish(self, timeout: float = ENDS) -> int:
        """Its exit status; fails (and kills it) when it is still running after `timeout` seconds."""
        try:
            status = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout} s (a silent wait):\n{self.text()}")
        for pump in self.pumps:
            pump.join(timeout=10)
        return status

    def text(self) -> str:
        return f"stdout:\n{''.join(self.out)}\nstderr:\n{''.join(self.err)}"

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=START)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def processes():
    """Starts processes for a test and kills whatever is left of them after it."""
    started = []

    def start(*arguments):
        started.append(Process(*arguments))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def _service(start, port, work_dir=None, workers=2):
    """A dispatcher on `port` and `workers` workers on free ports, started together: (dispatcher,
    [(worker, its port)])."""
    dispatcher = start(*SERVICE, "dispatcher", "--port", str(port), *(["--work-dir", str(work_dir)] if work_dir else []))
    dispatcher.wait_for("dispatcher on port")
    found = [_worker(start, port, _free_port(), wait=False) for _ in range(workers)]
    for worker, _ in found:
        worker.wait_for("worker serving")
    return dispatcher, found


def _worker(start, dispatcher_port, port, wait=True):
    worker = start(*SERVICE, "worker", "--dispatcher", f"127.0.0.1:{dispatcher_port}", "--port", str(port))
    if wait:
        worker.wait_for("worker serving")
    return worker, port


def _train(start, built, run, port, epochs, timeout=WATCHDOG):
    return start(sys.executable, "-m", "dancedata.train", "--shards", str(built["out"]), "--out", str(run),
                 "--epochs", str(epochs), "--batch-size", "2", "--seed", "0",
                 "--data-service", f"grpc://127.0.0.1:{port}", "--data-service-timeout", str(timeout))


def _error_lines(process) -> list:
    return [line for line in process.err if line.startswith("train.py: error:")]


def _epochs(run) -> int:
    """Epochs in the run's history.csv."""
    with open(os.path.join(run, "history.csv")) as handle:
        return len(handle.read().strip().splitlines()) - 1


def test_a_worker_killed_mid_epoch_stops_training_with_one_line_and_the_same_command_continues(built, tmp_path, processes):
    port, run = _free_port(), tmp_path / "run"
    _, [_, (lost, lost_port)] = _service(processes, port)
    trainer = _train(processes, built, run, port, epochs=5)
    trainer.wait_for(r"^Epoch 2/5")
    lost.kill()  # SIGKILL: no goodbye to the dispatcher

    assert trainer.finish() == 1, trainer.text()
    [line] = _error_lines(trainer)
    assert f"tf.data service worker localhost:{lost_port} lost" in line
    assert re.search(r"epoch [2-5] stopped after \d+ of \d+ batches \(no batch for \d+ s\)", line)
    assert "run the same command to continue" in line and "Traceback" not in trainer.text()
    assert f"data service: worker localhost:{lost_port} lost" in "".join(trainer.err)  # said in the log when seen

    _worker(processes, port, lost_port)  # back on its address: the dispatcher's tasks for it are served again
    again = _train(processes, built, run, port, epochs=5)
    assert again.finish() == 0, again.text()
    assert "resuming the run" in "".join(again.err)
    assert _epochs(run) == 5


def test_a_dispatcher_killed_and_restarted_with_its_work_dir_lets_training_go_on(built, tmp_path, processes):
    port, run, work_dir = _free_port(), tmp_path / "run", tmp_path / "journal"
    dispatcher, _ = _service(processes, port, work_dir)
    trainer = _train(processes, built, run, port, epochs=4)
    trainer.wait_for(r"^Epoch 2/4")
    dispatcher.kill()
    restarted = processes(*SERVICE, "dispatcher", "--port", str(port), "--work-dir", str(work_dir))
    restarted.wait_for(f"dispatcher on port {port} \\(fault-tolerant")

    assert trainer.finish() == 0, trainer.text()
    assert _epochs(run) == 4 and not _error_lines(trainer)
    assert os.listdir(work_dir / "tf_data_dispatcher_journal")  # what the restarted dispatcher read


@pytest.mark.parametrize("restarted", [False, True], ids=["gone", "restarted"])
def test_a_dispatcher_killed_without_a_work_dir_stops_training_with_one_line(built, tmp_path, processes, restarted):
    """Gone: the watchdog's timeout. Restarted: it has forgotten the job, and the trainer hears so at once."""
    port, run = _free_port(), tmp_path / "run"
    dispatcher, _ = _service(processes, port)
    trainer = _train(processes, built, run, port, epochs=4, timeout=START if restarted else WATCHDOG)  # outlasts a restart
    trainer.wait_for(r"^Epoch 2/4")
    dispatcher.kill()
    if restarted:
        processes(*SERVICE, "dispatcher", "--port", str(port)).wait_for(f"dispatcher on port {port} \\(no --work-dir")

    assert trainer.finish() == 1, trainer.text()
    lines = _error_lines(trainer)
    assert len(lines) == 1, trainer.text()
    [line] = lines
    if restarted:
        assert f"the tf.data service dispatcher at 127.0.0.1:{port} was restarted without its state" in line
    else:
        assert f"the tf.data service dispatcher at 127.0.0.1:{port} is gone" in line
    assert "--work-dir DIR" in line and "run the same command to continue" in line
    assert "Traceback" not in trainer.text()


def test_a_worker_that_joins_late_is_used(built, tmp_path, processes):
    """A run long enough to outlast a worker's start-up; once both ends say so, it has shown what it must."""
    port, run = _free_port(), tmp_path / "run"
    _service(processes, port, workers=1)
    trainer = _train(processes, built, run, port, epochs=500)
    trainer.wait_for(r"^Epoch 2/500")
    late, late_port = _worker(processes, port, _free_port())

    late.wait_for(f"worker on port {late_port}: serving 1 task")  # the dispatcher gave it a task of an epoch
    trainer.wait_for(f"data service: worker localhost:{late_port} joined during epoch \\d+ after \\d+ of \\d+ batches")
    assert trainer.popen.poll() is None and not _error_lines(trainer)  # still training; the fixture ends it
