"""`python -m dancedata.predict VIDEOS... --model RUN_DIR`: top-k genres per video, for any number
of videos: files, folders (every video inside) or list files (one path per line).

Frames are sampled and features extracted as the run's shards were (dataset.json in the run), with
decoding in the build's worker processes (a hung or crashing decoder costs one video), extraction in
the build's fixed batches, and the classifier in batches of --batch-size videos. A `train.py --finetune`
run's model takes the frames themselves: they are decoded the same way and go to it whole. Results stream out in
input order; memory stays bounded whatever the number of videos. An unreadable video gets its own
error line (and the exit status is 1); the others go on.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np

from dancedata import cli, fs, naming, scan
from dancedata.config import ExtractorConfig, SamplingConfig
from dancedata.errors import DecodeError, InputError, ManifestError

LIST_EXTENSIONS = (".txt", ".lst", ".list")


def load_run(run_dir: str):
    """(model, dataset.json dict) of a train.py run folder."""
    import keras

    try:  # registers the custom layers of dancedata.models (and of fine-tuned models) for loading
        from dancedata import models  # noqa: F401
        from dancedata.models import finetune  # noqa: F401
    except ImportError:
        pass
    fs.check(run_dir)  # gs://, or s3:// and others with tensorflow-io
    for name in ("model.keras", "dataset.json"):
        if not fs.isfile(fs.join(run_dir, name)):
            raise InputError(f"{run_dir} is not a train.py run folder: {name} is missing")
    with fs.open_file(fs.join(run_dir, "dataset.json")) as handle:
        dataset = json.load(handle)
    # compile=False: predicting needs no optimizer (and Keras would warn that the unused one's state is skipped)
    return keras.models.load_model(fs.join(run_dir, "model.keras"), compile=False), dataset


def expand_inputs(paths: list) -> list:
    """Video paths from files, folders (every video inside, recursively, sorted, found as a build finds
    them: hidden files and folders skipped) and list files (one path per line; blank lines and #
    comments skipped; relative paths from the list's folder)."""
    videos = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(name for name in scan._files(path) if name.lower().endswith(scan.VIDEO_EXTENSIONS))
            if not found:
                raise InputError(f"no video files in {path}")
            videos += found
        elif path.lower().endswith(LIST_EXTENSIONS):
            try:
                with open(path) as handle:
                    lines = [line.strip() for line in handle]
            except OSError as error:
                raise InputError(f"cannot read the list {path}: {error.strerror}") from None
            base = os.path.dirname(path)
            videos += [line if os.path.isabs(line) else os.path.join(base, line) for line in lines if line and not line.startswith("#")]
        else:
            videos.append(path)  # a missing or unreadable file is reported as that video's error
    if not videos:
        raise InputError("no videos given")
    return videos


def iter_predict(videos, run_dir: str, *, top_k: int = 3, batch_size: int = 64, workers: int = 2, video_timeout: float = 300.0):
    """Yields one dict per video, in input order: {"video", "top": [{"genre", "name", "probability"}]}
    or {"video", "error"}. `videos` may be any iterable (it is read as decoding goes)."""
    from dancedata.decode_pool import DecodePool
    from dancedata.extract import Extractor, VideoBatcher

    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    model, dataset = load_run(run_dir)
    if dataset.get("inputs") == "frames":  # a --finetune run: the model takes the frames themselves
        yield from _predict_frames(model, dataset, videos, top_k, batch_size, workers, video_timeout)
        return
    recorded = dataset["extractor"]
    extractor_config = ExtractorConfig(
        backbone=recorded["backbone"],
        weights=recorded["weights"],
        image_size=recorded["image_size"],
        weights_seed=recorded.get("weights_seed", 0),
    )
    sampling = SamplingConfig(**dataset["sampling"])
    extractor = Extractor(extractor_config, frames_per_video=dataset["num_frames"])  # the build's batches: same features
    if recorded.get("fingerprint") and recorded["fingerprint"] != extractor.fingerprint:
        raise ManifestError(
            f"the {recorded['backbone']} weights here differ from those the shards were built with "
            f"(weights={recorded['weights']}); predictions would be meaningless"
        )
    classify = _classifier(model, dataset, top_k, batch_size)
    batcher = VideoBatcher(extractor)
    waiting: list = []  # (video, Clip or DecodeError, features) in input order, at most batch_size + one extraction batch
    with DecodePool(workers, sampling, extractor_config.image_size, video_timeout) as pool:
        for row, clip in pool.imap({"path": str(video)} for video in videos):
            frames = clip.frames if not isinstance(clip, DecodeError) else np.empty((0,), np.uint8)
            waiting += [(item[0], item[1], features) for item, features in batcher.add((row["path"], clip), frames)]
            while len(waiting) >= batch_size:
                yield from classify(waiting[:batch_size])
                del waiting[:batch_size]
        waiting += [(item[0], item[1], features) for item, features in batcher.flush()]
        for start in range(0, len(waiting), batch_size):
            yield from classify(waiting[start : start + batch_size])


def _predict_frames(model, dataset: dict, videos, top_k: int, batch_size: int, workers: int, video_timeout: float):
    """iter_predict for a run that takes frames: each video decoded with the run's sampling, centre
    crop and size (the frames its build stored), the model run on batches of batch_size videos."""
    from dancedata.decode_pool import DecodePool

    classify = _classifier(model, dataset, top_k, batch_size, frames=True)
    waiting: list = []  # (video, Clip or DecodeError, frames) in input order, at most batch_size
    with DecodePool(workers, SamplingConfig(**dataset["sampling"]), dataset["extractor"]["image_size"], video_timeout) as pool:
        for row, clip in pool.imap({"path": str(video)} for video in videos):
            waiting.append((row["path"], clip, None if isinstance(clip, DecodeError) else clip.frames))
            if len(waiting) == batch_size:
                yield from classify(waiting)
                waiting = []
        if waiting:
            yield from classify(waiting)


def _classifier(model, dataset: dict, top_k: int, batch_size: int, frames: bool = False):
    """A function: [(video, clip or error, features)] -> result dicts, one model call per batch, always
    of `batch_size` rows (zeros pad the last), so the model is traced once. frames: the rows are the
    clips' frames [n, S, S, 3] uint8, not their features (a --finetune run)."""
    classes, length, dtype = dataset["classes"], dataset["num_frames"], np.dtype(dataset["feature_dtype"])
    seq_len = dataset.get("seq_len")

    def classify(items: list) -> list:
        good = [(video, clip, rows) for video, clip, rows in items if not isinstance(clip, DecodeError)]
        results = {}
        if good:
            row_shape = good[0][2].shape[1:] if frames else (dataset["feature_dim"],)
            features = np.zeros((max(batch_size, len(good)), length, *row_shape), np.uint8 if frames else np.float32)
            masks = np.zeros((len(features), length), bool)
            for i, (_, clip, rows) in enumerate(good):
                features[i, clip.mask] = rows if frames else rows.astype(dtype)  # the precision the model was trained on
                masks[i] = clip.mask
            if seq_len:
                from dancedata.read import window

                features, masks = (np.asarray(t) for t in window(features, masks, seq_len, training=False, seed=None))
            probabilities = np.asarray(model.predict_on_batch((features, masks)))
            for (video, _, _), row in zip(good, probabilities):
                order = np.argsort(-row)[:top_k]
                results[video] = [{"genre": classes[i], "name": naming.genre_name(classes[i]), "probability": float(row[i])} for i in order]
        return [{"video": video, "top": results[video]} if video in results else {"video": video, "error": str(clip)}
                for video, clip, _ in items]

    return classify


def predict(videos: list, run_dir: str, *, top_k: int = 3, batch_size: int = 64, workers: int = 2) -> list:
    """iter_predict as a list (for a few videos; stream with iter_predict for many)."""
    return list(iter_predict(videos, run_dir, top_k=top_k, batch_size=batch_size, workers=workers))


def _csv_row(result: dict, top_k: int) -> list:
    row = [result["video"]]
    top = result.get("top", [])
    for k in range(top_k):
        row += [top[k]["genre"], f"{top[k]['probability']:.6f}"] if k < len(top) else ["", ""]
    return row + [result.get("error", "")]


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m dancedata.predict", description="Predict the dance genre of videos.")
    parser.add_argument("inputs", nargs="+", help="video files, folders of videos, or list files (.txt: one path per line)")
    parser.add_argument("--model", required=True, help="run folder written by train.py (holds model.keras; local, gs:// or s3://)")
    parser.add_argument("--top-k", type=int, default=3, help="genres to show per video (default: 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="videos per classifier batch (default: 64)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default: 2)")
    parser.add_argument("--video-timeout", type=float, default=300.0, help="seconds one video may take to decode (default: 300)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser.add_argument("--csv", metavar="FILE", help="also write a CSV: video, genre_1, probability_1, ..., error")
    args = parser.parse_args(argv)
    for name in ("top_k", "batch_size", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    videos = expand_inputs(args.inputs)
    failed = 0
    table = open(args.csv, "w", newline="") if args.csv else None
    try:
        writer = csv.writer(table) if table else None
        if writer:
            writer.writerow(["video"] + [f"{kind}_{k + 1}" for k in range(args.top_k) for kind in ("genre", "probability")] + ["error"])
        for result in iter_predict(videos, args.model, top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
                                   video_timeout=args.video_timeout):
            failed += "error" in result
            if writer:
                writer.writerow(_csv_row(result, args.top_k))
            if args.json:
                print(json.dumps(result), flush=True)
            elif "error" in result:
                print(f"{result['video']}: error: {result['error']}", flush=True)
            else:
                shown = ", ".join(f"{naming.label(t['genre'])} {t['probability']:.1%}" for t in result["top"])
                print(f"{result['video']}: {shown}", flush=True)
    finally:
        if table:
            table.close()
    if failed:
        print(f"{failed} of {len(videos)} video(s) could not be read (their lines say why)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    cli.exit(cli.run(main, "predict"))
