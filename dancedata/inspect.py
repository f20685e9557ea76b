"""`python -m dancedata.inspect tfrecords/`: what a build holds, as a person wants to read it."""
from __future__ import annotations

import collections
import json

from dancedata import cli, fs, manifest, naming, shard_index, tfds_metadata
from dancedata.errors import DecodeError, InputError, ShardError

SPLIT_ORDER = ("train", "val", "test")


def _genre_table(info: dict) -> list:
    splits = [name for name in SPLIT_ORDER if name in info["splits"]]
    lines = [f"  {'genre':<20}" + "".join(f"{name:>8}" for name in splits) + f"{'total':>8}"]
    for genre in info["classes"]:
        counts = [info["splits"][name]["genres"].get(genre, 0) for name in splits]
        if any(counts):
            label = f"{genre} ({naming.genre_name(genre)})" if genre in naming.GENRES else naming.shown(genre)
            lines.append(f"  {label:<20}" + "".join(f"{c:>8}" for c in counts) + f"{sum(counts):>8}")
    totals = [info["splits"][name]["num_examples"] for name in splits]
    lines.append(f"  {'all':<20}" + "".join(f"{c:>8}" for c in totals) + f"{sum(totals):>8}")
    return lines


def build_info(folder: str) -> dict:
    """Timings and host of the build in `folder` (build_info.json), or {} when there is none."""
    import tensorflow as tf

    path = folder.rstrip("/") + "/build_info.json"
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            found = json.load(handle)
    except (tf.errors.OpError, ValueError, RecursionError):
        return {}
    return found if isinstance(found, dict) else {}  # timings only: damage to them costs a line of the summary


def held_out(info: dict) -> list:
    """What val and test share with train, in words: what an accuracy on them can and cannot claim."""
    split = info["split"]
    lines = []
    for name, shared in split.get("shared_with_train", {}).items():
        parts = [f"{v['shared']} of {v['total']} {key}" for key, v in shared.items()]
        if parts:
            lines.append(f"  {name} shares with train: " + ", ".join(parts))
    if lines:
        lines.insert(0, f"held out by the {split['strategy']} split:")
    return lines


def summary(info: dict, show_paths: int = 5, info_file: dict | None = None) -> str:
    extractor, sampling, split = info["extractor"], info["sampling"], info["split"]
    lines = [
        f"examples: [{info['num_frames']} frames x {info['feature_dim']}] {info['feature_dtype']} features, "
        f"{len(info['classes'])} classes (schema v{info['schema_version']})",
        f"extractor: {extractor['backbone']} @{extractor['image_size']}px, weights={extractor['weights']}",
        f"sampling: {sampling['sampling']}{' over key frames only' if sampling.get('keyframes') else ''}, {sampling['frames']} frames"
        + (f", stride {sampling['stride'] or 'for ' + str(sampling['fps']) + ' fps'}" if sampling["sampling"] == "stride" else ""),
        f"split: {split['strategy']} (val {split['val_fraction']}, test {split['test_fraction']}, seed {split['seed']})"
        + (f"; {split['leaked_sequences']} sequences span splits" if split.get("leaked_sequences") else ""),
        "",
        *_genre_table(info),
        "",
        *held_out(info),
    ]
    for name in SPLIT_ORDER:
        if name in info["splits"]:
            shards = info["splits"][name]["shards"]
            lines.append(f"{name}: {len(shards)} shard(s), e.g. {shards[0]['file']}")
    shards = [s for split in info["splits"].values() for s in split["shards"]]
    if shards and all("index" in s and "bytes" in s for s in shards):
        shard_bytes, index_bytes = sum(s["bytes"] for s in shards), sum(s["index"]["bytes"] for s in shards)
        lines.append(f"size: {shard_bytes / 1e6:.1f} MB of shards and {index_bytes / 1e6:.2f} MB of indexes (what the fast "
                     "reader maps; every record's checksum is checked before training uses it)")
    elif info.get("schema_version") in (2, 3):
        lines.append(f"schema v{info['schema_version']}: training streams the TFRecords (slower); the build command with "
                     "--update brings it to v4 without decoding any video")
    frames = info.get("frames")
    if frames:  # kept with --keep-frames: what they take of the shards above
        examples = sum(split["num_examples"] for split in info["splits"].values())
        quality = f" quality {frames['jpeg_quality']}" if "jpeg_quality" in frames else ""
        lines.append(f"frames: {frames['format']}{quality} at {frames['image_size']}px, {frames['bytes'] / 1e6:.1f} MB "
                     f"({frames['bytes'] / max(examples, 1) / 1e6:.3f} MB a video); re-extract with build_shards --from-frames")
    skipped = info["skipped"]
    lines.append(f"skipped: {len(skipped)} file(s)")
    by_reason = collections.defaultdict(list)
    for entry in skipped:
        by_reason[entry["reason"]].append(entry["path"])
    for reason, paths in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        lines.append(f"  {len(paths):>5} x {reason}")
        lines += [f"          {path}" for path in paths[:show_paths]]
        if len(paths) > show_paths:
            lines.append(f"          ... and {len(paths) - show_paths} more")
    truncated = info.get("truncated", [])
    if truncated:
        lines.append(f"truncated: {len(truncated)} video(s) whose stream ended before a sampled frame")
        for entry in truncated[:show_paths]:
            lines.append(f"          {entry['path']} (claims {entry['claimed_frames']} frames, {entry['real_frames']} kept)")
        if len(truncated) > show_paths:
            lines.append(f"          ... and {len(truncated) - show_paths} more")
    if info.get("short_examples"):
        lines.append(f"short: {info['short_examples']} example(s) with fewer than {info['num_frames']} real frames")
    for warning in info.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    lost = info.get("precision_loss", {}).get("fraction_of_values_lost", 0)
    if lost > 0.001:
        lines.append(
            f"WARNING: {lost:.1%} of feature values underflowed to 0 (or overflowed) in {info['feature_dtype']}: "
            "this backbone's features are out of float16 range; rebuild with --dtype float32"
        )
    build = info_file or {}
    if "created" not in build:  # schema 1 kept timings in the manifest
        build = info.get("build", {})
    if build.get("created"):
        lines.append(f"built {build.get('created')} in {build.get('elapsed_s')} s")
    return "\n".join(lines)


