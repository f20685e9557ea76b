"""Writes docs/cli.md from the commands' own argparse parsers, so the CLI reference and `--help` say the
same thing by construction. The flags come from the config dataclasses (dancedata/config.py `flag`),
so the page also names the dataclass each group of flags fills.

    python docs/gen_cli.py            # rewrite docs/cli.md
    python docs/gen_cli.py --check    # exit 1 when docs/cli.md is stale (tests/test_docs.py runs this)

The parsers are built inside each command's `main`; this script runs `main` with a `parse_args` that
hands the parser back instead of parsing, so nothing else in a command runs and no command changes
for the sake of its documentation.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli.md")
HEADER = """# Command-line reference

Generated from the commands' own parsers by `python docs/gen_cli.py` (do not edit by hand; the docs
test fails when this page and `--help` differ). Every command is `dancedata <command>`; each also runs
as the `python -m` form named under it, with the same flags. A user's mistake is one line on stderr
and exit status 2 ([troubleshooting](troubleshooting.md)).

Flags grouped under a dataclass name map one to one onto that dataclass's fields (`--image-size` is
`ExtractorConfig.image_size`), so the Python API takes the same names as keyword arguments.
"""


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def parser_of(module_name: str) -> argparse.ArgumentParser:
    """The parser `module.main` builds, taken at its parse_args call."""
    from dancedata import cli

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    module = importlib.import_module(module_name)
    original = cli.ArgumentParser.parse_args
    cli.ArgumentParser.parse_args = capture
    try:
        module.main([])
    except _Captured as captured:
        return captured.parser
    finally:
        cli.ArgumentParser.parse_args = original
    raise RuntimeError(f"{module_name}.main never called parse_args")


def _cell(text) -> str:
    """One table cell: one line, `|` escaped, and `<timestamp>` shown rather than taken for HTML."""
    text = " ".join(str(text).split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _help(action) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "default": action.default, "choices": ", ".join(map(str, action.choices or ()))}
    if action.choices and "one of" not in text:
        text += f" (one of: {', '.join(map(str, action.choices))})"
    return _cell(text)


def _spelling(action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`" + (" ..." if action.nargs in ("+", "*") else "")
    takes = action.nargs != 0
    metavar = action.metavar or action.dest.upper()
    spelled = [f"{option} {metavar}" if takes else option for option in action.option_strings]
    if action.nargs == "?":
        spelled = [f"{option} [{metavar}]" for option in action.option_strings]
    return ", ".join(f"`{s}`" for s in spelled)


def _groups(parser) -> list:
    """(title, actions) per argument group, argparse's own groups named as this page names them."""
    titles = {"positional arguments": "Arguments", "options": "Options", "optional arguments": "Options"}
    found = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._SubParsersAction)]
        if actions:
            found.append((titles.get(group.title, group.title), actions))
    return found


def _parser_section(parser, level: str, summary: str = "") -> list:
    lines = []
    if parser.description and parser.description.rstrip(".").lower() != (summary or "").lower():
        lines += [_cell(parser.description), ""]
    for title, actions in _groups(parser):
        lines += [f"{level} {title}", "", "| flag | meaning |", "|---|---|"]
        lines += [f"| {_spelling(a)} | {_help(a)} |" for a in actions]
        lines.append("")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                lines += [f"{level} `{name}`", ""] + _parser_section(sub, level + "#")
    return lines


def render() -> str:
    from dancedata.console import COMMANDS

    lines = [HEADER]
    for name, (module_name, summary, _) in COMMANDS.items():
        parser = parser_of(module_name)
        also = f"`python -m {module_name}`" + (" or `python train.py`" if name == "train" else "")
        lines += [f"## `dancedata {name}`", "", f"{_cell(summary[:1].upper() + summary[1:])}. Also: {also}.", ""]
        lines += _parser_section(parser, "###", summary)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = render()
    if check:
        with open(PAGE, encoding="utf-8") as handle:
            if handle.read() != text:
                print(f"{PAGE} is stale: run `python docs/gen_cli.py`", file=sys.stderr)
                return 1
        return 0
    with open(PAGE, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
