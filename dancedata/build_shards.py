"""Build sharded TFRecords from a folder of videos: `python -m dancedata.build_shards aist/`.

scan -> plan (split and shard of every video) -> lock and prepare the output folder (refuse to mix,
resume, update: build_folder) -> run the work units still missing -> manifest. Run the same command again after a kill and
it continues where it stopped; the result is byte-identical to an uninterrupted build. With --from-frames OLD the
videos, plan and clips come from the frames an earlier build kept instead (from_frames.py): no video is opened.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import time

from dancedata import build_folder, cli, config, decode_pool, folder_lock, fs, from_frames, manifest, runners, scan
from dancedata import plan as plan_lib
from dancedata.config import BuildConfig, ExtractorConfig, SamplingConfig
from dancedata.errors import ConfigError, InputError


def build_shards(input_path: str | None, out: str = "tfrecords", **options) -> dict:
    """Builds shards of `input_path` into `out`; returns the manifest. Options are the CLI flags'
    names (frames=20, sampling="uniform", weights="none", split="sequence", update=True, ...).
    With from_frames="OLD" (and input_path None) the build reads OLD's stored frames instead of videos."""
    sampling, extractor, build = config.split_options({"out": out, **options}, SamplingConfig, ExtractorConfig, BuildConfig)
    _check_script(build)  # before TensorFlow loads (seconds): at once
    cli.load_tensorflow()  # its C++ start-up notices ignore TF_CPP_MIN_LOG_LEVEL: hidden as the commands hide them
    return build_from_configs(input_path, sampling, extractor, build)


def _progress(quiet: bool):
    from tqdm import tqdm

    # Drawn first by runners.run_local's reset(total=...), once the number of videos is known (delay > 0 skips the
    # draw at creation): an empty `0video [00:00, ?video/s]` bar drawn before would stay behind as a stray line.
    return tqdm(total=0, unit="video", disable=quiet, dynamic_ncols=True, file=sys.stderr, delay=1e-9)


def build_from_configs(input_path: str, sampling: SamplingConfig, extractor_config: ExtractorConfig, build: BuildConfig,
                       beam_args: list | None = None) -> dict | None:
    """Builds; returns the manifest, or None when this was a part of a partitioned build and other
    parts are still to finish. `beam_args` are extra Beam pipeline options (runner 'beam')."""
    _check_script(build)
    from dancedata.extract import Extractor

    started = time.time()
    fs.check(build.out)  # s3:// without a loadable tensorflow-io: one line before any work
    found, earlier = _inputs(input_path, build)
    if earlier is not None:
        sampling, build = from_frames.configs(earlier, sampling, build)
    build_folder.check_path(build.out)
    setup_started = time.time()
    if build.runner == "beam":
        from dancedata import beam_runner

        beam_runner.pipeline_options(build, beam_args)  # a missing Beam or a bad option: before any work
        pool = contextlib.nullcontext()  # Beam's workers decode
        extractor = Extractor(extractor_config, frames_per_video=sampling.frames)  # the plan needs its fingerprint
    else:
        # The decode workers start (about a second: a forkserver importing the decoder) while the backbone loads.
        with concurrent.futures.ThreadPoolExecutor(1) as starter:
            workers = min(build.workers, len(found.videos)) if found is not None else build.workers
            starting = starter.submit(runners.source, build, sampling, extractor_config.image_size, workers)
            try:
                extractor = Extractor(extractor_config, frames_per_video=sampling.frames)  # before touching --out
                pool = starting.result()
            except BaseException:
                _close_when_started(starting)  # a weights problem or Ctrl-C: no worker is left behind
                raise
    setup_s = time.time() - setup_started
    info = {}
    with pool, folder_lock.owned(build.out, build.num_workers, build.worker_index):
        plan, planned = _plan(input_path, found, earlier, sampling, extractor, build)
        with folder_lock.briefly(build.out, f"part {build.worker_index + 1} of {build.num_workers} preparing", build.partitioned):
            folder = build_folder.OutputFolder(build.out)  # read under the lock: the state no one else changes now
            prepared = build_folder.prepare(plan, folder, overwrite=build.overwrite, update=build.update, planned=planned,
                                            num_workers=build.num_workers, worker_index=build.worker_index)
        if build.runner == "beam":
            runners.say(f"building {len(prepared.pending)} of {len(plan.units)} shards on Apache Beam")
            info["beam"] = beam_runner.run(prepared.pending, sampling, extractor_config, build, beam_args)
        else:
            progress = _progress(build.quiet)
            try:
                runners.run_local(plan, folder, prepared, extractor, sampling, build, progress, pool=pool)
            finally:
                progress.close()
        info.update({"elapsed_s": round(time.time() - started, 2), "extractor_setup_s": round(setup_s, 2),
                     "workers": build.workers, "runner": build.runner, "shards_built": len(prepared.pending),
                     "shards_kept": len(prepared.done)})
        if build.partitioned:
            return _after_part(build, plan, prepared, info)
        return build_folder.finalize(build_folder.OutputFolder(build.out), info)


