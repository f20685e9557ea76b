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
from dancedata.errors import DanceDataError, DecodeError, InputError, ManifestError

LIST_EXTENSIONS = (".txt", ".lst", ".list")


RUN_FOLDER = "copy the run folder again, or train again (train.py --overwrite)"
DATASET_KEYS = ("classes", "num_frames", "feature_dim", "feature_dtype", "extractor", "sampling", "seq_len", "shards", "inputs")


def load_run(run_dir: str):
    """(model, dataset.json dict) of a train.py run folder, every file checked before it is used: a run
    folder travels between people, and a damaged one must not predict wrong genres unnoticed. Raises
    ManifestError naming the file (one line, exit 2)."""
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
    dataset, sealed = _dataset(fs.join(run_dir, "dataset.json"))
    _check_labels(fs.join(run_dir, "labels.json"), dataset["classes"], required=sealed)
    path = fs.join(run_dir, "model.keras")
    try:  # a damaged archive fails in zipfile, h5py, json or Keras' deserialization, whichever reads the bytes
        # compile=False: predicting needs no optimizer (and Keras would warn that the unused one's state is skipped)
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - anything else is a traceback for a damaged file
        raise ManifestError(f"cannot load {path}: it is damaged or not the model train.py wrote "
                            f"({type(error).__name__}: {str(error)[:120]}); {RUN_FOLDER}") from None
    _check_model(model, dataset, path)
    return model, dataset


def _dataset(path: str) -> tuple[dict, bool]:
    """(dataset.json checked, whether it is sealed): its checksum (runs since it was sealed) and every
    value predict uses."""
    from dancedata import manifest

    raw = manifest.read_bytes(path, 1 << 24)
    document = manifest.parse_document(raw, path)

    def bad(what):
        return ManifestError(f"{path} is not the dataset description train.py wrote ({what}); {RUN_FOLDER}")

    if not isinstance(document, dict):
        raise bad(f"a JSON {type(document).__name__}, not an object")
    unknown = sorted(set(document) - set(DATASET_KEYS) - {manifest.CHECKSUM})
    missing = [key for key in DATASET_KEYS if key not in document and key not in ("seq_len", "shards", "inputs")]
    if unknown or missing:
        raise bad(f"{'unknown key ' + repr(str(unknown[0])[:40]) if unknown else 'no ' + missing[0]}")
    # Runs of earlier releases wrote no checksum: their values are still checked one by one below.
    if manifest.CHECKSUM in document:
        if manifest.sealed(document)[manifest.CHECKSUM] != document[manifest.CHECKSUM]:
            raise bad("its checksum does not match its content: it was changed since")
        if raw != manifest.dumps(document).encode("utf-8"):
            raise bad("its bytes are not the ones train.py wrote, though its content parses the same")
    dataset = {key: value for key, value in document.items() if key != manifest.CHECKSUM}
    classes, frames, dim = dataset["classes"], dataset["num_frames"], dataset["feature_dim"]

    def count(value, high):
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value < high

    if not isinstance(classes, list) or not classes or not all(manifest._plain_name(c) for c in classes) \
            or len(set(classes)) != len(classes):
        raise bad("classes is not a list of distinct names")
    if not count(frames, 1 << 16) or not count(dim, 1 << 20) or dataset["feature_dtype"] not in ("float16", "float32"):
        raise bad("num_frames, feature_dim or feature_dtype out of range")
    if dataset.get("seq_len") is not None and not count(dataset["seq_len"], frames + 1):
        raise bad(f"seq_len {str(dataset['seq_len'])[:20]} is not in 1..{frames}")
    if dataset.get("inputs", "features") not in ("features", "frames"):
        raise bad(f"inputs {str(dataset.get('inputs'))[:20]!r} is not features or frames")
    extractor, sampling = dataset["extractor"], dataset["sampling"]
    if not isinstance(extractor, dict) or not isinstance(sampling, dict):
        raise bad("extractor or sampling is not a JSON object")
    try:  # the configs' own checks (a strategy, a backbone, a size); the extractor's fingerprint is checked later
        dataset["sampling_config"] = SamplingConfig(**sampling)
        if dataset.get("inputs") == "frames":  # a --finetune run: only the frames' size is used
            if not count(extractor.get("image_size"), 1 << 16) or extractor["image_size"] < 32:
                raise ValueError(f"image_size {str(extractor.get('image_size'))[:20]}")
        else:
            dataset["extractor_config"] = ExtractorConfig(
                backbone=extractor["backbone"], weights=extractor["weights"], image_size=extractor["image_size"],
                weights_seed=extractor.get("weights_seed", 0))
            if not isinstance(extractor.get("fingerprint", ""), str):
                raise ValueError("its fingerprint is not text")
    except (TypeError, KeyError, ValueError, DanceDataError) as error:
        raise bad(f"its {'extractor' if 'sampling_config' in dataset else 'sampling'} is not one a build records: "
                  f"{str(error)[:120]}") from None
    return dataset, manifest.CHECKSUM in document


def _check_labels(path: str, classes: list, required: bool) -> None:
    """labels.json says what dataset.json says: a second copy of the classes, which other tools read, so
    damage to either is seen. Every run whose dataset.json is sealed wrote one: missing, it is damage."""
    from dancedata import manifest

    if not fs.exists(path):
        if required:
            raise ManifestError(f"{path} is missing, though train.py writes it with every model: the run folder is "
                                f"incomplete; {RUN_FOLDER}")
        return
    labels = manifest.parse_document(manifest.read_bytes(path, 1 << 24), path)
    if not isinstance(labels, dict) or labels.get("classes") != classes \
            or labels.get("names") != [naming.genre_name(c) for c in classes] or set(labels) != {"classes", "names"}:
        raise ManifestError(f"{path} does not list the classes dataset.json lists, as train.py writes them: it was "
                            f"edited or damaged; {RUN_FOLDER}")


def _check_model(model, dataset: dict, path: str) -> None:
    """The loaded model takes what dataset.json says it was trained on and gives one score per class."""
    try:
        shapes = model.input_shape
        first = tuple(shapes[0] if shapes and isinstance(shapes[0], (tuple, list)) else shapes)
        outputs = tuple(model.output_shape)
    except (AttributeError, TypeError, ValueError, IndexError):
        first, outputs = (), ()
    length = dataset.get("seq_len") or dataset["num_frames"]
    fits = len(first) >= 3 and first[1] in (length, None) and outputs[-1:] == (len(dataset["classes"]),)
    if dataset.get("inputs") != "frames":
        fits = fits and first[-1] == dataset["feature_dim"]
    if not fits:
        raise ManifestError(f"{path} does not fit dataset.json (input {first}, output {outputs} for "
                            f"{len(dataset['classes'])} classes of {length} frames of {dataset['feature_dim']} features): "
                            f"one of them is not this run's; {RUN_FOLDER}")


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
    recorded, extractor_config, sampling = dataset["extractor"], dataset["extractor_config"], dataset["sampling_config"]
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
    with DecodePool(workers, dataset["sampling_config"], dataset["extractor"]["image_size"], video_timeout) as pool:
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
