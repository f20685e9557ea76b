"""Decoding in worker processes: a video that hangs or crashes its decoder costs that video, not the build.

Each worker is a process started with forkserver (or spawn), never fork: TensorFlow is loaded in the
build process and must not be forked, and workers never import it. A worker decodes one video at a
time with cores // workers FFmpeg threads (one each with the default two workers on two cores), so
the workers together use about the machine's cores instead of workers x cores threads. The parent gives every video a
deadline (`--video-timeout`): a worker that passes it is killed and the video recorded as "decoder
timed out after N s"; a worker that dies (a segfault, the out-of-memory killer) is replaced, its
video retried once in a fresh worker, then recorded with the signal. Frames come back as one compact
uint8 array per video ([kept frames, S, S, 3]), never the whole video.

Failures of the machine are not failures of the video: MemoryError and OS errors such as "too many
open files", I/O errors or permission denied are retried once, then stop the build with one line
(`EnvironmentFailure`); the committed shards stay and the same command resumes.

No process outlives the build, even one killed with SIGKILL while a worker is stuck in a decode: the
forkserver exits when the build's end of its pipe closes, and the kernel then kills its workers
(`_die_with_the_build`).
"""
from __future__ import annotations

import collections
import ctypes
import errno
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing import connection

from dancedata.errors import ConfigError, DecodeError, EnvironmentFailure

DECODER_VARIABLE = "DANCEDATA_DECODER"  # "module:function" with read_clip's signature; tests inject faults with it
# errno values that describe the machine, not the file: no space, no memory, no descriptors, I/O, permissions, network mounts.
ENVIRONMENT_ERRNOS = {
    errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EIO, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS,
    errno.ESTALE, errno.ETIMEDOUT, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNRESET, errno.EDQUOT,
}


def is_environment_failure(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS)


def _decoder(spec: str | None):
    if not spec:
        from dancedata.decode import read_clip

        return read_clip
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def threads_per_worker(workers: int) -> int:
    """FFmpeg threads for each of `workers` decode processes, so that workers x threads fit the cores."""
    return max(1, (os.cpu_count() or 1) // workers)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_the_build() -> None:
    """Runs first in a worker, so that neither it nor the forkserver outlives the build, however the build ends.

    CPython hands every forkserver child a copy of the write end of the forkserver's "alive" pipe, and the
    forkserver exits only once every copy is closed: after a kill -9 of the build, a worker stuck in a decode
    kept the forkserver running, and the forkserver, its parent, kept the worker. A worker starts no processes,
    so it closes its copy: the build is then the only writer and the forkserver exits with it. The kernel's
    parent-death signal then kills the worker, even in C code that holds the GIL. It fires when the thread
    that forked the worker exits: the forkserver's main thread, which lives as long as the forkserver (never
    the build's short-lived thread that starts the pool). A thread that waits for the build's end of the
    worker's start-up pipe to close does the same under spawn and without prctl, and covers a forkserver
    gone before the prctl.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver  # private, but the only way to reach the inherited copy of the pipe
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:  # started by the forkserver (spawn children have no such pipe)
        os.close(alive)
        server._forkserver_alive_fd = None
        if sys.platform.startswith("linux"):  # a failure leaves the thread below
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    build = multiprocessing.parent_process()
    if build is not None:
        threading.Thread(target=_exit_after, args=(build,), daemon=True, name="dancedata-lifeline").start()


def _exit_after(process) -> None:
    process.join()  # returns when `process`'s end of the pipe closes: it has exited
    os._exit(1)


def _worker(conn, decoder_spec: str | None, threads: int = 1) -> None:
    """Runs in the worker process: decode jobs until told to stop. Ctrl-C is the parent's to handle."""
    _die_with_the_build()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from dancedata import decode

    decode.use_threads(threads)
    read = _decoder(decoder_spec)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        job_id, path, sampling, size = job
        try:
            outcome = ("clip", read(path, sampling, size))
        except ConfigError as error:
            outcome = ("config", str(error))
        except DecodeError as error:
            outcome = ("video", str(error))
        except BaseException as error:  # noqa: BLE001 - every failure is classified, none escapes the worker
            text = f"{type(error).__name__}: {error}".rstrip(": ")
            outcome = ("environment" if is_environment_failure(error) else "video", text)
        conn.send((job_id, outcome))


def _context():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["dancedata.decode"])  # each new worker starts with cv2 and PyAV loaded
        return context
    return multiprocessing.get_context("spawn")