def _check_script(build: BuildConfig) -> None:
    """A script that every decode worker would run again (no `if __name__ == "__main__":`) is refused
    before any work. Beam's workers and a build --from-frames start no decode worker."""
    if build.runner != "beam" and not build.from_frames:
        decode_pool.check_main_is_guarded()


def _close_when_started(starting: concurrent.futures.Future) -> None:
    """Waits for the pool being started and closes it. The first failure is the one reported, so
    the pool's own (its start cut short by the same Ctrl-C, say) is dropped: it has nothing to close."""
    concurrent.futures.wait([starting])
    if starting.exception() is None:
        starting.result().close()


def _inputs(input_path: str | None, build: BuildConfig) -> tuple:
    """(the scanned videos, None), or (None, the earlier build) for a build --from-frames."""
    if build.from_frames:
        if input_path:
            raise ConfigError(f"give the input folder or from_frames, not both (got {input_path!r} and {build.from_frames!r})")
        return None, from_frames.Earlier(build.from_frames)
    if not input_path:
        raise ConfigError("the input folder is required (or from_frames: an earlier build's folder with stored frames)")
    found = scan.scan(input_path, build.layout)
    if found.videos.empty:
        raise InputError(build_folder.nothing_usable(input_path, found.skipped))
    return found, None


def _plan(input_path, found, earlier, sampling, extractor, build) -> tuple:
    """(the plan, the manifest's planned part): of the scanned videos, or of the earlier build's."""
    entry, dim = extractor.manifest_entry(), extractor.feature_dim
    if earlier is not None:
        return from_frames.make_plan(earlier, sampling, entry, dim, build), from_frames.planned(earlier, entry, dim, sampling, build)
    plan = plan_lib.make_plan(found, sampling, entry, dim, build)
    return plan, manifest.planned(input_path, plan, entry, dim, sampling, build)


def _after_part(build: BuildConfig, plan, prepared, info: dict) -> dict | None:
    """A part is done: the last part to finish writes the manifest; the others say what is left."""
    part = f"part {build.worker_index + 1} of {build.num_workers}"
    with folder_lock.briefly(build.out, f"{part} finalizing", True):
        folder = build_folder.OutputFolder(build.out)
        left = build_folder.missing(folder)
        done = f"{part} built ({len(prepared.pending)} shards built, {len(prepared.done)} already there)"
        if left:
            runners.say(f"{done}; {len(left)} of {len(plan.units)} shards are still to be built by other parts. "
                        f"The last part to finish writes manifest.json (or run: python -m dancedata.build_shards --finalize {build.out})")
            return None
        runners.say(f"{done}; every part is built: writing manifest.json")
        return build_folder.finalize(folder, {**info, "num_workers": build.num_workers, "worker_index": build.worker_index})


def finalize(out: str) -> dict:
    """Writes the manifest of a build in `out` whose shards are all built (a partitioned build's parts
    on several machines, say); returns it. Raises InputError naming the parts still missing."""
    build_folder.check_path(out)
    with folder_lock.briefly(out, "finalize", True):
        return build_folder.finalize(build_folder.OutputFolder(out), {"finalized_by": "--finalize"})


def _parser():
    parser = cli.ArgumentParser(
        prog="python -m dancedata.build_shards",
        description="Decode each video once, extract frame features in batches, write sharded TFRecords + manifest.json. "
        "Run the same command again after an interruption to resume.",
    )
    parser.add_argument("input", nargs="?", help="folder of videos (AIST names, or one subfolder per class) or a CSV of path,label")
    parser.add_argument(
        "--finalize", metavar="OUT",
        help="write the manifest of the partitioned build in OUT once all its parts are built (no input needed)",
    )
    config.add_flags(parser, SamplingConfig, ExtractorConfig, BuildConfig)
    return parser


INTERRUPTED = "committed shards are kept; run the same command to resume"  # what Ctrl-C leaves, and how to go on


def main(argv=None) -> int:
    from dancedata import inspect

    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    argv, beam_args = argv[:cut], argv[cut + 1:]  # after `--`: Beam pipeline options
    args = parser.parse_args(argv)
    if args.finalize:
        if args.input:
            parser.error("give the input folder or --finalize OUT, not both")
        print(inspect.summary(finalize(args.finalize), info_file=inspect.build_info(args.finalize)))
        return 0
    if args.input and args.from_frames:
        parser.error("give the input folder or --from-frames OLD_OUT, not both")
    if not args.input and not args.from_frames:
        parser.error("the input folder is required (or --finalize OUT to finish a partitioned build, or --from-frames OLD_OUT "
                     "to build from the frames an earlier build kept)")
    configs = [config.from_flags(args, cls) for cls in (SamplingConfig, ExtractorConfig, BuildConfig)]
    if beam_args and configs[2].runner != "beam":
        parser.error("options after `--` are Beam pipeline options: they need --runner beam")
    result = build_from_configs(args.input, *configs, beam_args=beam_args)
    if result is not None:
        summary = inspect.summary(result, info_file=inspect.build_info(configs[2].out))
        if configs[2].quiet:  # warnings only
            summary = "\n".join(line for line in summary.splitlines() if line.startswith("WARNING"))
        if summary:
            print(summary)
    return 0


if __name__ == "__main__":
    cli.exit(cli.run(main, "build_shards", interrupted=INTERRUPTED))
