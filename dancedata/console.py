"""The `dancedata` command: one entry point with a subcommand per tool. The `python -m dancedata.X`
and `python train.py` forms stay; each subcommand runs the same `main` with the same flags.

    dancedata build aist/ --out tfrecords/
    dancedata train --shards tfrecords/
"""
from __future__ import annotations

import importlib
import os
import sys

from dancedata import cli

# subcommand: (module, what it does, whether it needs TensorFlow)
COMMANDS = {
    "build": ("dancedata.build_shards", "decode each video once, extract features in batches, write shards + manifest.json", True),
    "inspect": ("dancedata.inspect", "summarise a shard folder: splits, genres, skipped files, warnings", True),
    "train": ("dancedata.train", "train, evaluate and save a genre classifier on shards", True),
    "predict": ("dancedata.predict", "top-k genres of videos with a model trained by `dancedata train`", True),
    "download": ("dancedata.download", "fetch AIST Dance DB videos (resumable, retried, checksummed)", False),
    "sample": ("dancedata.sample", "write a small AIST-like folder of real H.264 clips, made here (no download)", False),
    "data-service": ("dancedata.data_service", "start a tf.data service dispatcher or worker", True),
}


def program() -> str:
    """What the user typed to run this: `dancedata`, or `python -m dancedata` (dancedata/__main__.py)."""
    return "python -m dancedata" if os.path.basename(sys.argv[0]) == "__main__.py" else "dancedata"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {program()} <command> [flags]   ({program()} <command> --help for its flags)", ""]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text, _) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{program()}: error: unknown command {name!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, _, tensorflow = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # a broken install: a dependency missing
        print(f"{program()}: error: cannot import {module_name}; reinstall dancedata (pip install -e .)", file=sys.stderr)
        return 2
    typed = f"{program()} {name}"
    with cli.typed_name(typed):  # usage lines and errors say what the user typed, not the module's python -m form
        return cli.run(module.main, typed, rest, tensorflow=tensorflow,
                       interrupted=getattr(module, "INTERRUPTED", ""))


def entry_point() -> None:
    cli.exit(main())
