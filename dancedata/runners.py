"""Runners execute a plan's work units. `prepare` reconciles the output folder with the plan (refuse to
mix, resume, update); `run_local` builds the units still missing, in this process, with decoding in
worker processes (`decode_pool`). Every runner writes the same bytes for the same plan, because each unit's bytes depend only on
its videos and the build's identity.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import socket
import sys

from dancedata import fs, manifest, plan as plan_lib, tfds_metadata, work_unit
from dancedata.decode_pool import DecodePool
from dancedata.errors import InputError
from dancedata.write import BUILD_INFO, FOLDER_FILES, PLAN_FILE, write_json


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


def share(units: list, num_workers: int, worker_index: int) -> list:
    """The units part `worker_index` of a partitioned build builds: every num_workers-th in plan order
    (each part gets shards of every split)."""
    return units[worker_index::num_workers]


def prepare(plan, folder, overwrite: bool = False, update: bool = False, planned: dict | None = None,
            num_workers: int = 1, worker_index: int = 0) -> Prepared:
    """Checks that `folder` holds nothing that conflicts with `plan`, and works out what is built.

    A part of a partitioned build (`num_workers` > 1) builds only its share, and touches only its own
    shards and those of no unit of the plan, so parts on several machines can start at any time."""
    out = folder.out
    mine = {unit.name for unit in share(plan.units, num_workers, worker_index)}
    if overwrite:
        folder.clear()
    elif folder.plan is None and folder.manifest is not None:
        raise InputError(
            f"{out} already holds a build written by an earlier dancedata (no .build/plan.json); "
            "pass --overwrite to replace it, or choose another --out"
        )
    elif folder.plan is not None:
        earlier = folder.plan.get("identity", {})
        differences = plan_lib.differences(earlier, plan.identity)
        if differences and upgradable(earlier, plan.identity):
            if not update:
                raise InputError(
                    f"{out} holds a build of schema version {earlier['schema_version']}; pass --update to add what version "
                    f"{plan.identity['schema_version']} writes (its examples are reused: no video is decoded again), "
                    "or --overwrite to start over"
                )
            differences = []
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
        foreign = sorted(n for n in names if fs.exists(fs.join(out, n)))
        # ... unless another part of this partitioned build started meanwhile: it records its plan
        # before it writes a shard, so a plan there now, with our identity, owns what we saw.
        concurrent = folder.current_plan() if foreign else None
        if foreign and (concurrent is None or plan_lib.differences(concurrent.get("identity", {}), plan.identity)):
            raise InputError(
                f"{out} holds {len(foreign)} shard file(s) that no dancedata build recorded (e.g. {foreign[0]}); "
                "choose another --out"
            )

    folder.remove_partials(mine if num_workers > 1 else None)
    records = folder.records()
    done = {}
    for unit in plan.units:
        record = records.get(unit.name)
        if folder.is_built(unit.name, unit.key, record):
            done[unit.name] = records.pop(unit.name)
        elif unit.name not in mine:
            records.pop(unit.name, None)  # another part's: it may be writing it now
    for name, record in records.items():  # committed shards of an earlier plan, or with a damaged row
        # file: their examples may be reused (a row file is written again from them)
        intact = folder.is_built(name, record.get("key"), record, rows=False)
        if intact and (record.get("videos") or record.get("skipped")):
            folder.keep_for_reuse(name, record)
        else:
            folder.forget(name)
    leftovers = folder.ours() - names - set(FOLDER_FILES)
    if set(done) != names and folder.manifest is not None:
        fs.remove(fs.join(out, "manifest.json"))  # a manifest means "complete"; it is written again last
    folder.start(_plan_document(plan, sorted(names | leftovers), planned, num_workers))
    pending = [unit for unit in plan.units if unit.name not in done and unit.name in mine]
    return Prepared(done, pending, work_unit.Reuse(folder.reuse_records()), leftovers)


def upgradable(earlier: dict, identity: dict) -> bool:
    """Whether a build with identity `earlier` differs from `identity` only by a schema version whose
    examples this version still writes (2 -> 3 added the row files), so an update reuses them all."""
    return earlier.get("schema_version") == 2 and {**earlier, "schema_version": identity.get("schema_version")} == identity


def _plan_document(plan, files: list, planned: dict | None, num_workers: int) -> dict:
    """.build/plan.json: what refuse-to-mix and --update compare, the files the build owns, and what
    finalize needs to write the manifest without the input folder or the extractor."""
    return {"identity": plan.identity, "inputs": plan.inputs, "files": files,
            "units": [[unit.name, unit.key] for unit in plan.units], "num_workers": num_workers, "manifest": planned}


def say(message: str) -> None:
    """One line on stderr, even with --quiet (which only hides the progress bar): what a rerun keeps."""
    print(message, file=sys.stderr, flush=True)


def run_local(plan, folder, prepared: Prepared, extractor, sampling, build, progress=None, pool=None) -> dict:
    """Builds every pending unit here, decoding in `pool` (or a DecodePool of its own); returns
    {shard name: record} of the units built or found built."""
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
    records = dict(prepared.done)
    own = pool is None
    if own:
        pool = DecodePool(min(build.workers, max(len(to_decode), 1)), sampling, extractor.config.image_size, build.video_timeout)
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
    decoded = pool.imap([row for unit in units for row in unit.videos if not reuse.has(row)])
    records = {}
    for unit in units:
        records[unit.name] = work_unit.run(
            unit, folder, decoded, batcher, reuse, sampling.frames, extractor.feature_dim, build.dtype, on_video=on_video,
        )
    decoded.close()
    return records


def missing(folder) -> list:
    """(position, name) of the plan's units whose shard is not committed, by the records alone."""
    records = folder.records()
    return [(position, name) for position, (name, key) in enumerate(folder.plan["units"])
            if (records.get(name) or {}).get("key") != key or not fs.exists(fs.join(folder.out, name))]


