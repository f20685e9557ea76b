"""What every dancedata command shares: one-line errors and exit status 2 for a user's mistake, no
TensorFlow start-up chatter unless --verbose, and a Ctrl-C that says how to go on."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

from dancedata.errors import DanceDataError


# TensorFlow's C++ log level without --verbose: 3 hides its "E" lines too, which on a working run are
# notices (oneDNN's "supports DT_HALF only on platforms with AVX-512", "failed call to cuInit" on a
# CPU-only machine); a real failure still reaches the user as a Python exception, in one line.
QUIET_LEVEL = "3"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line on stderr (no usage dump) and exits 2."""

    def __init__(self, *args, **kwargs):
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


def run(main, prog: str, argv=None, tensorflow: bool = True, interrupted: str = "") -> int:
    """Calls main(argv); turns a DanceDataError into `prog: error: message` and its exit status
    (2 for a user's mistake), Ctrl-C into one line (plus `interrupted`, what to do next) and 130."""
    arguments = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in arguments
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)  # before TensorFlow loads
    _terminate_as_interrupt()
    try:
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
    abort ("pure virtual method called", status 134) after a job that succeeded."""
    from dancedata import fs

    if fs.used_tensorflow_io():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
