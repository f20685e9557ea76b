"""Decoding in worker processes: a video that hangs or crashes its decoder costs that video, not the build.

Each worker is a process started with forkserver (or spawn), never fork: TensorFlow is loaded in the
build process and must not be forked, and workers never import it. A worker decodes one video at a
time with CPUs // workers FFmpeg threads (at least one; one each with the default two workers on two
CPUs), where the CPUs are those this process may use (`usable_cpus`: affinity and container quota, not
the machine's cores), so the workers together use about those CPUs. The parent gives every video a
deadline (`--video-timeout`): a worker that passes it is killed and the video recorded as "decoder
timed out after N s"; a worker that dies (a segfault, the out-of-memory killer) is replaced, its
video retried once in a fresh worker, then recorded with the signal. Frames come back as one compact
uint8 array per video ([kept frames, S, S, 3]), never the whole video.

Failures of the machine are not failures of the video: MemoryError and OS errors such as "too many
open files", I/O errors or permission denied are retried once, then stop the build with one line
(`EnvironmentFailure`); the committed shards stay and the same command resumes.

No process outlives the build, even one killed with SIGKILL while a worker is stuck in a decode: the
forkserver exits when the build's end of its pipe closes, and the kernel then kills its workers
(`_die_with_the_build`). Ctrl-C is the build's alone: a terminal sends it to the whole process group,
and the forkserver and workers are started with it blocked (`_started_quietly`), so none of them prints a
KeyboardInterrupt while it starts.

Workers are never forked, so Python's multiprocessing makes each one run the main script again
before it decodes anything; a script that calls the build outside `if __name__ == "__main__":` is
refused before any worker starts (`check_main_is_guarded`).
"""
from __future__ import annotations

import ast
import collections
import contextlib
import ctypes
import math
import errno
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing import connection, forkserver, resource_tracker

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


CGROUP = "/sys/fs/cgroup"


def usable_cpus(cgroup: str = CGROUP) -> int:
    """The CPUs this process may use: its CPU affinity, capped by its container's CPU quota; at least 1.

    os.cpu_count() counts the machine's cores: a pod limited to 2 CPUs on a 64-core node, or a process
    pinned by taskset or a batch scheduler, would run 32 decoder threads a worker on 2 CPUs.
    """
    if hasattr(os, "process_cpu_count"):  # Python 3.13+: the affinity where the platform has one
        count = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    quota = cpu_quota(cgroup)
    if quota is not None:
        count = min(count or quota, quota)
    return max(1, count or 1)


def cpu_quota(cgroup: str = CGROUP) -> int | None:
    """The CPUs the cgroup under `cgroup` may use by its CFS quota, rounded up (1.5 CPUs of quota keep
    two threads busy part of the time, as the JVM and .NET also count it); None without a quota.
    cgroup v2 keeps "QUOTA PERIOD" (or "max PERIOD") in cpu.max; v1 keeps cpu.cfs_quota_us (-1: none)
    and cpu.cfs_period_us in its cpu controller's folder. Only the cgroup mounted at `cgroup` is read:
    a container's own (its cgroup namespace); a quota set on a parent on a bare host is not seen."""
    v2 = _read_words(os.path.join(cgroup, "cpu.max"))
    if v2 is not None:
        quota, period = (v2 + ["100000"])[:2]
        return _cpus(quota, period)
    for controller in ("cpu", "cpu,cpuacct"):
        quota = _read_words(os.path.join(cgroup, controller, "cpu.cfs_quota_us"))
        period = _read_words(os.path.join(cgroup, controller, "cpu.cfs_period_us"))
        if quota and period:
            return _cpus(quota[0], period[0])
    return None


def _read_words(path: str) -> list | None:
    try:
        with open(path) as handle:
            return handle.read().split()
    except (OSError, UnicodeDecodeError):
        return None