def finalize(folder, info: dict | None = None) -> dict:
    """Writes the manifest of a build whose units are all committed (by any runner, on any machine),
    deletes an earlier plan's leftovers, and writes build_info.json; returns the manifest. Running
    it twice, or on two machines at once, writes the same manifest."""
    document = folder.plan
    if document is None or "units" not in document:
        raise InputError(
            f"{folder.out} holds no build plan (.build/{PLAN_FILE}); "
            "start the build with the input folder: python -m dancedata.build_shards VIDEOS --out "
            f"{folder.out} [--num-workers K --worker-index I]"
        )
    records = folder.records()
    absent = [(position, name) for position, (name, key) in enumerate(document["units"])
              if not folder.is_built(name, key, records.get(name))]
    if absent:
        count = document.get("num_workers", 1)
        parts = sorted({position % count for position, _ in absent})
        runs = " and ".join(f"--worker-index {index}" for index in parts)
        raise InputError(
            f"{folder.out}: shards of {len(parts)} part(s) are not built yet ({len(absent)} of {len(document['units'])} "
            f"shards, e.g. {absent[0][1]}); run the build with --num-workers {count} {runs}"
            if count > 1 else
            f"{folder.out}: {len(absent)} of {len(document['units'])} shards are not built yet (e.g. {absent[0][1]}); "
            "run the build command again to finish it"
        )
    ordered = [records[name] for name, _ in document["units"]]
    result = manifest.complete(document["manifest"], ordered)
    frames, mean, variance = work_unit.mean_and_variance([r for r in ordered if r["split"] == "train"])
    if frames:  # train.py standardises with these instead of reading the train split once more
        write_json(fs.join(folder.out, manifest.STATISTICS), {
            "split": "train", "frames": frames, "mean": mean.tolist(), "variance": variance.tolist()})
        result["feature_statistics"] = {"file": manifest.STATISTICS, "split": "train", "frames": frames}
    if not any(split["num_examples"] for split in result["splits"].values()):
        raise InputError(nothing_usable(result["source"]["path"], result["skipped"]))
    tfds_metadata.write(folder.out, result, {name: records[name]["bytes"] for name, _ in document["units"]})
    manifest.write(folder.out, result)  # last: a manifest means "complete"
    names = [name for name, _ in document["units"]]
    for name in set(document.get("files", [])) - set(names) - set(FOLDER_FILES):
        folder.forget(name)
    # Shard partials only: with every shard committed none is in progress; another machine finishing
    # the same partitioned build at this moment may be writing its temporary manifest.
    folder.remove_partials(set(names))
    folder.finish()
    folder.start({**document, "files": names})
    write_json(fs.join(folder.out, BUILD_INFO), {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        **(info or {}),
    })
    return result


def nothing_usable(input_path: str, skipped: list) -> str:
    if not skipped:
        return f"no video files in {input_path}"
    reasons = collections.Counter(entry["reason"] for entry in skipped).most_common(3)
    listed = "; ".join(f"{count} x {reason}" for reason, count in reasons)
    return f"no usable video in {input_path}: {len(skipped)} file(s) skipped ({listed})"
