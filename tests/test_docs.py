"""The docs cannot drift from the code: the site builds with warnings as errors (broken links, missing
pages and anchors fail), every ```python block of the docs and the README runs against a real small
build, the CLI reference equals what the parsers say now, and the README stays a landing page.

Blocks run page by page, in order, in one namespace per page, with the working directory a copy of a
folder holding `aist/` (sample videos made by `python -m dancedata.sample`) and `tfrecords/` (their
build with `--weights none`), made once per session by the real commands. ```py blocks are shown,
not run. A block that needs an optional package says so on the line just above its fence,
`<!-- needs: torch -->` (hidden on GitHub and on the site): its page runs without it, and the block
runs, after the page's blocks before it, as a test of its own that is skipped where the package is
not installed."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from typing import NamedTuple

import pytest

from conftest import BUILD_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
README_LIMIT = 12_000
# 4 genres x 3 dancers x 2 cameras of 1 s at 160x96, plus the four awkward files: every split has examples.
SAMPLE_FLAGS = ["--dancers", "3", "--choreographies", "1", "--cameras", "2", "--seconds", "1", "--width", "160",
                "--height", "96"]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n"
                   r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S)
NEEDS = re.compile(r"^<!--\s*needs:\s*(?P<modules>[\w.]+(?:\s*,\s*[\w.]+)*)\s*-->$")


class Block(NamedTuple):
    line: int  # of the block's first line of code
    source: str
    needs: tuple = ()  # the optional modules it imports, from a `<!-- needs: a, b -->` line just above the fence


def pages() -> list:
    found = sorted(name for name in os.listdir(DOCS) if name.endswith(".md"))
    return [os.path.join("docs", name) for name in found] + ["README.md"]


def python_blocks(text: str) -> list:
    """A Block for each fenced block whose info string is exactly `python`."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("info").strip() == "python":
            line = text.count("\n", 0, match.start()) + 2
            above = text[:match.start()][:-1].rpartition("\n")[2].strip()  # the line just above the fence
            needs = NEEDS.match(above)
            modules = tuple(m.strip() for m in needs.group("modules").split(",")) if needs else ()
            blocks.append(Block(line, textwrap.dedent(match.group("body")), modules))
    return blocks


def pages_with_blocks() -> list:
    return [page for page in pages() if [block for block in python_blocks(read(page)) if not block.needs]]


def optional_blocks() -> list:
    """(page, line) of each block that needs an optional module."""
    return [pytest.param(page, block.line, id=f"{page}:{block.line}-{'+'.join(block.needs)}")
            for page in pages() for block in python_blocks(read(page)) if block.needs]