def _cpus(quota: str, period: str) -> int | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    if quota_us <= 0 or period_us <= 0:  # v1 writes -1 for no limit
        return None
    return max(1, math.ceil(quota_us / period_us))


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """FFmpeg threads for each of `workers` decode processes, so that workers x threads fit the CPUs
    this process may use."""
    return max(1, (cpus or usable_cpus()) // workers)


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


@contextlib.contextmanager
def _started_quietly(context):
    """Processes started inside begin with SIGINT blocked. A terminal's Ctrl-C reaches the whole process
    group: a forkserver still importing its preload, or a worker before it ignores SIGINT, printed a
    KeyboardInterrupt traceback of its own (and the build's next start failed with "EOFError: unexpected
    EOF"). Blocked, not ignored: the mask is this thread's alone, so the build still gets Ctrl-C; a child
    inherits it across exec, and the forkserver passes it to every worker it forks. The resource tracker
    (started on a start's first use) unblocks the signals it blocks for its own start, so it starts before
    the block; the forkserver then starts inside it. In the main thread (a replacement worker) a
    Ctrl-C is held until the start is complete: a start cut in half leaves a child that reports the
    missing half with a traceback."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks, no process groups' Ctrl-C
        yield
        return
    resource_tracker.ensure_running()  # the forkserver and spawn both start it on first use
    held, interrupted = _hold_sigint()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        if context.get_start_method() == "forkserver":
            forkserver.ensure_running()
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if held is not None:
            signal.signal(signal.SIGINT, held)
            if interrupted:
                raise KeyboardInterrupt


def _hold_sigint():
    """(the SIGINT handler to restore, a list that becomes non-empty on Ctrl-C): in the main thread,
    while Python's own Ctrl-C handler is in place; (None, []) elsewhere."""
    interrupted: list = []
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None, interrupted
    return signal.signal(signal.SIGINT, lambda *_: interrupted.append(True)), interrupted


def check_main_is_guarded() -> None:
    """Raises ConfigError when this call comes from the top level of a main script that every worker
    process would run again.

    A forkserver or spawn child runs the parent's main module before its target (as `__mp_main__`),
    so that functions defined there can be unpickled. A script that calls the build at its top level,
    outside `if __name__ == "__main__":`, then builds again in every worker: each one failed with
    multiprocessing's "bootstrapping phase" RuntimeError, was retried, and the build never finished.
    Nothing a worker needs lives in the main module, but multiprocessing has no public way to leave
    it out, and swapping sys.modules["__main__"] under the user's other threads is not safe: the
    guard is the fix, named here before any worker starts. The test is exact for what it reports: the
    main module's own frame is on the stack, at a line outside any `if __name__ == "__main__":`.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if path is None or (name is not None and (name == "__main__" or name.endswith(".__main__"))):
        return  # an interactive session, `python -c`, or a package's __main__.py: workers do not run it
    if name is None and os.path.splitext(os.path.basename(path))[0] == "ipython":
        return  # multiprocessing skips IPython's launcher by name
    # The main thread's stack, also when the pool starts in a helper thread (the build starts it beside the backbone).
    main_thread = threading.main_thread()
    here = threading.current_thread() is main_thread
    frame = sys._getframe(1) if here else sys._current_frames().get(main_thread.ident)
    while frame is not None and not (frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return  # called from a function, a thread, a notebook cell: not while the script's top level runs
    line = frame.f_lineno
    try:
        with open(path, "rb") as handle:
            tree = ast.parse(handle.read(), path)
    except (OSError, SyntaxError, ValueError):
        return  # no source to read (a .pyc): multiprocessing's own error stays the last word
    if _in_main_guard(tree, line):
        return
    raise ConfigError(
        f"{path} calls dancedata at its top level (line {line}), outside `if __name__ == \"__main__\":`. Decoding runs "
        "in worker processes, and Python starts each one by running the main script again, so every worker would "
        f"run line {line} again. Put the script's work under `if __name__ == \"__main__\":` (docs/building.md, "
        "\"Calling the build from a script\")"
    )


def _in_main_guard(tree: ast.AST, line: int) -> bool:
    """Whether `line` lies in the body of an `if __name__ == "__main__":` (or in the else of a `!=`)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1:
            continue
        sides = {_constant(node.test.left), _constant(node.test.comparators[0])}
        if sides != {"__name__", "'__main__'"}:
            continue
        body = {ast.Eq: node.body, ast.NotEq: node.orelse}.get(type(node.test.ops[0]))
        if body and body[0].lineno <= line <= body[-1].end_lineno:
            return True
    return False


def _constant(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return repr(node.value)
    return None


class _Worker:
    def __init__(self, context, decoder_spec, threads):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, decoder_spec, threads), daemon=True, name="dancedata-decode")
        with _started_quietly(context):
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
        check_main_is_guarded()
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