class _Worker:
    def __init__(self, context, decoder_spec, threads):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, decoder_spec, threads), daemon=True, name="dancedata-decode")
        self.process.start()
        child.close()
        self.job = None  # (index, row, deadline, attempt)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class DecodePool:
    """`imap(rows)` yields (row, Clip or DecodeError) in row order, decoding up to 2 * workers ahead."""

    def __init__(self, workers: int, sampling, size: int, timeout: float, decoder: str | None = None):
        self.sampling, self.size, self.timeout = sampling, size, timeout
        self._decoder = decoder if decoder is not None else os.environ.get(DECODER_VARIABLE)
        self._context = _context()
        self._threads = threads_per_worker(workers)
        self._workers = [_Worker(self._context, self._decoder, self._threads) for _ in range(workers)]

    def close(self) -> None:
        for worker in self._workers:
            worker.stop(kill=worker.job is not None)
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def _replace(self, worker: _Worker, kill: bool):
        """A fresh worker in `worker`'s place; returns the old one's exit code (negative: a signal)."""
        worker.stop(kill=kill)
        self._workers[self._workers.index(worker)] = _Worker(self._context, self._decoder, self._threads)
        return worker.process.exitcode

    def _submit(self, worker: _Worker, index: int, row: dict, attempt: int) -> None:
        worker.job = (index, row, time.monotonic() + self.timeout, attempt)
        worker.conn.send((index, row["path"], self.sampling, self.size))

    def imap(self, rows):
        rows = iter(rows)
        waiting = collections.deque()  # (index, row, attempt) to submit, retries first
        done: dict = {}
        next_out = submitted = 0
        exhausted = False
        while True:
            while not exhausted and submitted - next_out < 2 * len(self._workers) and len(waiting) < len(self._workers):
                row = next(rows, None)
                if row is None:
                    exhausted = True
                    break
                waiting.append((submitted, row, 0))
                submitted += 1
            for worker in self._workers:
                if worker.job is None and waiting:
                    self._submit(worker, *waiting.popleft())
            if next_out in done:
                yield done.pop(next_out)
                next_out += 1
                continue
            busy = [w for w in self._workers if w.job is not None]
            if not busy:
                if exhausted and not waiting:
                    return
                continue
            soonest = min(w.job[2] for w in busy)
            ready = connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=max(0.0, soonest - time.monotonic()))
            for worker in busy:
                index, row, deadline, attempt = worker.job
                if worker.conn in ready or worker.process.sentinel in ready:
                    try:
                        job_id, (kind, value) = worker.conn.recv()
                    except (EOFError, OSError):  # the process died with this video
                        code = self._replace(worker, kill=True)
                        if code == -signal.SIGKILL:
                            reason = "decoder was killed (SIGKILL; often the out-of-memory killer)"
                        elif code is not None and code < 0:
                            reason = f"decoder crashed (signal {-code}, {_signal_name(-code)})"
                        else:
                            reason = f"decoder exited with status {code}"
                        if attempt == 0:  # once more in a fresh worker: a crash that repeats is the video's
                            waiting.appendleft((index, row, 1))
                        else:
                            done[index] = (row, DecodeError(reason))
                        continue
                    worker.job = None
                    if kind == "clip":
                        done[index] = (row, value)
                    elif kind == "video":
                        done[index] = (row, DecodeError(value))
                    elif kind == "config":
                        raise ConfigError(value)
                    elif attempt == 0:  # environment: once more, in a fresh worker, after a pause
                        self._replace(worker, kill=False)
                        time.sleep(1.0)
                        waiting.appendleft((index, row, 1))
                    else:
                        raise EnvironmentFailure(
                            f"decoding {row['path']} failed twice with {value}: that is the machine (memory, open files, "
                            "disk or permissions), not the video; fix it and run the same command to resume"
                        )
                elif time.monotonic() >= deadline:
                    self._replace(worker, kill=True)
                    done[index] = (row, DecodeError(f"decoder timed out after {self.timeout:g} s"))
