"""Build sharded TFRecords from a folder of videos: `python -m dancedata.build_shards aist/`.

scan -> split -> (parallel threads) decode sampled frames -> batched extraction -> shards + manifest.
Decoding runs ahead of extraction through a bounded window, so memory stays flat however many
videos there are; a video that cannot be decoded is recorded in `skipped` and the build goes on.
"""
from __future__ import annotations

import collections
import concurrent.futures
import datetime
import os
import platform
import sys
import time

import numpy as np

from dancedata import cli, config, decode, manifest, scan, schema, split, write
from dancedata.config import BuildConfig, ExtractorConfig, SamplingConfig
from dancedata.errors import DecodeError, InputError


def build_shards(input_path: str, out: str = "tfrecords", **options) -> dict:
    """Builds shards of `input_path` into `out`; returns the manifest. Options are the CLI flags'
    names (frames=20, sampling="uniform", weights="none", split="sequence", ...)."""
    sampling, extractor, build = config.split_options({"out": out, **options}, SamplingConfig, ExtractorConfig, BuildConfig)
    return build_from_configs(input_path, sampling, extractor, build)


def decoded(rows: list, sampling: SamplingConfig, size: int, workers: int):
    """Yields (row, Clip or DecodeError) in row order, decoding up to 2 * workers videos ahead."""

    def job(row):
        return decode.read_clip_or_error(row["path"], sampling, size)

    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        window = collections.deque()
        for row in rows:
            window.append((row, pool.submit(job, row)))
            if len(window) >= 2 * workers:
                head, future = window.popleft()
                yield head, future.result()
        while window:
            head, future = window.popleft()
            yield head, future.result()


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", disable=quiet, dynamic_ncols=True, file=sys.stderr)


def build_from_configs(input_path: str, sampling: SamplingConfig, extractor_config: ExtractorConfig, build: BuildConfig) -> dict:
    from dancedata.extract import Extractor, FrameBatcher

    started = time.time()
    found = scan.scan(input_path, build.layout)
    skipped = list(found.skipped)
    if found.videos.empty:
        raise InputError(_nothing_usable(input_path, skipped))
    videos, classes, leaked = _label_and_split(found, build, skipped)
    write.check_free(build.out, build.overwrite)
    setup_started = time.time()
    extractor = Extractor(extractor_config)  # before touching --out: a weights problem leaves it as it was
    setup_s = time.time() - setup_started
    write.prepare(build.out, build.overwrite)
    itemsize = np.dtype(build.dtype).itemsize
    ordered = write.plan(videos, build.seed, sampling.frames * extractor.feature_dim * itemsize + 1024, build.shard_mb)
    rows = ordered.to_dict("records")

    shards = write.ShardSequence(build.out, ordered)
    frames_done = values_lost = values_seen = 0
    batcher = FrameBatcher(extractor)
    progress = _progress(len(rows), build.quiet)

    def emit(row, clip, features):
        nonlocal frames_done, values_lost, values_seen
        shard = shards.get(row["split"], row["shard"])
        if isinstance(clip, DecodeError):
            entry = {"path": row["path"], "reason": str(clip)}
            shard.skipped.append(entry)
            skipped.append(entry)
        else:
            full = np.zeros((sampling.frames, extractor.feature_dim), np.float32)
            full[clip.mask] = features
            shard.write(schema.to_example(full, clip.mask, clip.indices, row["label"], row, build.dtype), row["genre"])
            frames_done += len(features)
            values_lost += schema.values_lost(features, build.dtype)
            values_seen += features.size
        progress.update(1)
        progress.set_postfix_str(f"{frames_done / max(time.time() - started, 1e-9):.1f} frames/s", refresh=False)

    size = extractor_config.image_size
    no_frames = np.empty((0, size, size, 3), np.uint8)
    for row, clip in decoded(rows, sampling, size, build.workers):
        # A failed video passes through the batcher with no frames, so it is recorded in writing order.
        frames = no_frames if isinstance(clip, DecodeError) else clip.frames
        if not isinstance(clip, DecodeError):
            clip.frames = None  # the batcher owns the pixels from here
        for (done_row, done_clip), features in batcher.add((row, clip), frames):
            emit(done_row, done_clip, features)
    for (done_row, done_clip), features in batcher.flush():
        emit(done_row, done_clip, features)
    shards.close()
    progress.close()

    written = sum(r["num_examples"] for records in shards.records.values() for r in records)
    if written == 0:
        write.prepare(build.out, overwrite=True)
        raise InputError(_nothing_usable(input_path, skipped))
    result = _manifest(input_path, found.layout, classes, sampling, extractor, build, shards, skipped, leaked, started)
    result["build"]["extractor_setup_s"] = round(setup_s, 2)
    result["precision_loss"] = {"dtype": build.dtype, "fraction_of_values_lost": values_lost / max(values_seen, 1)}
    manifest.write(build.out, result)
    return result


