"""Runners execute a plan's work units. `prepare` reconciles the output folder with the plan (refuse to
mix, resume, update); `run_local` builds the units still missing, in this process, with decoding in
worker processes (`decode_pool`). Every runner writes the same bytes for the same plan, because each unit's bytes depend only on
its videos and the build's identity.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from dancedata import plan as plan_lib, work_unit
from dancedata.decode_pool import DecodePool
from dancedata.errors import InputError


@dataclasses.dataclass
class Prepared:
    done: dict  # {shard name: record} of units already built
    pending: list  # WorkUnit still to build, in plan order
    reuse: work_unit.Reuse
    leftovers: set  # files of an earlier plan to delete once the new manifest is written


def _input_changes(old: list, new: list) -> tuple:
    before = {video_id: (size, mtime) for video_id, size, mtime in old}
    after = {video_id: (size, mtime) for video_id, size, mtime in new}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(v for v in set(before) & set(after) if before[v] != after[v])
    return added, removed, changed


def _changes_text(added, removed, changed) -> str:
    parts = [f"{len(ids)} {what} (e.g. {ids[0]})" for ids, what in ((added, "added"), (removed, "removed"), (changed, "modified")) if ids]
    return ", ".join(parts)


def prepare(plan, folder, overwrite: bool = False, update: bool = False) -> Prepared:
    """Checks that `folder` holds nothing that conflicts with `plan`, and works out what is built."""
    out = folder.out
    if overwrite:
        folder.clear()
    elif folder.plan is None and folder.manifest is not None:
        raise InputError(
            f"{out} already holds a build written by an earlier dancedata (no .build/{os.path.basename('plan.json')}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    elif folder.plan is not None:
        differences = plan_lib.differences(folder.plan.get("identity", {}), plan.identity)
        if differences:
            raise InputError(
                f"{out} already holds a build with other options ({'; '.join(differences)}); "
                "pass --overwrite to replace it, or choose another --out"
            )
        changes = _input_changes(folder.plan.get("inputs", []), plan.inputs)
        if any(changes) and not update:
            raise InputError(
                f"{out} already holds a build of other input: {_changes_text(*changes)}; "
                "pass --update to bring it up to date (unchanged videos are reused), or --overwrite to start over"
            )
    names = {unit.name for unit in plan.units}
    if folder.plan is None:  # a fresh folder: never replace shard files that no build of ours recorded
        foreign = sorted(n for n in names if os.path.exists(os.path.join(out, n)))
        if foreign:
            raise InputError(
                f"{out} holds {len(foreign)} shard file(s) that no dancedata build recorded (e.g. {foreign[0]}); "
                "choose another --out"
            )

    folder.remove_partials()
    records = folder.records()
    done = {}
    for unit in plan.units:
        record = records.get(unit.name)
        if folder.is_built(unit.name, unit.key, record):
            done[unit.name] = records.pop(unit.name)
    for name, record in records.items():  # committed shards of an earlier plan: their features may be reused
        path = os.path.join(out, name)
        intact = os.path.exists(path) and folder.is_built(name, record.get("key"), record)
        if intact and (record.get("videos") or record.get("skipped")):
            folder.keep_for_reuse(name, record)
        else:
            folder.forget(name)
    leftovers = folder.ours() - names - {"manifest.json", "build_info.json"}
    if set(done) != names and folder.manifest is not None:
        os.remove(os.path.join(out, "manifest.json"))  # a manifest means "complete"; it is written again last
    folder.start({"identity": plan.identity, "inputs": plan.inputs, "files": sorted(names | leftovers)})
    pending = [unit for unit in plan.units if unit.name not in done]
    return Prepared(done, pending, work_unit.Reuse(folder.reuse_records()), leftovers)


def say(message: str) -> None:
    """One line on stderr, even with --quiet (which only hides the progress bar): what a rerun keeps."""
    print(message, file=sys.stderr, flush=True)


def run_local(plan, folder, prepared: Prepared, extractor, sampling, build, progress=None) -> list:
    """Builds every pending unit here; returns all units' records in plan order."""
    from dancedata.extract import VideoBatcher

    reuse, pending = prepared.reuse, prepared.pending
    if prepared.done:
        kept = sum(r["num_examples"] + len(r["skipped"]) for r in prepared.done.values())
        say(f"resuming: {len(prepared.done)} of {len(plan.units)} shards are already built ({kept} videos) and are kept; "
            f"{len(pending)} to build")
    to_decode = [row for unit in pending for row in unit.videos if not reuse.has(row)]
    reused = sum(len(unit.videos) for unit in pending) - len(to_decode)
    if reused:
        say(f"reusing {reused} videos from earlier shards (same file size and time); {len(to_decode)} to decode")
    if progress is not None:
        progress.reset(total=sum(len(unit.videos) for unit in pending))
    batcher = VideoBatcher(extractor)
    records = dict(prepared.done)
    workers = min(build.workers, max(len(to_decode), 1))
    with DecodePool(workers, sampling, extractor.config.image_size, build.video_timeout) as pool:
        decoded = pool.imap(to_decode)
        for unit in pending:
            records[unit.name] = work_unit.run(
                unit, folder, decoded, batcher, reuse, sampling.frames, extractor.feature_dim, build.dtype,
                on_video=progress.update if progress is not None else None,
            )
        decoded.close()
    return [records[unit.name] for unit in plan.units]


def finish(folder, prepared: Prepared, plan) -> None:
    """After the manifest: deletes an earlier plan's shards and the reuse area."""
    for name in prepared.leftovers:
        folder.forget(name)
    folder.finish()
    folder.start({"identity": plan.identity, "inputs": plan.inputs, "files": sorted(unit.name for unit in plan.units)})
