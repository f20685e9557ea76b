"""`python -m dancedata.inspect tfrecords/`: what a build holds, as a person wants to read it."""
from __future__ import annotations

import collections
import json

from dancedata import cli, fs, manifest, naming, shard_index
from dancedata.errors import DecodeError, InputError, ShardError

SPLIT_ORDER = ("train", "val", "test")


def _genre_table(info: dict) -> list:
    splits = [name for name in SPLIT_ORDER if name in info["splits"]]
    lines = [f"  {'genre':<20}" + "".join(f"{name:>8}" for name in splits) + f"{'total':>8}"]
    for genre in info["classes"]:
        counts = [info["splits"][name]["genres"].get(genre, 0) for name in splits]
        if any(counts):
            label = f"{genre} ({naming.genre_name(genre)})" if genre in naming.GENRES else genre
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
            return json.load(handle)
    except (tf.errors.OpError, ValueError):
        return {}


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
    """[(path, reason)] of the shards (and indexes) that are missing, cut or damaged. Without `verify`:
    each shard is there, of its recorded size, and its index matches the manifest (no shard is read);
    with it: every record's checksums (read.DatasetBuilder.bad_shards) and every sha256 too."""
    from dancedata.read import DatasetBuilder

    if verify:
        builder = DatasetBuilder(folder)
        found = []
        for split in info["splits"]:
            bad = dict(builder.bad_shards(split))
            for shard, path in zip(info["splits"][split]["shards"], builder.files(split)):
                if path not in bad and (problem := builder.sha256_problem(shard, path)):
                    bad[path] = problem
            found += sorted(bad.items())
        return found
    found = []
    for split in info["splits"].values():
        for shard in split["shards"]:
            path = fs.join(folder, shard["file"])
            if not fs.exists(path):
                found.append((path, "missing"))
            elif "bytes" in shard and (problem := shard_index.size_problem(path, fs.size(path), shard["bytes"])):
                found.append((path, problem))
            elif "index" in shard:
                try:
                    shard_index.load(folder, shard)
                except ShardError as error:
                    found.append((path, str(error).split(". Rebuild it")[0]))
    return found


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
                        help="read every shard whole: each record's checksums and every sha256 (without it: presence, "
                             "sizes and indexes only)")
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
    bad = damaged(args.shards.rstrip("/"), info, verify=args.verify)
    for path, reason in bad:
        print(f"DAMAGED: {path}: {reason}")
    if bad:
        print(f"{len(bad)} shard(s) damaged: training stops on them (exit 2) or leaves them out with --skip-bad-shards; "
              "run the build command again to redo them", flush=True)
        return 1
    if args.verify:
        print("verified: every record's checksums and every shard's sha256 match the build")
    return 0


if __name__ == "__main__":
    cli.exit(cli.run(main, "inspect"))
