"""Training throughput of `train.py --finetune`: frames per second through the input pipeline (stored
frames decoded and augmented) and a training step of backbone + GRU, in one run.

    python benchmarks/finetune.py [--videos 32] [--backbone MobileNetV3Small] [--image-size 224]
                                  [--batch-size 8] [--steps 20] [--json benchmarks/results/finetune.json]

Inputs: synthetic AIST-named videos (tests/conftest.py write_video, 320x240, 40 frames), built with
--keep-frames jpeg at --image-size, 20 uniform frames, random weights (timing does not depend on the
weights; no download). Measured: the steps of a training epoch after one warm-up epoch (which traces
the step), frames = examples x 20 (padding slots go through the backbone too), with the pipeline and
model train.py builds (frames_input.as_dataset, models/finetune.py). The device is recorded: on a CPU
without a GPU, no GPU figure exists.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

FRAMES = 20


def make_build(folder: str, videos: int, backbone: str, size: int) -> str:
    """A build with JPEG frames of `videos` synthetic videos (two genres); returns its folder."""
    import pathlib

    from conftest import GENRE_COLOURS, aist_name, write_video

    import dancedata

    root = pathlib.Path(folder) / "videos"
    root.mkdir(parents=True)
    for i in range(videos):
        genre = ("BR", "PO")[i % 2]
        write_video(root / f"{aist_name(genre, dancer=i + 1, choreo=i + 1)}.mp4", frames=40, colour=GENRE_COLOURS[genre],
                    size=(240, 320), seed=i)
    out = os.path.join(folder, "shards")
    dancedata.build_shards(str(root), out, frames=FRAMES, backbone=backbone, weights="none", image_size=size, quiet=True,
                           keep_frames="jpeg", val_fraction=0.0, test_fraction=0.0, split="random")
    return out


def measure(shards: str, batch_size: int, steps: int) -> dict:
    """Seconds of `steps` training steps after a warm-up epoch, and frames per second."""
    import numpy as np

    import dancedata
    from dancedata import ReadConfig, frames_input
    from dancedata.extract import device_kind
    from dancedata.models import finetune

    builder = dancedata.DatasetBuilder(shards)
    dim = builder.info.feature_dim
    model = finetune.build(finetune.extractor_config(builder.info.extractor), "gru", len(builder.info.classes), FRAMES,
                           np.zeros(dim, np.float32), np.ones(dim, np.float32), seed=0)
    finetune.compile_phase(model, 1e-3, 0.1, True)
    read = ReadConfig(shuffle=True, seed=0, repeat=True)
    data = frames_input.as_dataset(builder, "train", batch_size=batch_size, read_config=read)
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)  # traces the step
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    frames = steps * batch_size * FRAMES
    return {"seconds": round(seconds, 2), "steps": steps, "batch_size": batch_size, "frames": frames,
            "frames_per_second": round(frames / seconds, 1), "device": device_kind()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--backbone", default="MobileNetV3Small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "finetune.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dancedata-finetune-") as folder:
        shards = make_build(folder, args.videos, args.backbone, args.image_size)
        result = {"backbone": args.backbone, "image_size": args.image_size, "frames_per_example": FRAMES,
                  "cpus": os.cpu_count(), "machine": platform.machine(), **measure(shards, args.batch_size, args.steps)}
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
