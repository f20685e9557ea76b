"""The GPU check in one command: what a machine with a GPU does with each stage, in under 8 minutes.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu] [--parts extraction,decoding,readers,finetune]
                                   [--videos 48] [--video-seconds 5] [--workers N] [--examples 4096] [--tiny]

Needs only what dancedata installs (TensorFlow, Keras, NumPy, PyAV, OpenCV) and no download: every
backbone has random weights (timing does not depend on them) and every input is made here, in a
temporary folder deleted at the end. Four parts, each written to --out (gpu_check.json, gpu_check.md)
as soon as it is done, so a run cut short keeps what it measured:

  extraction  frames/s of the extractor (dancedata.extract.Extractor, the build's batch size) for
              InceptionV3 and MobileNetV3Small, float32 and mixed precision, with and without XLA;
              all eight made first, then timed interleaved, fastest of --rounds;
  decoding    whether decoding keeps up: a build (build_shards, uniform 20 frames, --workers decode
              processes) of --videos synthetic AIST-named 1080p60 H.264 clips per backbone, and the
              extractor's idle share between its first batch and its last (1 - time in its batches /
              that span), beside the build's frames/s and the extractor's own inside its batches;
  readers     training input overhead of every TensorFlow reader, the device table (--cache device)
              included: benchmarks/readers.py's measure of them (and of the limits) on a synthetic build
              of --examples examples;
  finetune    train.py --finetune frames/s: benchmarks/finetune.py's measure on a build of the same
              clips with their frames kept (JPEG), MobileNetV3Small.

Without a visible GPU it says so first and last, and measures the CPU. --tiny runs every part on the
CPU at tiny sizes, to check that the script runs (tests/test_benchmarks.py).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCHMARKS)
sys.path.insert(1, os.path.dirname(BENCHMARKS))

import numpy as np  # noqa: E402

PARTS = ("extraction", "decoding", "readers", "finetune")
BACKBONES = ("InceptionV3", "MobileNetV3Small")
GENRES = ("BR", "PO", "LO", "MH", "LH", "HO", "WA", "KR", "JS", "JB")
NO_GPU = ("NO GPU VISIBLE: tf.config.list_physical_devices('GPU') is empty, so every figure here is the CPU's. "
          "On a GPU machine, check that TensorFlow was installed with CUDA (pip install 'tensorflow[and-cuda]') "
          "and that nvidia-smi sees the card.")
NO_GPU_TINY = "NO GPU VISIBLE: --tiny hides every GPU (CUDA_VISIBLE_DEVICES=''), so every figure here is the CPU's."
# --tiny: every part on a CPU in seconds; sizes that keep every code path (XLA, mixed precision, decode
# workers, kept frames) but no figure worth reading. InceptionV3 is left out there: making one takes 5-15 s
# of a loaded 2-core machine, and its code path is MobileNetV3Small's. Both switches still run, one in each
# of the two configurations.
TINY = dict(image_sizes={"MobileNetV3Small": 32},
            configs=[("MobileNetV3Small", "on", False), ("MobileNetV3Small", "off", True)],
            decode_backbones=("MobileNetV3Small",), extract_batch=2, extract_calls=1, rounds=1, videos=4,
            video_seconds=2.0, video_size=(64, 48), video_fps=10, workers=1, frames=4, examples=96, shards=3,
            feature_frames=4, feature_dim=64, batch_size=16, fit_steps=2, finetune_batch=2, finetune_steps=2,
            finetune_size=32)


def write_clip(path: str, seconds: float, size: tuple, fps: int, seed: int) -> str:
    """An H.264 clip (MPEG-4 part 2 where PyAV lacks libx264) of a figure moving over a noisy studio
    background, one key frame a second, written with PyAV: no ffmpeg binary needed."""
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    rows = height * 3 // 2  # yuv420p: the luma plane, then both chroma planes below it
    noise = [rng.integers(0, 4, (rows, width), dtype=np.uint8) for _ in range(4)]
    background = np.full((rows, width), 128, np.uint8)
    background[:height] = 70
    frame = np.empty_like(background)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, "yuv420p", 10_000_000
        stream.options = {"g": str(fps), "threads": "1", **({"preset": "ultrafast"} if codec == "libx264" else {})}
        figure_w, figure_h = max(2, width // 5), height // 2
        for i in range(max(1, int(seconds * fps))):
            np.add(background, noise[i % len(noise)], out=frame)
            x = int((width - figure_w) * (0.5 + 0.5 * np.sin(i / fps * 1.3 + seed)))
            frame[height // 4:height // 4 + figure_h, x:x + figure_w] = (i * 7 + seed * 40) % 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_clips(folder: str, count: int, seconds: float, size: tuple, fps: int, workers: int) -> list:
    """`count` AIST-named clips in `folder`, written by `workers` processes (spawned: this process may
    hold TensorFlow, which must not be forked)."""
    os.makedirs(folder, exist_ok=True)
    jobs = []
    for i in range(count):
        genre = GENRES[i % len(GENRES)]
        name = f"g{genre}_sBM_c{i % 9 + 1:02d}_d{i // 9 + 1:02d}_m{genre}{i % 6}_ch{i // 9 + 1:02d}.mp4"
        jobs.append((os.path.join(folder, name), seconds, size, fps, i))
    if workers <= 1 or count <= 1:
        return [write_clip(*job) for job in jobs]
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(write_clip, *zip(*jobs)))


def gpus() -> list:
    """The visible GPUs, with memory growth on (before anything touches them), so TensorFlow takes what
    each part needs rather than the whole card up front."""
    import tensorflow as tf

    found = tf.config.list_physical_devices("GPU")
    for gpu in found:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth can no longer change, and nothing breaks
            pass
    return found


def float32_policy():
    """Back to float32 compute: each part starts from it whatever the one before left."""
    import keras

    keras.config.set_dtype_policy("float32")


def extraction(settings) -> list:
    """A row per (backbone, precision, XLA): frames/s of Extractor.full_batch on full batches."""
    from dancedata.config import ExtractorConfig
    from dancedata.extract import Extractor

    made = []
    for backbone, precision, jit in settings.configs:
        size = settings.image_sizes[backbone]
        config = ExtractorConfig(backbone=backbone, weights="none", image_size=size, batch_size=settings.extract_batch,
                                 mixed_precision=precision, jit_compile=jit)
        start = time.perf_counter()
        extractor = Extractor(config)  # traces (and with XLA compiles) its full batch now
        setup = time.perf_counter() - start
        frames = np.random.default_rng(0).integers(0, 256, (extractor.batch_size, size, size, 3), np.uint8)
        for _ in range(2):  # the first calls after a trace run slower (measured on the CPU): not the steady rate
            extractor.full_batch(frames)
        row = {"backbone": backbone, "image_size": size, "mixed_precision": precision, "xla": jit,
               "batch": extractor.batch_size, "setup_s": setup, "device": extractor.model.weights[0].value.device}
        made.append((row, extractor, frames))
    best = {}
    rng = random.Random(0)
    for _ in range(settings.rounds):
        rng.shuffle(made)
        for row, extractor, frames in made:
            start = time.perf_counter()
            for _ in range(settings.extract_calls):
                extractor.full_batch(frames)  # returns NumPy: the device has finished
            seconds = time.perf_counter() - start
            key = id(extractor)
            best[key] = min(best.get(key, float("inf")), seconds)
    rows = []
    for row, extractor, _ in sorted(made, key=lambda m: settings.configs.index(
            (m[0]["backbone"], m[0]["mixed_precision"], m[0]["xla"]))):
        rows.append({**row, "frames_per_s": row["batch"] * settings.extract_calls / best[id(extractor)]})
    del made
    gc.collect()
    return rows


def decoding(settings, clips: str, work: str) -> list:
    """A row per backbone: a build of the clips, its frames/s, the extractor's own frames/s inside it
    (frames over the time spent in its batches), and its idle share while the decode workers feed it
    (1 - time in its batches / the span from the start of its first batch to the end of its last: the
    pool's start before the first batch is left out)."""
    import dancedata
    from dancedata.config import ExtractorConfig
    from dancedata.extract import Extractor, uses_float16

    rows = []
    for backbone in settings.decode_backbones:
        spans, original = [], Extractor.full_batch

        def timed(self, batch, spans=spans, original=original):
            start = time.perf_counter()
            try:
                return original(self, batch)
            finally:
                spans.append((start, time.perf_counter(), len(batch)))

        out = os.path.join(work, f"decode-{backbone}")
        Extractor.full_batch = timed
        try:
            manifest = dancedata.build_shards(clips, out, frames=settings.frames, backbone=backbone, weights="none",
                                              image_size=settings.image_sizes[backbone], workers=settings.workers,
                                              quiet=True, val_fraction=0.0, test_fraction=0.0, split="random")
        finally:
            Extractor.full_batch = original
        with open(os.path.join(out, "build_info.json")) as handle:
            info = json.load(handle)
        busy = sum(end - start for start, end, _ in spans)
        span = spans[-1][1] - spans[0][0]
        frames = sum(count for _, _, count in spans)  # padding slots go through the backbone too
        precision = "on" if uses_float16(ExtractorConfig(backbone=backbone, weights="none")) else "off"
        build_s = info["elapsed_s"] - info["extractor_setup_s"]
        rows.append({"backbone": backbone, "mixed_precision": precision, "videos": sum(
            split["num_examples"] for split in manifest["splits"].values()), "workers": settings.workers,
            "batches": len(spans), "build_s": build_s, "build_frames_per_s": frames / max(build_s, 1e-9),
            "extractor_frames_per_s": frames / busy, "extractor_busy_s": busy, "span_s": span,
            "idle_share": max(0.0, 1 - busy / span) if span > 0 else 0.0})
        shutil.rmtree(out, ignore_errors=True)
    return rows


def training_input(settings, work: str) -> dict:
    """benchmarks/readers.py's measure on a synthetic build, for the readers fit can be fed (TensorFlow's,
    the device table's included) and the limits: the host-only readers are readers.py's."""
    import readers

    folder = os.path.join(work, "readers")
    os.makedirs(folder)
    path = readers.make_build(folder, settings.examples, settings.shards, settings.feature_frames, settings.feature_dim)
    shared = readers.Shared(folder, path)
    try:
        return readers.measure(shared, settings.batch_size, settings.rounds, settings.fit_steps, {}, settings.rounds,
                               fed_only=True)
    finally:
        del shared
        gc.collect()
        shutil.rmtree(folder, ignore_errors=True)


def finetune_check(settings, clips: str, work: str) -> dict:
    """benchmarks/finetune.py's measure: frames/s of train.py --finetune's steps on the clips' kept frames."""
    import dancedata
    import finetune

    out = os.path.join(work, "finetune")
    dancedata.build_shards(clips, out, frames=finetune.FRAMES, backbone="MobileNetV3Small", weights="none",
                           image_size=settings.finetune_size, keep_frames="jpeg", workers=settings.workers, quiet=True,
                           val_fraction=0.0, test_fraction=0.0, split="random")
    import tensorflow as tf

    # --tiny runs the steps eagerly: tracing a step through the backbone took 80-95 s of a loaded 2-core
    # machine, and tests/test_finetune.py already runs the traced step; this only keeps the script working.
    tf.config.run_functions_eagerly(settings.tiny)
    try:
        return {"backbone": "MobileNetV3Small", "image_size": settings.finetune_size,
                "frames_per_example": finetune.FRAMES, "eager": settings.tiny,
                **finetune.measure(out, settings.finetune_batch, settings.finetune_steps)}
    finally:
        tf.config.run_functions_eagerly(False)
        shutil.rmtree(out, ignore_errors=True)


def markdown(document: dict) -> str:
    warning = [f"**{document['warning']}**", ""] if document["warning"] else []
    lines = [document["header"], "", *warning]
    parts = document["parts"]
    if "extraction" in parts:
        lines += ["| extraction: backbone | image | precision | XLA | batch | frames/s | setup s | device |",
                  "|---|---:|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['backbone']} | {r['image_size']} | {'mixed' if r['mixed_precision'] == 'on' else 'float32'} | "
                  f"{'on' if r['xla'] else 'off'} | {r['batch']} | {r['frames_per_s']:,.1f} | {r['setup_s']:.1f} | "
                  f"{r['device'].split('device:')[-1]} |" for r in parts["extraction"]] + [""]
    if "decoding" in parts:
        lines += ["| decoding keeps up? backbone | videos | decode workers | build frames/s | extractor frames/s in "
                  "its batches | extractor idle share |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['backbone']} ({'mixed' if r['mixed_precision'] == 'on' else 'float32'}) | {r['videos']} | "
                  f"{r['workers']} | {r['build_frames_per_s']:,.1f} | {r['extractor_frames_per_s']:,.1f} | "
                  f"{r['idle_share']:.0%} |" for r in parts["decoding"]] + [""]
    if "readers" in parts:
        import readers

        lines += ["training input (benchmarks/readers.py):", "", readers.markdown(parts["readers"]), ""]
    if "finetune" in parts:
        r = parts["finetune"]
        lines += [f"--finetune: {r['backbone']} @{r['image_size']}, batch {r['batch_size']} x "
                  f"{r['frames_per_example']} frames, {r['steps']} steps: **{r['frames_per_second']:,.1f} frames/s** "
                  f"on {r['device']}", ""]
    for part, error in document["errors"].items():
        lines += [f"{part} FAILED: {error.strip().splitlines()[-1]}", ""]
    return "\n".join(lines + warning)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(BENCHMARKS, "results", "gpu"),
                        help="folder for gpu_check.json and gpu_check.md (default benchmarks/results/gpu)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--videos", type=int, default=48, help="synthetic 1080p60 clips (default 48)")
    parser.add_argument("--video-seconds", type=float, default=5.0, help="length of each clip (default 5)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="decode processes (default: every CPU)")
    parser.add_argument("--examples", type=int, default=4096, help="examples of the readers' build (default 4096)")
    parser.add_argument("--fit-steps", type=int, default=100, help="steps of each timed fit epoch (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, fastest kept (default 3)")
    parser.add_argument("--extract-batch", type=int, default=0,
                        help="frames per extraction batch (default 0: the build's auto, 64 on a GPU)")
    parser.add_argument("--tiny", action="store_true", help="every part on the CPU at tiny sizes (CI)")
    args = parser.parse_args(argv)
    args.parts = [part for part in args.parts.split(",") if part]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose among {', '.join(PARTS)}")
    defaults = dict(image_sizes={backbone: 224 for backbone in BACKBONES}, extract_calls=20, video_size=(1920, 1080),
                    video_fps=60, frames=20, shards=4, feature_frames=20, feature_dim=2048, batch_size=64,
                    finetune_batch=8, finetune_steps=20, finetune_size=224, decode_backbones=BACKBONES,
                    configs=[(b, p, x) for b in BACKBONES for p in ("off", "on") for x in (False, True)])
    for key, value in {**defaults, **(TINY if args.tiny else {})}.items():
        setattr(args, key, value)
    args.workers = max(1, args.workers)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU even where a GPU is visible: CI's figures mean nothing anyway
    import readers
    import tensorflow as tf

    from dancedata.extract import device_kind

    found = gpus()
    warning = None if found else NO_GPU_TINY if args.tiny else NO_GPU
    print(warning or f"GPU: {device_kind()}", flush=True)
    host = readers.machine()
    modified = " (dancedata/ modified)" if host["dirty"] else ""
    header = (f"gpu_check at commit {host['commit'] or 'unknown'}{modified}: {device_kind()}, "
              f"{host['cpu']}, {host['usable_cpus']} CPUs; TensorFlow {tf.__version__} (CUDA build: "
              f"{tf.test.is_built_with_cuda()}); {'tiny sizes on the CPU' if args.tiny else 'full sizes'}")
    document = {"header": header, "warning": warning, "machine": host, "gpus": [device.name for device in found],
                "device": device_kind(), "tiny": args.tiny, "parts": {}, "errors": {}, "seconds": {}}
    os.makedirs(args.out, exist_ok=True)

    def save():
        with open(os.path.join(args.out, "gpu_check.json"), "w") as handle:
            json.dump(document, handle, indent=1)
        with open(os.path.join(args.out, "gpu_check.md"), "w") as handle:
            handle.write(markdown(document))

    work = tempfile.mkdtemp(prefix="dancedata-gpu-check-")

    def clips():  # made once, by the first part that needs them (a failure is that part's)
        folder = os.path.join(work, "clips")
        if "clips" not in document["seconds"]:
            start = time.perf_counter()
            make_clips(folder, args.videos, args.video_seconds, args.video_size, args.video_fps, args.workers)
            document["seconds"]["clips"] = time.perf_counter() - start
        return folder

    try:
        steps = {"extraction": lambda: extraction(args),
                 "decoding": lambda: decoding(args, clips(), work),
                 "readers": lambda: training_input(args, work),
                 "finetune": lambda: finetune_check(args, clips(), work)}
        for part in args.parts:
            start = time.perf_counter()
            print(f"{part} ...", flush=True)
            float32_policy()
            try:
                document["parts"][part] = steps[part]()
            except Exception:  # noqa: BLE001  (one part failing must not lose the others' figures)
                document["errors"][part] = traceback.format_exc()
                print(document["errors"][part], file=sys.stderr, flush=True)
            finally:
                float32_policy()
            document["seconds"][part] = time.perf_counter() - start
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save()
    print(markdown(document))
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
