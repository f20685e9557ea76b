"""What a resume costs beyond building the model: making the training dataset at (epoch, step) and
reading its first batch, for each reader, at the start, the middle and the last step of an epoch.

    python benchmarks/resume_cost.py                 # AIST-sized synthetic build (13,939 examples)
    python benchmarks/resume_cost.py --examples 2048 # smaller

The readers start at a position directly (ReadConfig(epoch=, step=)), so the figure should not grow
with the step; a reader that replayed the epoch would take ~step/steps of an epoch's read. Best of
--best-of, seconds. The build is benchmarks/readers.py's (shared helper), written once into --data.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import readers  # noqa: E402  (benchmarks/readers.py: the synthetic build)


def first_batch_seconds(builder, source: str, cache: bool, epoch: int, step: int, steps: int, batch_size: int) -> float:
    import dancedata

    read = dancedata.ReadConfig(shuffle=True, seed=0, repeat=True, epoch=epoch, step=step, steps_per_epoch=steps,
                                cache=cache, source=source)
    started = time.perf_counter()
    dataset = builder.as_dataset("train", batch_size=batch_size, read_config=read,
                                 example_config=dancedata.ExampleConfig(seq_len=None, cast=False))
    next(iter(dataset))
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=readers.AIST_EXAMPLES)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--best-of", type=int, default=3)
    parser.add_argument("--data", default=os.path.join(readers.BENCHMARKS, "data", "resume_cost"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import dancedata

    folder = os.path.join(args.data, f"{args.examples}-{args.shards}")
    if not os.path.exists(os.path.join(folder, "manifest.json")):
        readers.make_build(folder, args.examples, args.shards)
    builder = dancedata.DatasetBuilder(folder)
    steps = -(-builder.info.splits["train"] // args.batch_size)
    rows = []
    for name, source, cache in (("mapped", "auto", False), ("cached", "auto", True), ("streamed", "stream", False)):
        for step in (0, steps // 2, steps - 1):
            seconds = min(first_batch_seconds(builder, source, cache, 3, step, steps, args.batch_size)
                          for _ in range(args.best_of))
            rows.append({"reader": name, "step": step, "steps": steps, "seconds": round(seconds, 4)})
            print(f"{name:9s} epoch 4 step {step:5d} of {steps}: first batch after {seconds:.3f} s", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
