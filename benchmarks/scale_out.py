"""What spreading out costs on one machine, in one run: the same videos built locally, as two
partitioned parts running at once, and on Beam's local runner (two processes); then reading the
training split directly and through a tf.data service (dispatcher and two workers on 127.0.0.1).

    python benchmarks/scale_out.py [--videos 16] [--seconds 4] [--epochs 20]

Builds are timed as a user sees them (wall clock of the whole command, TensorFlow start and
extractor set-up included, since every part and Beam worker pays those), and checked byte-identical.
On one 2-core machine spreading out cannot be faster; the ratios show the overhead a cluster pays
per machine. Needs ffmpeg for the inputs and apache-beam (pip install "dancedata[beam]").
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import videos as video_maker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--frames", "20", "--weights", "none", "--quiet", "--shard-mb", "0.2"]


def build_command(videos: str, out: str, *extra: str) -> list:
    return [sys.executable, "-m", "dancedata.build_shards", videos, "--out", out, *FLAGS, *extra]


def timed(commands: list) -> float:
    """Seconds until every command (started together) has finished; each must succeed."""
    started = time.perf_counter()
    processes = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            sys.exit(f"failed: {err[-2000:]}")
    return time.perf_counter() - started


def same_outputs(a: str, b: str) -> bool:
    names = sorted(n for n in os.listdir(a) if n != "build_info.json" and not n.startswith("."))
    return names == sorted(n for n in os.listdir(b) if n != "build_info.json" and not n.startswith(".")) and all(
        filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names
    )


def read_rates(dataset, epochs: int) -> tuple:
    """(examples/s while batches arrive, mean seconds from an epoch's last batch to its end)."""
    count, streaming, tails = 0, 0.0, []
    for _ in range(epochs):
        started = time.perf_counter()
        last = started
        for _, label in dataset:
            count += int(label.shape[0])
            last = time.perf_counter()
        streaming += last - started
        tails.append(time.perf_counter() - last)
    return count / streaming, sum(tails) / len(tails)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=5, help="epochs read in the tf.data service comparison")
    parser.add_argument("--read-videos", type=int, default=600, help="small clips built for the tf.data service comparison")
    parser.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "scale_out"))
    args = parser.parse_args()

    videos = os.path.join(args.data, f"{args.videos}x{args.seconds:g}s")
    video_maker.make(videos, args.videos, seconds=args.seconds, size="1280x720", fps=30, bitrate="4M")
    work = tempfile.mkdtemp(prefix="dancedata-scale-")
    try:
        local, parts, beam = (os.path.join(work, name) for name in ("local", "parts", "beam"))
        rows = [("local build, --workers 2", timed([build_command(videos, local, "--workers", "2")]))]
        rows.append(("2 partitioned parts at once, --workers 1 each",
                     timed([build_command(videos, parts, "--workers", "1", "--num-workers", "2", "--worker-index", str(i)) for i in range(2)])))
        rows.append(("Beam local runner, 2 processes",
                     timed([build_command(videos, beam, "--runner", "beam", "--", "--runner=DirectRunner",
                                          "--direct_running_mode=multi_processing", "--direct_num_workers=2")])))
        print(f"{args.videos} videos of {args.seconds:g} s, 1280x720 30 fps; wall seconds per build:")
        for name, seconds in rows:
            print(f"  {name:<48} {seconds:7.1f} s  {seconds / rows[0][1]:5.2f}x local")
        print(f"  byte-identical to local: parts {same_outputs(local, parts)}, beam {same_outputs(local, beam)}")

        sys.path.insert(0, ROOT)
        from dancedata import DatasetBuilder, ReadConfig, data_service

        # Reading needs many examples per epoch (each epoch through the service is a new job): small
        # clips through a cheap backbone give AIST-sized [20, 2048] float16 examples quickly.
        small = os.path.join(args.data, f"read-{args.read_videos}")
        video_maker.make(small, args.read_videos, seconds=1, size="320x240", fps=30, bitrate="500k")
        shards = os.path.join(work, "read")
        timed([[sys.executable, "-m", "dancedata.build_shards", small, "--out", shards, "--frames", "20", "--weights", "none",
                "--backbone", "ResNet50", "--image-size", "32", "--quiet", "--shard-mb", "8"]])
        builder = DatasetBuilder(shards)
        direct = builder.as_dataset("train", batch_size=32, read_config=ReadConfig(shuffle=True, seed=0))  # "service" below: 2 workers on 127.0.0.1
        dispatcher = data_service.start_dispatcher(port=0)
        workers = [data_service.start_worker(dispatcher.target) for _ in range(2)]
        served = builder.as_dataset("train", batch_size=32, read_config=ReadConfig(shuffle=True, seed=0, data_service=dispatcher.target))
        read_rates(served, 1)  # first job: connections and graph registration
        read_rates(direct, 1)
        rates = {"direct": read_rates(direct, args.epochs), "service": read_rates(served, args.epochs)}
        print(f"reading train ({builder.info.splits['train']} examples of [20, 2048] float16 x {args.epochs} epochs, "
              f"batch 32, no cache, {len(builder.files('train'))} shards):")
        for name, (rate, tail) in rates.items():
            print(f"  {name:<8} {rate:8.0f} examples/s while batches arrive ({rate / rates['direct'][0]:.2f}x direct); "
                  f"{tail:.2f} s from an epoch's last batch to its end")
        for server in workers + [dispatcher]:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
