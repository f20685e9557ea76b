"""A training run through a tf.data service never waits silently for a server that died.

Measured with TF 2.21 (docs/scaling.md, "When a service process dies"): a worker killed mid-epoch
leaves its task of the epoch's job assigned for good (the dispatcher only logs it as lost), and the
trainer retries it for ever: without a watchdog, fit() waits without a word. A dispatcher that is
killed stops the epoch until it is back; restarted without its work_dir it has forgotten the job.

ServiceWatchdog is a Keras callback with a thread beside fit(): every few seconds it asks the
dispatcher for its workers and knocks on each worker's port, and says in the training log when a
worker joins, is lost or comes back, and when the dispatcher stops or starts answering. When no
training batch has come for `timeout` seconds it prints one line, saying what is lost and how far the
epoch got, and ends the process with status 1: fit() is blocked in TensorFlow's C++ retry loop, which
nothing in Python can interrupt, and the run's last committed epoch is on disk (RunProgress), so the
same command continues the run. Validation is local and is not timed.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import keras

from dancedata import data_service

EXIT_STATUS = 1  # the machine failed, not the user's command (as a lost multi-worker peer)


class ServiceWatchdog(keras.callbacks.Callback):
    """Watches the service at `address` while fit() takes `steps` batches per epoch from it."""

    def __init__(self, address: str, steps: int, timeout: float, prog: str = "train.py", check_every: float = 5.0):
        super().__init__()
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.address, self.steps, self.timeout, self.prog, self.check_every = address, steps, timeout, prog, check_every
        self.epoch = self.batches = 0
        self.watching, self.first = False, True
        self.last = time.monotonic()  # when the last batch came (or the wait for the next began)
        self.workers: dict[str, bool] | None = None  # address -> answers, once known
        self.dispatcher_up = True
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="data-service-watchdog", daemon=True)

    # --- what fit() tells it ---------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._check_servers()
        self.thread.start()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.batches = epoch, 0
        self._wait_from_now()

    def on_train_batch_end(self, batch, logs=None):
        self.batches, self.first = batch + 1, False
        self.last = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.watching = False  # the checkpoint is being written: not the service's time

    def on_test_begin(self, logs=None):
        self.watching = False  # validation reads locally

    def on_test_end(self, logs=None):
        self._wait_from_now()

    def on_train_end(self, logs=None):
        self.watching = False
        self.done.set()

    def _wait_from_now(self):
        self.last, self.watching = time.monotonic(), True

    # --- the thread ------------------------------------------------------------------------------
    def _run(self):
        checked = time.monotonic()
        while not self.done.wait(1.0):
            if time.monotonic() - checked >= self.check_every:
                self._check_servers()
                checked = time.monotonic()
            if self._stalled():
                self._check_servers()  # what is lost, for the last line; it can take seconds
                if self._stalled():  # a batch that came during that check means the run recovered
                    self._stop(time.monotonic() - self.last)

    def _stalled(self) -> bool:
        # The first batch of a run also traces and compiles the training step: twice the time.
        allowed = self.timeout * (2 if self.first else 1)
        return self.watching and time.monotonic() - self.last > allowed

    def _where(self) -> str:
        return f"during epoch {self.epoch + 1} after {self.batches} of {self.steps} batches"

    def _say(self, message: str) -> None:
        print(f"data service: {message}", file=sys.stderr, flush=True)

    def _check_servers(self) -> None:
        """Asks the dispatcher for its workers and each worker whether it answers; says what changed."""
        try:
            found = data_service.registered_workers(self.address, timeout=min(5.0, self.timeout))
        except Exception as error:  # grpc.RpcError: down, or not a dispatcher
            if self.dispatcher_up:
                self._say(f"the dispatcher at {self._dispatcher()} does not answer {self._where()} "
                          f"({_first_line(error)}); training waits up to {self.timeout:g} s for it")
            self.dispatcher_up = False
            return
        if not self.dispatcher_up:
            self._say(f"the dispatcher at {self._dispatcher()} answers again {self._where()}")
        self.dispatcher_up = True
        now = {worker: data_service.answers(worker) for worker in found}
        if self.workers is None:
            self._say(f"{len(now)} worker(s) registered with the dispatcher at {self._dispatcher()}: {', '.join(now) or 'none'}")
        else:
            for worker, up in now.items():
                before = self.workers.get(worker)
                if before is None:
                    self._say(f"worker {worker} joined {self._where()}")
                elif before and not up:
                    self._say(f"worker {worker} lost (its port refuses connections) {self._where()}; this epoch "
                              f"waits up to {self.timeout:g} s for it to come back on that address")
                elif up and not before:
                    self._say(f"worker {worker} is back {self._where()}")
        self.workers = now

    def _dispatcher(self) -> str:
        host, port = data_service.parse_address(self.address)
        return f"{host}:{port}"

    def _stop(self, waited: float) -> None:
        """One line on stderr, then the process ends (fit() cannot be interrupted from here)."""
        resume = "run the same command to continue this run from its last completed epoch"
        where = f"epoch {self.epoch + 1} stopped after {self.batches} of {self.steps} batches (no batch for {waited:.0f} s)"
        lost = [worker for worker, up in (self.workers or {}).items() if not up]
        if not self.dispatcher_up:
            message = (f"the tf.data service dispatcher at {self._dispatcher()} is gone: {where}. Start it again on the "
                       f"same port; a dispatcher started with --work-dir DIR (a journal of its jobs) and restarted with "
                       f"the same DIR lets training go on; then {resume}")
        elif lost:
            message = (f"tf.data service worker {', '.join(lost)} lost: {where}; the dispatcher keeps every epoch waiting "
                       f"for it. Start the worker again on the same address (--port; docs/scaling.md), then {resume}")
        else:
            message = (f"no batch from the tf.data service at {self.address}: {where}, although its dispatcher and "
                       f"workers answer; check the workers' logs, then {resume}")
        print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_STATUS)


def _first_line(error) -> str:
    """A gRPC error's details (or any error's text), first line: what the log line quotes."""
    text = error.details() if callable(getattr(error, "details", None)) else str(error)
    lines = (text or "").strip().splitlines()
    return lines[0][:120] if lines else type(error).__name__
