"""What checking every record's CRCs costs: once, when a shard is first mapped (what the reader does),
against checking each batch's records as the batch is gathered.

    python benchmarks/check_cost.py [--examples 13939] [--shard-mb 100] [--batch-size 64]

Writes a synthetic schema-4 build whose records are AIST's size ([20, 2048] float16 features and the
other fields) with the build's writer (benchmarks/train_throughput.write_build), in shards of about
--shard-mb, into a temporary folder deleted at the end (the default, all 13,939 examples of AIST,
takes 1.15 GB of /tmp). Then, with the page cache warm, the fastest of --repeats passes of:

  once       what a process does when it first maps a shard: a new mapping and shard_index.check
             over it, for every shard, scaled per byte to all of AIST;
  per batch  the alternative: the CRCs of each batch's records, checked as a shuffled epoch gathers
             the batch (against MappedShards.gather of the same batch), summed over an epoch of AIST.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from train_throughput import write_build  # noqa: E402  (also puts the repository on sys.path)

AIST_EXAMPLES = 13939
TARGET_S = 2.0  # the whole check of all of AIST, once per process
EPOCHS = 30  # train.py's default


def check_batch(maps, files, offsets, lengths, crcs):
    """Checks the records of one batch as shard_index.check checks a shard's: the length's CRC and the
    data's CRC, both against the file, the latter also against the index. Raises on a mismatch."""
    from dancedata.shard_index import masked_crc

    for f, start, n, stored in zip(files.tolist(), offsets.tolist(), lengths.tolist(), crcs.tolist()):
        data = maps[f]
        if (masked_crc(data[start:start + 8]) != struct.unpack("<I", data[start + 8:start + 12])[0]
                or masked_crc(data[start + 12:start + 12 + n]) != stored
                or struct.unpack("<I", data[start + 12 + n:start + 16 + n])[0] != stored):
            raise RuntimeError(f"record at {start} of shard {f} fails its checksum")


def time_once(folder, manifest, entries, repeats):
    """(seconds, crc32c floor seconds) of what a process does when it first maps every shard: a new
    mapping (its pages faulted in as the check reads them) and shard_index.check over it; the fastest
    of `repeats` passes after one that warms the page cache. The floor runs the same bytes of a new
    mapping through crc32c in 8 MiB pieces, copied to bytes as check copies each record."""
    import mmap

    import google_crc32c

    from dancedata import shard_index

    frames, width = manifest["num_frames"], shard_index.feature_bytes(manifest)
    indexes = [shard_index.load(folder, entry) for entry in entries]

    def each_mapped(work):
        for entry, (header, table) in zip(entries, indexes):
            path = os.path.join(folder, entry["file"])
            with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
                view = memoryview(mapping)
                try:
                    work(view, header, table, path)
                finally:
                    view.release()

    def check(view, header, table, path):
        shard_index.check(view, header, table, path, frames, width)

    def crc(view, header, table, path):
        value = 0
        for a in range(0, len(view), 8 << 20):
            value = google_crc32c.extend(value, bytes(view[a:a + (8 << 20)]))

    each_mapped(check)  # the page cache warm, as right after a build or a copy
    best = {check: float("inf"), crc: float("inf")}
    for _ in range(repeats):
        for work in best:
            start = time.perf_counter()
            each_mapped(work)
            best[work] = min(best[work], time.perf_counter() - start)
    return best[check], best[crc]


