"""Build sharded TFRecords from a folder of videos: `python -m dancedata.build_shards aist/`.

scan -> plan (split and shard of every video) -> prepare the output folder (refuse to mix, resume,
update) -> run the work units still missing -> manifest. Run the same command again after a kill and
it continues where it stopped; the result is byte-identical to an uninterrupted build.
"""
from __future__ import annotations

import collections
import datetime
import os
import platform
import socket
import sys
import time

import numpy as np

from dancedata import cli, config, manifest, plan as plan_lib, runners, scan, schema, write
from dancedata.config import BuildConfig, ExtractorConfig, SamplingConfig
from dancedata.errors import InputError


def build_shards(input_path: str, out: str = "tfrecords", **options) -> dict:
    """Builds shards of `input_path` into `out`; returns the manifest. Options are the CLI flags'
    names (frames=20, sampling="uniform", weights="none", split="sequence", update=True, ...)."""
    sampling, extractor, build = config.split_options({"out": out, **options}, SamplingConfig, ExtractorConfig, BuildConfig)
    return build_from_configs(input_path, sampling, extractor, build)


def _progress(quiet: bool):
    from tqdm import tqdm

    return tqdm(total=0, unit="video", disable=quiet, dynamic_ncols=True, file=sys.stderr)


def build_from_configs(input_path: str, sampling: SamplingConfig, extractor_config: ExtractorConfig, build: BuildConfig) -> dict:
    from dancedata.extract import Extractor

    started = time.time()
    found = scan.scan(input_path, build.layout)
    if found.videos.empty:
        raise InputError(_nothing_usable(input_path, found.skipped))
    folder = write.OutputFolder(build.out)
    setup_started = time.time()
    extractor = Extractor(extractor_config, frames_per_video=sampling.frames)  # before touching --out
    setup_s = time.time() - setup_started
    plan = plan_lib.make_plan(found, sampling, extractor.manifest_entry(), extractor.feature_dim, build)
    prepared = runners.prepare(plan, folder, overwrite=build.overwrite, update=build.update)
    progress = _progress(build.quiet)
    try:
        records = runners.run_local(plan, folder, prepared, extractor, sampling, build, progress)
    finally:
        progress.close()
    result = _manifest(input_path, plan, extractor, sampling, build, records)
    if not any(split["num_examples"] for split in result["splits"].values()):
        raise InputError(_nothing_usable(input_path, result["skipped"]))
    manifest.write(build.out, result)
    runners.finish(folder, prepared, plan)
    built = [r for r in records if r["file"] not in prepared.done]
    write.write_json(os.path.join(build.out, write.BUILD_INFO), {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 2),
        "extractor_setup_s": round(setup_s, 2),
        "host": socket.gethostname(),
        "workers": build.workers,
        "shards_built": len(built),
        "shards_kept": len(prepared.done),
    })
    return result


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


def _manifest(input_path, plan, extractor, sampling, build, records) -> dict:
    """The manifest: a pure function of the plan and the committed records (no time, no host)."""
    splits = {}
    for record in records:
        entry = splits.setdefault(record["split"], {"num_examples": 0, "genres": {}, "groups": plan.groups.get(record["split"], {}), "shards": []})
        entry["num_examples"] += record["num_examples"]
        for genre, count in record["genres"].items():
            entry["genres"][genre] = entry["genres"].get(genre, 0) + count
        entry["shards"].append({key: record[key] for key in ("file", "num_examples", "sha256")})
    for entry in splits.values():
        entry["genres"] = dict(sorted(entry["genres"].items()))
    skipped = plan.skipped + [{"path": e["path"], "reason": e["reason"]} for r in records for e in r["skipped"]]
    truncated = [entry for record in records for entry in record["truncated"]]
    short = sum(record["short_examples"] for record in records)
    lost, seen = sum(r["values_lost"] for r in records), sum(r["values_seen"] for r in records)
    warnings = list(plan.warnings)
    empty = [name for name, entry in splits.items() if not entry["num_examples"]]
    if empty:
        warnings.append(f"split(s) {', '.join(empty)} have no example: every video planned there failed to decode")
    if short:
        warnings.append(
            f"{short} example(s) have fewer real frames than the {sampling.frames} asked for "
            f"({len(truncated)} of them from truncated streams); their masks mark the padding"
        )
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "feature_spec": schema.feature_spec(sampling.frames, extractor.feature_dim, build.dtype),
        "classes": plan.classes,
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
            "leaked_sequences": len(plan.leaked),
            "grouped": scan.has_grouping(plan.videos),
            "shared_with_train": plan.shared,
        },
        "splits": splits,
        "skipped": sorted(skipped, key=lambda e: (e["path"], e["reason"])),
        "truncated": sorted(truncated, key=lambda e: e["path"]),
        "short_examples": short,
        "warnings": warnings,
        "precision_loss": {"dtype": build.dtype, "fraction_of_values_lost": lost / max(seen, 1)},
        "source": {"path": os.path.abspath(input_path), "layout": plan.layout},
        "build": {"versions": _versions(), "info": write.BUILD_INFO},
    }


def _parser():
    parser = cli.ArgumentParser(
        prog="python -m dancedata.build_shards",
        description="Decode each video once, extract frame features in batches, write sharded TFRecords + manifest.json. "
        "Run the same command again after an interruption to resume.",
    )
    parser.add_argument("input", help="folder of videos (AIST names, or one subfolder per class) or a CSV of path,label")
    config.add_flags(parser, SamplingConfig, ExtractorConfig, BuildConfig)
    return parser


def main(argv=None) -> int:
    from dancedata import inspect

    args = _parser().parse_args(argv)
    configs = [config.from_flags(args, cls) for cls in (SamplingConfig, ExtractorConfig, BuildConfig)]
    result = build_from_configs(args.input, *configs)
    print(inspect.summary(result, info_file=inspect.build_info(configs[2].out)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "build_shards", interrupted="committed shards are kept; run the same command to resume"))
