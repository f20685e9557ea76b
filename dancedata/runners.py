"""Runners execute a plan's work units once `build_folder.prepare` has said which are still missing:
`run_local` builds them in this process, with decoding in worker processes (`decode_pool`), or, for a
build --from-frames, from an earlier build's stored frames (`from_frames`); the Beam runner
(`beam_runner`) calls the same `source` and `build_units`. Every runner writes the same bytes for the same
plan, because each unit's bytes depend only on its videos and the build's identity.
"""
from __future__ import annotations

import sys

from dancedata import work_unit
from dancedata.decode_pool import DecodePool


def say(message: str) -> None:
    """One line on stderr, even with --quiet (which only hides the progress bar): what a rerun keeps."""
    print(message, file=sys.stderr, flush=True)


def source(build, sampling, image_size: int, workers: int):
    """Where a build's clips come from (`imap(rows)` -> (row, clip or DecodeError) in row order, `close`):
    decoding processes over the videos, or the frames an earlier build kept (no video opened)."""
    if build.from_frames:
        from dancedata.from_frames import FrameSource

        return FrameSource(build.from_frames, image_size)
    return DecodePool(workers, sampling, image_size, build.video_timeout)


def run_local(plan, folder, prepared, extractor, sampling, build, progress=None, pool=None) -> dict:
    """Builds every pending unit here, decoding in `pool` (or a DecodePool of its own); returns
    {shard name: record} of the units built or found built."""
    reuse, pending = prepared.reuse, prepared.pending
    if prepared.done:
        kept = sum(r["num_examples"] + len(r["skipped"]) for r in prepared.done.values())
        say(f"resuming: {len(prepared.done)} of {len(plan.units)} shards are already built ({kept} videos) and are kept; "
            f"{len(pending)} to build")
    to_decode = work_unit.to_decode(pending, reuse, extractor.videos_per_batch)
    reused = sum(len(unit.videos) for unit in pending) - len(to_decode)
    if reused:
        say(f"reusing {reused} videos from earlier shards (same file size and time, same batch slot); {len(to_decode)} to decode")
    if progress is not None:
        progress.reset(total=sum(len(unit.videos) for unit in pending))
    records = dict(prepared.done)
    own = pool is None
    if own:
        pool = source(build, sampling, extractor.config.image_size, min(build.workers, max(len(to_decode), 1)))
    try:
        records.update(build_units(pending, folder, reuse, extractor, sampling, build, pool,
                                   on_video=progress.update if progress is not None else None))
    finally:
        if own:
            pool.close()
    return records


def build_units(units: list, folder, reuse, extractor, sampling, build, pool, on_video=None) -> dict:
    """Builds `units` in order, decoding ahead across them in `pool`; returns {shard name: record}.
    The one place every runner (local, partitioned, Beam) builds a unit."""
    from dancedata.extract import VideoBatcher

    batcher = VideoBatcher(extractor)
    encoder = None
    if build.keep_frames:
        from dancedata.frames import Encoder

        encoder = Encoder(build.keep_frames, build.jpeg_quality, extractor.config.image_size)
    decoded = pool.imap(work_unit.to_decode(units, reuse, extractor.videos_per_batch))
    records = {}
    for unit in units:
        records[unit.name] = work_unit.run(
            unit, folder, decoded, batcher, reuse, sampling.frames, extractor.feature_dim, build.dtype, on_video=on_video,
            encoder=encoder,
        )
    decoded.close()
    return records