def read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture(scope="session")
def docs_folder(tmp_path_factory):
    """aist/ and tfrecords/, made by the commands a user runs (in child processes: no fork of this one)."""
    base = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for argv in (["-m", "dancedata.sample", "aist/", *SAMPLE_FLAGS],
                 ["-m", "dancedata.build_shards", "aist/", "--out", "tfrecords/", *BUILD_FLAGS]):
        done = subprocess.run([sys.executable, *argv], cwd=base, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    assert (base / "tfrecords" / "manifest.json").is_file()
    return base


def test_the_block_finder_takes_exactly_python_blocks():
    text = "x\n```python\na = 1\n```\n```py\nb = 2\n```\n```python3\nc\n```\n  ```python\n  d = 4\n  ```\n"
    assert python_blocks(text) == [(3, "a = 1\n", ()), (12, "d = 4\n", ())]


def test_the_block_finder_reads_what_a_block_needs_from_the_line_above_only():
    text = ("<!-- needs: torch -->\n```python\na = 1\n```\n<!-- needs: jax, flax.linen -->\n```python\nb = 2\n```\n"
            "<!-- needs: torch -->\n\n```python\nc = 3\n```\n")
    assert [block.needs for block in python_blocks(text)] == [("torch",), ("jax", "flax.linen"), ()]


@pytest.mark.parametrize("page", pages_with_blocks())
def test_the_python_blocks_of_a_page_run(page, docs_folder, tmp_path, monkeypatch):
    """Every block of the page but those that need an optional module (each a test below)."""
    work = tmp_path / "work"
    shutil.copytree(docs_folder, work)  # a page may write files: each starts from the same folder
    monkeypatch.chdir(work)
    failure = run_blocks(page, [block for block in python_blocks(read(page)) if not block.needs])
    if failure:
        pytest.fail(failure)


@pytest.mark.parametrize("page, line", optional_blocks())
def test_a_block_that_needs_an_optional_module_runs_where_it_is_installed(page, line, docs_folder, tmp_path, monkeypatch):
    """The page's blocks up to this one, those that need no missing module, then this one."""
    blocks = python_blocks(read(page))
    [block] = [block for block in blocks if block.line == line]
    for module in block.needs:
        pytest.importorskip(module)
    work = tmp_path / "work"
    shutil.copytree(docs_folder, work)
    monkeypatch.chdir(work)
    before = [b for b in blocks if b.line < line and all(installed(module) for module in b.needs)]
    failure = run_blocks(page, [*before, block])
    if failure:
        pytest.fail(failure)


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its package is missing
        return False


def test_the_readme_examples_are_run():
    """The README's Python examples are ```python blocks (run above), none merely shown (```py), and the
    one for PyTorch is a block of its own, so that the others run where torch is not installed."""
    readme = read("README.md")
    infos = [match.group("info").strip() for match in FENCE.finditer(readme)]
    assert infos.count("python") >= 3 and not [info for info in infos if info in ("py", "python3", "pycon")], infos
    blocks = python_blocks(readme)
    assert [block.needs for block in blocks if "torch" in block.source] == [("torch",)]
    assert "torch" not in "".join(block.source for block in blocks if not block.needs)


def run_blocks(page: str, blocks: list):
    """Runs `blocks` of a page in order in one namespace; the first failure as one message naming
    the page, the block's line and its first line, or None."""
    namespace = {"__name__": "__docs__"}
    for line, source, _ in blocks:
        first = source.strip().splitlines()[0]
        try:
            exec(compile(source, f"{page}:{line}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - reported with the page and the block
            return f"{page}, the block at line {line} ({first!r}) failed: {type(error).__name__}: {error}"
    return None


def test_a_failing_block_is_reported_with_its_page_and_first_line():
    text = "# Page\n```python\nvalue = 2\n```\nshown:\n```py\nraise SystemExit\n```\n```python\n" \
           "assert value == 2  # one namespace per page\n1 / 0\n```\n"
    expected = ("docs/x.md, the block at line 10 ('assert value == 2  # one namespace per page') failed: "
                "ZeroDivisionError: division by zero")
    assert run_blocks("docs/x.md", python_blocks(text)) == expected


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    done = mkdocs_build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, warnings
    assert (tmp_path / "site" / "format" / "index.html").is_file()


def test_a_broken_link_fails_the_site_build(tmp_path):
    """The build above can fail: the same configuration with one link to a missing page does."""
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(os.path.join(ROOT, "mkdocs.yml"), copy / "mkdocs.yml")
    with open(copy / "docs" / "index.md", "a", encoding="utf-8") as handle:
        handle.write("\nSee [the missing page](no-such-page.md).\n")
    done = mkdocs_build(str(copy), tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stdout + done.stderr


def mkdocs_build(folder, site):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    config = os.path.join(folder, "mkdocs.yml")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", str(site)]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_every_page_is_in_the_nav():
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as handle:
        nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", handle.read(), re.M))
    assert nav == {os.path.basename(page) for page in pages() if page.startswith("docs")}


def test_the_cli_reference_is_what_the_parsers_say():
    done = subprocess.run([sys.executable, os.path.join(DOCS, "gen_cli.py"), "--check"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"docs/cli.md is stale; regenerate it: python docs/gen_cli.py\n{done.stderr[-2000:]}"


def test_the_cli_reference_says_what_help_says():
    """An oracle apart from the generator: each flag the build's --help prints appears in docs/cli.md."""
    done = subprocess.run([sys.executable, "-m", "dancedata.build_shards", "--help"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    flags = set(re.findall(r"^\s+(--[a-z][a-z-]*)", done.stdout, re.M))
    assert len(flags) > 20, done.stdout
    build = read("docs/cli.md").split("## `dancedata build`")[1].split("\n## ")[0]
    assert not [flag for flag in flags if f"`{flag}" not in build]
    assert "one video on CPU" in build  # the --batch-size help the docs state (building.md)


def test_the_readme_is_a_landing_page():
    size = os.path.getsize(os.path.join(ROOT, "README.md"))
    assert size <= README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT} and move the rest to docs/"
    readme = read("README.md")
    for page in ("building", "reading", "training", "predicting", "format", "cli", "troubleshooting", "performance"):
        assert f"docs/{page}.md" in readme, page
    linked = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert linked and not [path for path in linked if not os.path.isfile(os.path.join(ROOT, path))]