def time_per_batch(folder, manifest, entries, batch_size, repeats, seed=0):
    """([seconds checking each batch], [seconds gathering each batch]) of the fastest of `repeats`
    shuffled epochs: each batch's features gathered as MappedShards gathers them, then its records'
    CRCs checked (check_batch), one after the other."""
    from dancedata import mapped_shards, shard_index

    mapped = mapped_shards.MappedShards(folder, manifest, entries)  # maps and checks once, untimed
    tables = [shard_index.load(folder, entry)[1] for entry in entries]
    files = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
    offsets, lengths, crcs = (np.concatenate([t[:, c] for t in tables]).astype(np.int64) for c in range(3))
    rng, best = np.random.default_rng(seed), None
    for _ in range(repeats):
        order = rng.permutation(len(files))
        checking, gathering = [], []
        for a in range(0, len(order), batch_size):
            batch = order[a:a + batch_size]
            start = time.perf_counter()
            mapped.gather(batch)
            middle = time.perf_counter()
            check_batch(mapped.maps, files[batch], offsets[batch], lengths[batch], crcs[batch])
            gathering.append(middle - start)
            checking.append(time.perf_counter() - middle)
        if best is None or sum(checking) < sum(best[0]):
            best = (checking, gathering)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=AIST_EXAMPLES,
                        help=f"synthetic examples to write (default {AIST_EXAMPLES}, all of AIST; fewer are scaled)")
    parser.add_argument("--shard-mb", type=float, default=100, help="shard size in MB (default 100, as builds write)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="passes of each measurement, fastest kept (default 3)")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "check.json"),
                        help="where the figures go (default benchmarks/results/check.json)")
    args = parser.parse_args()

    import google_crc32c

    from dancedata import schema

    pool = np.random.default_rng(0).standard_normal((64, 20, 2048)).astype(np.float16)  # any values cost the same
    sample = schema.serialize(schema.to_example(pool[0], np.ones(20, bool), np.arange(20), 0, {}, "float16"))
    shards = max(1, math.ceil(args.examples * (len(sample) + 16) / (args.shard_mb * 1e6)))
    folder = tempfile.mkdtemp(prefix="dancedata-check-bench-")
    try:
        start = time.perf_counter()
        manifest = write_build(folder, [pool[i % len(pool)] for i in range(args.examples)],
                               np.arange(args.examples) % 10, classes=10, shards=shards)
        write_s = time.perf_counter() - start
        entries = manifest["splits"]["train"]["shards"]
        once, floor = time_once(folder, manifest, entries, args.repeats)
        checking, gathering = time_per_batch(folder, manifest, entries, args.batch_size, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    size = sum(entry["bytes"] for entry in entries)
    record = size / args.examples
    aist_bytes = record * AIST_EXAMPLES
    scale = aist_bytes / size  # per byte
    once_aist, epoch_aist = once * scale, sum(checking) * scale
    batches = math.ceil(AIST_EXAMPLES / args.batch_size)
    check_batch_s, gather_batch_s = float(np.median(checking)), float(np.median(gathering))
    batch_bytes, features_bytes = args.batch_size * record, args.batch_size * 20 * 2048 * 2
    header = (f"machine: {platform.machine()}, {os.cpu_count()} cores; google-crc32c {google_crc32c.implementation}; "
              f"{args.examples} examples of [20, 2048] float16 ({record:.0f} bytes a record) in {shards} shard(s), "
              f"{size / 1e9:.2f} GB written in {write_s:.0f} s; page cache warm; fastest of {args.repeats}")
    rows = [
        (f"once, at first mapping: new mapping + shard_index.check, {shards} shard(s)", size, once),
        (f"  the same, scaled per byte to all of AIST ({AIST_EXAMPLES} examples)", aist_bytes, once_aist),
        ("  floor: new mapping + crc32c of the same bytes in 8 MiB pieces", size, floor),
        (f"per batch of {args.batch_size}, as gathered: its records' CRCs (median batch)", batch_bytes, check_batch_s),
        ("  the gather itself: its features (MappedShards.gather, median batch)", features_bytes, gather_batch_s),
        (f"  per batch, summed over one shuffled epoch of AIST ({batches} batches)", aist_bytes, epoch_aist),
    ]
    print(header + "\n")
    print("| check | MB | ms | GB/s |")
    print("|---|---:|---:|---:|")
    for name, nbytes, seconds in rows:
        print(f"| {name} | {nbytes / 1e6:.1f} | {seconds * 1e3:.2f} | {nbytes / seconds / 1e9:.1f} |")
    print(f"\nonce at map time, all of AIST: {once_aist:.2f} s (target < {TARGET_S:.0f} s: "
          f"{'met' if once_aist < TARGET_S else 'NOT met'}); {once / floor:.2f}x the crc32c floor")
    print(f"as gathered instead: +{check_batch_s * 1e3:.2f} ms on a {gather_batch_s * 1e3:.2f} ms gather per batch "
          f"({check_batch_s / gather_batch_s:.1f}x the gather, on the pipeline's path every step); "
          f"{epoch_aist:.2f} s an epoch of AIST = {epoch_aist / once_aist:.2f}x the whole once-per-process check, "
          f"every epoch: {EPOCHS * epoch_aist:.1f} s over train.py's default {EPOCHS} epochs, "
          f"against {once_aist:.2f} s once")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"header": header, "examples": args.examples, "shards": shards, "bytes": size,
                   "aist_bytes": aist_bytes,
                   "once_s": once, "once_aist_s": once_aist, "crc32c_floor_s": floor,
                   "check_batch_median_s": check_batch_s, "gather_batch_median_s": gather_batch_s,
                   "check_epoch_s": sum(checking), "gather_epoch_s": sum(gathering), "check_aist_epoch_s": epoch_aist},
                  handle, indent=2)


if __name__ == "__main__":
    main()
