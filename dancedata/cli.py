"""What every dancedata command shares: one-line errors and exit status 2 for a user's mistake, no
TensorFlow start-up chatter unless --verbose, and a Ctrl-C that says how to go on."""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import signal  # at the top: hold_interrupts_while_starting must import nothing before the hold is in place
import sys
import tempfile
import threading

from dancedata.errors import DanceDataError


# TensorFlow's C++ log level without --verbose: 3 hides its "E" lines too, which on a working run are
# notices (oneDNN's "supports DT_HALF only on platforms with AVX-512", "failed call to cuInit" on a
# CPU-only machine); a real failure still reaches the user as a Python exception, in one line.
QUIET_LEVEL = "3"


# The program name the user typed (`dancedata build`), set by the console command around a subcommand's
# main, whose parser would otherwise call itself by its `python -m` form in usage lines and errors.
_typed_name: contextvars.ContextVar = contextvars.ContextVar("typed_name", default=None)


@contextlib.contextmanager
def typed_name(name: str):
    """Within the block, every ArgumentParser a command makes is called `name` (subcommands: `name role`)."""
    token = _typed_name.set(name)
    try:
        yield
    finally:
        _typed_name.reset(token)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line on stderr (no usage dump) and exits 2."""

    def __init__(self, *args, **kwargs):
        typed = _typed_name.get()
        # A command's parser names itself by its python form (`python -m dancedata.sample`, `python train.py`);
        # a subparser's name already starts with its parent's, the typed one.
        if typed and str(kwargs.get("prog", "")).startswith("python "):
            kwargs["prog"] = typed
        super().__init__(*args, **kwargs)
        self.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and C++ log messages")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


@contextlib.contextmanager
def _stderr_to_file():
    """Sends the process's fd 2 (C++ logging too) to a file; replays it when the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_tensorflow(verbose: bool = False) -> None:
    """Imports TensorFlow and makes its first device query, which is when it prints its start-up
    lines (absl's "All log messages before ...", oneDNN, "failed call to cuInit" on a CPU-only
    machine). Without verbose they are hidden, so a user's error is the only line they see."""
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    with _stderr_to_file():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


_held: list = []  # Ctrl-Cs received while a command was still importing its modules


def _hold(number, frame) -> None:
    _held.append(number)


def hold_interrupts_while_starting() -> None:
    """Runs first in `import dancedata`. When this process is a dancedata command (`python -m dancedata…`,
    the `dancedata` script), a Ctrl-C during its imports is held until `run` reports it as any other
    (one line, status 130); it used to end in a KeyboardInterrupt traceback from inside an import. Every
    such command reaches `run` or exits first. A program that imports dancedata keeps its own Ctrl-C."""
    if sys.argv[:1] == ["-m"]:  # runpy is importing the package of `python -m MODULE`
        target = _module_run_with_m()
        command = target == "dancedata" or target.startswith("dancedata.")
    else:  # the console script (no .py: a user's dancedata.py is not it)
        command = bool(sys.argv) and os.path.basename(sys.argv[0]) in ("dancedata", "dancedata.exe")
    if command and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _hold)


def _module_run_with_m() -> str:
    """The MODULE of `python … -m MODULE` ("" without -m): while runpy imports its package, sys.argv[0]
    is "-m" and only sys.orig_argv names it."""
    words = getattr(sys, "orig_argv", [])[1:]
    for position, word in enumerate(words):
        if word.startswith("-m"):
            return word[2:] or (words[position + 1] if position + 1 < len(words) else "")
    return ""


def _release_held_interrupts() -> None:
    """Ctrl-C behaves as Python's own again; one received during start-up is raised now."""
    if signal.getsignal(signal.SIGINT) is _hold:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _held:
        _held.clear()
        raise KeyboardInterrupt


def run(main, prog: str, argv=None, tensorflow: bool = True, interrupted: str = "") -> int:
    """Calls main(argv); turns a DanceDataError into `prog: error: message` and its exit status
    (2 for a user's mistake), Ctrl-C into one line (plus `interrupted`, what to do next) and 130."""
    arguments = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in arguments
    import dancedata

    if dancedata._SET_TF_LOG_LEVEL and "tensorflow" not in sys.modules:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the library's level gives way to the command's (or --verbose)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)  # before TensorFlow loads
    _terminate_as_interrupt()
    try:
        _release_held_interrupts()
        if tensorflow and not ({"-h", "--help"} & set(arguments)):
            load_tensorflow(verbose)
        return main(argv)
    except DanceDataError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return getattr(error, "exit_status", 2)
    except OSError as error:  # permission denied, a file where a folder should be, disk full, ...
        where = f": {error.filename}" if error.filename else ""
        print(f"{prog}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # argparse's exits (--help, a bad flag) become a status too
        return stop.code if isinstance(stop.code, int) else 2
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted" + (f"; {interrupted}" if interrupted else ""), file=sys.stderr)
        return 130


def _terminate_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop, preemption) ends a command as Ctrl-C does: cleanly, with one line
    that says how to go on. Only the main thread can install a handler."""
    import signal
    import threading

    def interrupt(number, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def exit(code: int) -> None:
    """Ends a command with `code`. After tensorflow-io's filesystems were used (s3://, ...), the process
    leaves without running C++ static destructors: with TensorFlow 2.17 + tensorflow-io 0.37.1 they
    abort ("pure virtual method called", status 134) after a job that succeeded.

    The command is over and `code` says how it went, so a Ctrl-C from now on is ignored: during the
    interpreter's shutdown (the last flush of stdout, atexit hooks such as tqdm's) it printed a
    KeyboardInterrupt traceback, or killed the process with SIGINT, after the work had finished.
    SIGTERM kills at once, without a word."""
    from dancedata import fs

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if fs.used_tensorflow_io():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