def damaged(folder: str, info: dict, verify: bool = False) -> list:
    """[(path, reason)] of the files that are missing, cut, damaged or not the build's. Without `verify`
    (cheap: no shard read whole): each shard is there at its recorded size, its index matches the manifest
    and its records' framing matches the index (a cut, appended bytes, a swapped or replaced shard), and
    every small metadata file matches its checksum. With it: every record's checksums (what training
    checks) and every shard's and index's sha256 too."""
    found = metadata_damage(folder, info)
    if verify:
        from dancedata.read import DatasetBuilder

        builder = DatasetBuilder(folder)
        for split in info["splits"]:
            bad = dict(builder.bad_shards(split))
            for shard, path in zip(info["splits"][split]["shards"], builder.files(split)):
                if path not in bad and (problem := builder.sha256_problem(shard, path)):
                    bad[path] = problem
            found += sorted(bad.items())
        return found
    for split in info["splits"].values():
        for shard in split["shards"]:
            path = fs.join(folder, shard["file"])
            if not fs.exists(path):
                found.append((path, "missing"))
            elif "bytes" in shard and (problem := shard_index.size_problem(path, fs.size(path), shard["bytes"])):
                found.append((path, problem))
            elif "index" in shard:
                try:
                    header, table = shard_index.load(folder, shard)
                    problem = shard_index.framing_problem(path, header, table, info["num_frames"],
                                                          shard_index.feature_bytes(info))
                except ShardError as error:
                    problem = str(error).split(". Rebuild it")[0]
                if problem:
                    found.append((path, problem))
    return found


def metadata_damage(folder: str, info: dict) -> list:
    """[(path, reason)] of the small files beside the shards whose bytes are not the ones the manifest
    recorded: feature_statistics.json (train.py standardises with it) and the TFDS metadata."""
    import hashlib

    expected = {}
    statistics = info.get("feature_statistics")
    if statistics and "sha256" in statistics:
        expected[manifest.STATISTICS] = statistics["sha256"]
    expected.update(info.get("tfds_metadata", {}))
    found = []
    for name, digest in expected.items():
        path = fs.join(folder, name)
        if not fs.exists(path):
            found.append((path, "missing"))
            continue
        with fs.open_file(path, "rb") as handle:
            if hashlib.sha256(handle.read()).hexdigest() != digest:
                found.append((path, "does not match its sha256 in the manifest: it changed or is corrupt"))
    return found


def unchecked(info: dict) -> list:
    """The metadata files this build recorded no checksum for (builds before they were recorded)."""
    names = [] if "tfds_metadata" in info else list(tfds_metadata.FILES)
    if info.get("feature_statistics") and "sha256" not in info["feature_statistics"]:
        names.insert(0, manifest.STATISTICS)
    return names


def repair(folder: str, info: dict) -> tuple[list, list]:
    """Rebuilds, from their shards alone, the indexes that are missing, damaged or stale where the shard
    itself is intact. Returns (paths rebuilt, [(index path, why not)]): a shard damaged itself is left to
    the build, which redoes it."""
    from dancedata import folder_lock

    rebuilt, failed = [], []
    with folder_lock.briefly(folder, "inspect --repair", True):  # never beside a build writing the same indexes
        for split in info["splits"].values():
            for shard in split["shards"]:
                try:
                    if shard_index.repair(folder, info, shard):
                        rebuilt.append(shard_index.index_path(folder, shard))
                except ShardError as error:
                    failed.append((shard_index.index_path(folder, shard), str(error).split(". Rebuild it")[0]))
    return rebuilt, failed


