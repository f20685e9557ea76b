"""Scratch (issue 30 prototypes): a shared harness for benchmarks/proto_*.py. Not part of the package.

Builds (or reuses) a synthetic build with benchmarks/readers.make_build, and times callables
epoch -> iterable of batches, interleaved, best of N, wall and process CPU, in one process."""
from __future__ import annotations

import os
import random
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCHMARKS)
import readers  # noqa: E402  (puts the repo root on sys.path)

# DANCEDATA_PATH: a frozen copy of the package (git archive HEAD dancedata | tar -x -C DIR) so that edits in
# progress under dancedata/ do not move the baseline mid-run.
if os.environ.get("DANCEDATA_PATH"):
    sys.path.insert(0, os.environ["DANCEDATA_PATH"])

import numpy as np  # noqa: E402


def build(examples: int, shards: int, root: str = "/tmp/ddproto") -> tuple[str, str]:
    folder = os.path.join(root, f"build-{examples}-{shards}")
    path = os.path.join(folder, "features.npy")
    if not os.path.exists(path):
        readers.make_build(folder, examples, shards)
    return folder, path


def run_pass(make, epoch):
    batches = make(epoch)
    cpu, start, n = time.process_time(), time.perf_counter(), 0
    for batch in batches:
        n += count(batch)
    return time.perf_counter() - start, time.process_time() - cpu, n


def count(batch) -> int:
    if isinstance(batch, dict):
        batch = batch["label"]
    elif isinstance(batch, (int, float)):
        return batch
    if isinstance(batch, np.ndarray):
        return len(batch)
    if isinstance(batch, (tuple, list)):
        batch = batch[-1]
    return int(batch.shape[0]) if hasattr(batch, "shape") else len(batch)


def bench(rows: dict, rounds: int, expected: int | None = None, seed: int = 0, warm: int = 1) -> dict:
    """{name: [(wall s, cpu s, examples) of each round]}: one untimed pass each first, then `rounds`
    rounds, each in a new random order (the limit's pass of the same round is the yardstick)."""
    for name, make in rows.items():
        for _ in range(warm):
            _, _, seen = run_pass(make, 0)
        if expected is not None and seen != expected and not name.startswith(("limit", "floor")):
            raise RuntimeError(f"{name}: {seen} examples, not {expected}")
    rng, runs = random.Random(seed), {name: [] for name in rows}
    names = list(rows)
    for r in range(rounds):
        rng.shuffle(names)
        for name in names:
            runs[name].append(run_pass(rows[name], r + 1))
    return runs


def table(runs: dict, limit: str, header: str = "") -> str:
    """best ex/s and its ratio to the limit's best; the median over rounds of the ratio to the limit's
    pass in the same round; the smallest and the median CPU µs per example."""
    lbest = max(n / w for w, _, n in runs[limit])
    lines = [header, "| row | best ex/s | best ÷ limit best | median of per-round ÷ limit | CPU µs/ex min | median |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, passes in runs.items():
        best = max(n / w for w, _, n in passes)
        ratios = [(n / w) / (ln / lw) for (w, _, n), (lw, _, ln) in zip(passes, runs[limit])]
        cpus = [c / n * 1e6 for _, c, n in passes]
        lines.append(f"| {name} | {best:,.0f} | {best / lbest:.2f} | {statistics.median(ratios):.2f} | "
                     f"{min(cpus):.1f} | {statistics.median(cpus):.1f} |")
    return "\n".join(lines)


def limit_row(memmap, source, batch_size):
    reused = np.empty((batch_size,) + memmap.shape[1:], memmap.dtype)

    def gather(epoch):
        batches = list(source.batches(batch_size, seed=0, epoch=epoch))
        return (np.take(memmap, keys, axis=0, out=reused[:len(keys)], mode="clip") for keys in batches)

    return gather
