"""`python -m dancedata.predict VIDEO [VIDEO ...] --model RUN_DIR`: top-k genres per video.

Frames are sampled and features extracted exactly as the run's shards were (dataset.json in the
run), in batches across videos. An unreadable video gets its own error line; the others go on.
"""
from __future__ import annotations

import json

import numpy as np

from dancedata import cli, decode, naming
from dancedata.config import ExtractorConfig, SamplingConfig
from dancedata import fs
from dancedata.errors import DecodeError, InputError, ManifestError


def load_run(run_dir: str):
    """(model, dataset.json dict) of a train.py run folder."""
    import keras

    try:
        import models  # noqa: F401  registers the custom layers of models/ for loading
    except ImportError:
        pass
    fs.check(run_dir)  # gs://, or s3:// and others with tensorflow-io
    for name in ("model.keras", "dataset.json"):
        if not fs.isfile(fs.join(run_dir, name)):
            raise InputError(f"{run_dir} is not a train.py run folder: {name} is missing")
    with fs.open_file(fs.join(run_dir, "dataset.json")) as handle:
        dataset = json.load(handle)
    return keras.models.load_model(fs.join(run_dir, "model.keras")), dataset


def predict(videos: list, run_dir: str, top_k: int = 3, batch_size: int | None = None) -> list:
    """One dict per video: {"video", "top": [{"genre", "name", "probability"}]} or {"video", "error"}."""
    from dancedata.extract import Extractor, VideoBatcher

    model, dataset = load_run(run_dir)
    recorded = dataset["extractor"]
    extractor_config = ExtractorConfig(
        backbone=recorded["backbone"],
        weights=recorded["weights"],
        image_size=recorded["image_size"],
        weights_seed=recorded.get("weights_seed", 0),
        batch_size=batch_size or 0,
    )
    sampling = SamplingConfig(**dataset["sampling"])
    extractor = Extractor(extractor_config, frames_per_video=dataset["num_frames"])  # the build's batches: same features
    if recorded.get("fingerprint") and recorded["fingerprint"] != extractor.fingerprint:
        raise ManifestError(
            f"the {recorded['backbone']} weights here differ from those the shards were built with "
            f"(weights={recorded['weights']}); predictions would be meaningless"
        )
    classes, frames = dataset["classes"], dataset["num_frames"]
    results, ready = {}, []
    batcher = VideoBatcher(extractor)
    for video in videos:
        clip = decode.read_clip_or_error(video, sampling, extractor_config.image_size)
        if isinstance(clip, DecodeError):
            results[video] = {"video": video, "error": str(clip)}
            continue
        ready += batcher.add((video, clip), clip.frames)
    ready += batcher.flush()
    if ready:
        dtype = np.dtype(dataset["feature_dtype"])
        features = np.zeros((len(ready), frames, dataset["feature_dim"]), np.float32)
        masks = np.zeros((len(ready), frames), bool)
        for i, ((_, clip), rows) in enumerate(ready):
            features[i, clip.mask] = rows.astype(dtype)  # the precision the model was trained on
            masks[i] = clip.mask
        seq_len = dataset.get("seq_len")
        if seq_len:
            from dancedata.read import window

            windowed = window(features, masks, seq_len, training=False, seed=None)
            features, masks = (np.asarray(t) for t in windowed)
        probabilities = np.asarray(model.predict_on_batch((features, masks)))
        for ((video, _), _), row in zip(ready, probabilities):
            order = np.argsort(-row)[:top_k]
            top = [{"genre": classes[i], "name": naming.genre_name(classes[i]), "probability": float(row[i])} for i in order]
            results[video] = {"video": video, "top": top}
    return [results[video] for video in videos]


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m dancedata.predict", description="Predict the dance genre of videos.")
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--model", required=True, help="run folder written by train.py (holds model.keras)")
    parser.add_argument("--top-k", type=int, default=3, help="genres to show per video (default: 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    results = predict(args.videos, args.model, args.top_k)
    for result in results:
        if args.json:
            print(json.dumps(result))
        elif "error" in result:
            print(f"{result['video']}: error: {result['error']}")
        else:
            shown = ", ".join(f"{t['name']} ({t['genre']}) {t['probability']:.1%}" for t in result["top"])
            print(f"{result['video']}: {shown}")
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    cli.exit(cli.run(main, "predict"))