def _label_and_split(found, build: BuildConfig, skipped: list):
    """Adds `label` and `split` to the scanned table; records videos the split rule excludes."""
    videos = found.videos.copy()
    classes = scan.classes(found.layout, videos)
    videos["label"] = videos.genre.map({name: i for i, name in enumerate(classes)})
    videos["split"] = split.assign(videos, build.split, build.val_fraction, build.test_fraction, build.seed)
    leaked = split.leaked_sequences(videos, videos.split)
    if build.split != "random":  # random is the notebook's leaky split, kept on purpose for comparison
        split.check_no_leakage(videos, videos.split)
    excluded = videos.path[videos.split == split.EXCLUDED]
    skipped += [{"path": path, "reason": "excluded by the crossmodal split rule"} for path in excluded]
    return videos, classes, leaked


def _nothing_usable(input_path: str, skipped: list) -> str:
    if not skipped:
        return f"no video files in {input_path}"
    reasons = collections.Counter(entry["reason"] for entry in skipped).most_common(3)
    listed = "; ".join(f"{count} x {reason}" for reason, count in reasons)
    return f"no usable video in {input_path}: {len(skipped)} file(s) skipped ({listed})"


def _versions() -> dict:
    import cv2
    import keras
    import pandas
    import tensorflow as tf

    from dancedata import __version__

    return {
        "dancedata": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "python": platform.python_version(),
    }


def _manifest(input_path, layout, classes, sampling, extractor, build, shards, skipped, leaked, started) -> dict:
    splits = {
        name: {
            "num_examples": sum(r["num_examples"] for r in records),
            "genres": dict(sorted(shards.genres.get(name, {}).items())),
            "shards": records,
        }
        for name, records in shards.records.items()
    }
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "feature_spec": schema.feature_spec(sampling.frames, extractor.feature_dim, build.dtype),
        "classes": classes,
        "num_frames": sampling.frames,
        "feature_dim": extractor.feature_dim,
        "feature_dtype": build.dtype,
        "extractor": extractor.manifest_entry(),
        "sampling": config.asdict(sampling),
        "split": {
            "strategy": build.split,
            "val_fraction": build.val_fraction,
            "test_fraction": build.test_fraction,
            "seed": build.seed,
            "leaked_sequences": len(leaked),
        },
        "splits": splits,
        "skipped": skipped,
        "source": {"path": os.path.abspath(input_path), "layout": layout},
        "build": {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(time.time() - started, 2),
            "versions": _versions(),
        },
    }


def _parser():
    parser = cli.ArgumentParser(
        prog="python -m dancedata.build_shards",
        description="Decode each video once, extract frame features in batches, write sharded TFRecords + manifest.json.",
    )
    parser.add_argument("input", help="folder of videos (AIST names, or one subfolder per class) or a CSV of path,label")
    config.add_flags(parser, SamplingConfig, ExtractorConfig, BuildConfig)
    return parser


def main(argv=None) -> int:
    from dancedata import inspect

    args = _parser().parse_args(argv)
    configs = [config.from_flags(args, cls) for cls in (SamplingConfig, ExtractorConfig, BuildConfig)]
    result = build_from_configs(args.input, *configs)
    print(inspect.summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "build_shards"))