def preview(info: dict, video: str, out: str, columns: int = 5) -> str:
    """Writes a PNG contact sheet of the frames the build's sampling keeps from `video` (after crop
    and resize, as the backbone sees them), each labelled with its frame number and time; returns
    `out`. Padding slots (the video has fewer frames than asked for) are drawn grey and say so."""
    import cv2
    import numpy as np

    from dancedata import decode
    from dancedata.config import SamplingConfig

    sampling = SamplingConfig(**info["sampling"])
    size = info["extractor"]["image_size"]
    try:
        clip = decode.read_clip(video, sampling, size)
    except DecodeError as error:
        raise InputError(f"cannot preview {video}: {error}") from None
    tile = max(size, 160)  # small inputs are enlarged so the labels stay legible
    label_height = 22
    rows = -(-len(clip.mask) // columns)
    sheet = np.full((rows * (tile + label_height), columns * tile, 3), 255, np.uint8)
    real = iter(clip.frames)
    for slot, kept in enumerate(clip.mask):
        top, left = (slot // columns) * (tile + label_height), (slot % columns) * tile
        if kept:
            image = cv2.resize(next(real), (tile, tile), interpolation=cv2.INTER_NEAREST)
            sheet[top + label_height: top + label_height + tile, left: left + tile] = image
            time_text = f"{clip.times[slot]:.2f}s" if clip.times is not None else ""
            text = f"{slot}: frame {clip.indices[slot]} {time_text}"
        else:
            sheet[top + label_height: top + label_height + tile, left: left + tile] = 200
            text = f"{slot}: padding (no frame)"
        cv2.putText(sheet, text, (left + 4, top + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise InputError(f"cannot write {out}: check the folder exists and is writable")
    return out


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m dancedata.inspect", description="Summarise a shard folder's manifest.")
    parser.add_argument("shards", help="folder holding manifest.json (local or gs://)")
    parser.add_argument("--all", action="store_true", help="list every skipped path, not the first five per reason")
    parser.add_argument("--verify", action="store_true",
                        help="also read every shard whole: every record's checksums (what training checks) and every "
                             "shard's and index's sha256. Without it inspect checks what is cheap: each shard's presence, "
                             "size and record framing against its index (a cut, appended bytes, a swapped or replaced "
                             "shard), each index, and the checksums of the manifest, feature_statistics.json and the TFDS "
                             "metadata; a flipped byte inside a record takes --verify")
    parser.add_argument("--repair", action="store_true",
                        help="rebuild missing, damaged or stale indexes from their intact shards (no video decoded), "
                             "byte for byte the build's, then check")
    parser.add_argument("--preview", metavar="VIDEO",
                        help="write a PNG contact sheet of the frames this build's sampling picks from VIDEO")
    parser.add_argument("--preview-out", metavar="PNG", help="where the contact sheet goes (default: preview-<video name>.png)")
    args = parser.parse_args(argv)
    info = manifest.load(args.shards)
    if args.preview:
        import os

        out = args.preview_out or f"preview-{os.path.splitext(os.path.basename(args.preview))[0]}.png"
        print(f"wrote {preview(info, args.preview, out)}: {info['sampling']['sampling']} sampling, "
              f"{info['num_frames']} frames at {info['extractor']['image_size']}px")
        return 0
    shown = max(len(info["skipped"]), len(info.get("truncated", []))) if args.all else 5
    print(summary(info, show_paths=shown, info_file=build_info(args.shards)))
    folder = args.shards.rstrip("/")
    if args.repair:
        rebuilt, failed = repair(folder, info)
        for path in rebuilt:
            print(f"REPAIRED: {path}: rebuilt from its shard")
        for path, why in failed:
            print(f"NOT REPAIRED: {path}: {why}")
    bad = damaged(folder, info, verify=args.verify)
    for path, reason in bad:
        print(f"DAMAGED: {path}: {reason}")
    if unchecked(info):
        print(f"unchecked: {', '.join(unchecked(info))} (this build recorded no checksum for them)")
    if bad:
        indexes = any(reason.startswith("index ") or "its index" in reason or f"{shard_index.SUFFIX} " in reason
                      for _, reason in bad)
        print(f"{len(bad)} file(s) damaged: training stops on a damaged shard (exit 2) or leaves it out with "
              "--skip-bad-shards; run the build command again to redo them"
              + ("; inspect --repair rebuilds an index from its intact shard" if indexes and not args.repair else ""), flush=True)
        return 1
    if args.verify:
        print("verified: every record's checksums and every shard's, index's and metadata file's sha256 match the build")
    return 0


if __name__ == "__main__":
    cli.exit(cli.run(main, "inspect"))
