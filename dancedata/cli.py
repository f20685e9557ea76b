"""What every dancedata command shares: one-line errors and exit status 2 for a user's mistake."""
from __future__ import annotations

import argparse
import os
import sys

from dancedata.errors import DanceDataError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line on stderr (no usage dump) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run(main, prog: str, argv=None) -> int:
    """Calls main(argv); turns a DanceDataError into `prog: error: message` and status 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep C++ info logs quiet
    try:
        return main(argv)
    except DanceDataError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # permission denied, a file where a folder should be, disk full, ...
        where = f": {error.filename}" if error.filename else ""
        print(f"{prog}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # argparse's exits (--help, a bad flag) become a status too
        return stop.code if isinstance(stop.code, int) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
