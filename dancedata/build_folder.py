"""The output folder of a build, and its one owner: what is done, whose, reusable, stale or in
progress is decided here and nowhere else, under an exclusive lock on the folder.

    OUT/train-00000-of-00004.tfrecord         finished shards (final names appear only when complete)
    OUT/train-00000-of-00004.tfrecord.index   where each record and its training fields sit (shard_index)
    OUT/manifest.json                         written last, when every shard is committed
    OUT/build_info.json                       timings and host: the only file that differs between runs
    OUT/.dancedata.lock                       the folder lock (folder_lock; never deleted)
    OUT/.build/plan.json                      the build's identity and input list (refuse-to-mix, --update)
    OUT/.build/<shard>.json                   one record per committed shard: its unit key, sha256, videos
    OUT/.build/reuse/                         shards of an earlier plan whose examples an update reuses

The rules:
- A shard is *done* when its record's key is its unit's in the plan and its bytes (and its index's)
  are the recorded ones. Anything else under a shard's name is redone, never trusted.
- A build holds the folder lock from start to finish (folder_lock.owned). A part of a partitioned
  build holds the lock of its own share for its whole run and takes the folder lock only while it
  prepares the folder and while it finalizes (folder_lock.briefly), so parts never wait long on each other and a whole build never runs beside one.
- Under the folder lock, every committed shard that the plan no longer wants as it is (an earlier
  plan's, or of schema 2/3) is moved aside into `.build/reuse/` if intact, whichever part's it is, so
  an update reuses every unchanged video wherever its old example lies.
- `.incomplete` files are never finished work: each writer names its own, and whoever holds the
  lock of a share deletes the ones of that share that a dead writer left.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import re
import socket

from dancedata import fs, manifest, plan as plan_lib, shard_index, tfds_metadata, work_unit
from dancedata.errors import InputError, ManifestError, ShardError
from dancedata.fs import sha256
from dancedata.write import STATE_DIR, PARTIAL, output_errors, write_json

PLAN_FILE = "plan.json"
REUSE_DIR = "reuse"
BUILD_INFO = "build_info.json"
ROWS_SUFFIX = ".rows"  # schema 3's row files: dropped by an update to schema 4
COMPANIONS = (shard_index.SUFFIX, ROWS_SUFFIX)  # files that live and die with their shard
# What a finished build writes beside its shards (all rewritten by every finalize).
FOLDER_FILES = (manifest.FILENAME, BUILD_INFO, manifest.STATISTICS, *tfds_metadata.FILES)
SHARD_NAME = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.index|\.rows)?$")  # a shard or a companion
WRITER_PARTIAL = re.compile(r"^(.+)\.\d+\.[0-9a-f]+\.incomplete$")  # shard_index.partial_name, fs.write_text


_ABSENT = object()  # no such file, or one already found damaged: unlike a file holding JSON null


def _shard_of(name: str) -> str:
    for suffix in COMPANIONS:
        name = name.removesuffix(suffix)
    return name


class OutputFolder:
    """The state an earlier build left in `out`, and the only code that deletes files there."""

    def __init__(self, out: str):
        check_path(out)
        self.out = out
        self.state = fs.join(out, STATE_DIR)
        self.reuse = fs.join(self.state, REUSE_DIR)
        # What an earlier build left is read whole and checked before anything here is moved or deleted:
        # names first (a hostile name is refused even with --overwrite), then everything else, whose
        # damage `prepare` reports in one line, or, under --overwrite, starts over from.
        self.damage: list = []
        plan_path, manifest_path = fs.join(self.state, PLAN_FILE), fs.join(out, manifest.FILENAME)
        self._raw: dict = {}
        self.plan, self.manifest = self._read(plan_path), self._read(manifest_path)
        self._check_names()
        self.plan = self._checked(self.plan, plan_path, manifest.build_plan)
        self.manifest = self._checked(self.manifest, manifest_path, manifest.checked)

    def _read(self, path: str):
        if not fs.exists(path):
            return _ABSENT
        try:
            self._raw[path] = manifest.read_bytes(path)
            return manifest.parse_document(self._raw[path], path)
        except ManifestError as error:
            self.damage.append((path, error))
            return _ABSENT

    def _checked(self, document, path: str, check):
        if document is _ABSENT:
            return None
        try:
            return check(document, path, self._raw.get(path))
        except ManifestError as error:
            self.damage.append((path, error))
            return None

    def _check_names(self) -> None:
        """Every name this folder's metadata hands on (plan files and units, manifest shards) is a plain
        shard name, checked before anything is read, moved or deleted: a folder that travelled between
        people could otherwise name `../victim.txt` and have a build delete it."""
        def listed(document, key):
            value = document.get(key, [])
            return value if isinstance(value, list) else []

        plan, found = self.plan if isinstance(self.plan, dict) else {}, self.manifest if isinstance(self.manifest, dict) else {}
        named = [(f".build/{PLAN_FILE} files", name) for name in listed(plan, "files")]
        named += [(f".build/{PLAN_FILE} units", unit[0] if isinstance(unit, list) and unit else unit)
                  for unit in listed(plan, "units")]
        splits = found.get("splits", {}) if isinstance(found.get("splits", {}), dict) else {}
        named += [(manifest.FILENAME, shard.get("file") if isinstance(shard, dict) else shard)
                  for split in splits.values() if isinstance(split, dict) for shard in listed(split, "shards")]
        # A name that could lead out of the folder is refused outright, even under --overwrite: someone wrote
        # it. Any other name that is not a shard's is damage, which the documents' checks below report.
        for where, name in named:
            if isinstance(name, str) and (any(part in name for part in ("/", "\\", "..", ":")) or name.startswith("~")):
                check_shard_name(name, f"{self.out}: {where}")

    def ours(self) -> set:
        """Shard names in `out` that a dancedata build wrote (per its plan and manifest), and may
        delete with their companions."""
        names = set(FOLDER_FILES)
        if self.plan:
            names.update(self.plan.get("files", []))
        if self.manifest:
            names.update(s["file"] for split in self.manifest.get("splits", {}).values() for s in split.get("shards", []))
        return names

    def records(self) -> dict:
        """{shard name: record} of the committed shards of the current plan generation; a record that
        names other files than its own shard's counts as none (it is redone, never followed)."""
        found = {}
        for name in sorted(fs.listdir(self.state)):
            if name.endswith(".tfrecord.json") and SHARD_NAME.match(name[: -len(".json")]):
                record = _own_record(name[: -len(".json")], _record(fs.join(self.state, name)))
                if record is not None:
                    found[name[: -len(".json")]] = record
        return found

    def record(self, name: str) -> dict | None:
        """The committed record of one shard, or None (one file read, not the whole state folder)."""
        return _own_record(name, _record(fs.join(self.state, name + ".json")))

    def reuse_records(self) -> list:
        """(path of an earlier shard, its record) for the shards kept for an update."""
        pairs = []
        for name in sorted(fs.listdir(self.reuse)):
            if re.fullmatch(r"[0-9a-f]{32}\.json", name):
                record = _record(fs.join(self.reuse, name))
                shard = fs.join(self.reuse, name[: -len(".json")] + ".tfrecord")
                # Only shards still as recorded: one damaged since it was moved here is decoded again instead.
                if isinstance(record, dict) and KEY.match(str(record.get("key", ""))) and fs.exists(shard) \
                        and record.get("bytes", fs.size(shard)) == fs.size(shard) \
                        and ("sha256" not in record or sha256(shard) == record["sha256"]):
                    pairs.append((shard, record))
        return pairs

    def is_built(self, name: str, key: str, record: dict | None, companions: bool = True) -> bool:
        """A shard is built when its record is for this unit and its bytes (and its index's) are the
        recorded ones. companions=False: whether its examples are intact, whatever became of its index.

        A resume must not read the build twice (on object storage, download it), and needs no sha256: a
        shard with a usable index is trusted on its size and its index (read whole: its sha256 is the
        record's, and its header binds the shard's sha256 and size), then
        - local shards: every record's two CRCs, which must equal the ones the index recorded: the readers'
          own check (shard_index.problem, a memory-mapped pass at crc32c speed, several times sha256's),
          so any damage, a flipped byte inside a record's data included, has the shard redone;
        - shards on object storage: only each record's 16 bytes of framing (plain `inspect`'s check: a few
          bytes a record, never the whole shard). That finds a cut, appended bytes, a shard swapped for or
          replaced by another of the same size, and damage to the framing; a flipped byte inside a record's
          data passes it and is stopped at read time by the readers' CRC check of every record (and by
          `inspect --verify`), whose message says to run the build again: once the folder holds a manifest,
          every record's CRCs are checked here on object storage too, so that rerun redoes the shard.
        A shard whose index is unusable is read whole through sha256, as before (its index is rebuilt from it).
        """
        if record is None or record.get("key") != key:
            return False
        if companions and "index" not in record:  # a shard of schema 2 or 3: never done for a schema-4 plan
            return False
        path = fs.join(self.out, name)
        if not fs.exists(path) or fs.size(path) != record.get("bytes"):
            return False
        if companions and not self._on_rows(name, record):
            return False  # written before feature rows: written again from its own examples (nothing is decoded)
        if self._framed(name, record):
            return True
        # Otherwise the whole bytes decide, as before the fast check: the shard's sha256, and its index's.
        if sha256(path) != record.get("sha256"):
            return False
        if not companions:
            return True
        index = record.get("index") or {}
        index_path = fs.join(self.out, str(index.get("file", "")))
        return bool(index.get("file")) and fs.exists(index_path) and fs.size(index_path) == index.get("bytes") \
            and sha256(index_path) == index.get("sha256")

    def _dims(self) -> dict:
        """The planned examples' num_frames, feature_dim and feature_dtype (KeyError or TypeError if the plan lacks them)."""
        planned = ((self.plan or {}).get("manifest") or {}) if isinstance(self.plan, dict) else {}
        return {key: planned[key] for key in ("num_frames", "feature_dim", "feature_dtype")}

    @staticmethod
    def _entry(name: str, record: dict) -> dict:
        """The manifest entry of shard `name` as its record states it (what shard_index.load checks against)."""
        return {"file": name, "sha256": record.get("sha256"), "index": record.get("index"),
                "num_examples": record.get("num_examples")}

    def _on_rows(self, name: str, record: dict) -> bool:
        """Whether the shard `name` has its features on feature rows (shard_index.feature_row), as this
        release writes them: by its index alone, True when that cannot be read (the other checks decide)."""
        try:
            dims = self._dims()
            _, table = shard_index.load(self.out, self._entry(name, record))
            return shard_index.on_rows(table, dims["num_frames"], shard_index.feature_bytes(dims))
        except (ShardError, KeyError, TypeError, ValueError):
            return True

    def _framed(self, name: str, record: dict) -> bool:
        """Whether the shard `name`, of the recorded size, is the one its recorded index describes (see is_built)."""
        if not isinstance(record.get("index"), dict):
            return False
        path = fs.join(self.out, name)
        try:
            dims, shard = self._dims(), self._entry(name, record)
            header, table = shard_index.load(self.out, shard)
            if not fs.is_remote(path) or self.manifest is not None:
                return shard_index.problem(self.out, dims, shard) is None
            return shard_index.framing_problem(path, header, table, dims["num_frames"], shard_index.feature_bytes(dims)) is None
        except (ShardError, KeyError, TypeError, ValueError):
            return False

    def keep_for_reuse(self, name: str, record: dict) -> None:
        """Moves a committed shard of an earlier plan aside, named by its key, so an update can read
        its examples while the new plan writes shards that may have the same name."""
        import tensorflow as tf

        fs.makedirs(self.reuse)
        base = fs.join(self.reuse, record["key"][:32])
        with contextlib.suppress(FileNotFoundError, tf.errors.NotFoundError):
            fs.replace(fs.join(self.out, name), base + ".tfrecord")
            fs.replace(fs.join(self.state, name + ".json"), base + ".json")
        for suffix in COMPANIONS:  # an index (or row file) is written again with the examples
            fs.remove(fs.join(self.out, name + suffix))

    def forget(self, name: str) -> None:
        """Drops a shard (its companions and its record) that no plan needs any more."""
        for path in (fs.join(self.out, name), *(fs.join(self.out, name + s) for s in COMPANIONS),
                     fs.join(self.state, name + ".json")):
            fs.remove(path)

    def remove_partials(self, names: set | None = None) -> None:
        """Deletes what dead writers left half-written: of the shards `names` (a part's share), or of
        every shard and folder file ours (a whole build, which holds the folder lock)."""
        for name in fs.listdir(self.out):
            if not name.endswith(PARTIAL):
                continue
            found = WRITER_PARTIAL.match(name)
            base = found.group(1) if found else name[: -len(PARTIAL)]  # name.incomplete: before schema 4
            shard = _shard_of(base)
            if names is not None:
                ours = shard in names
            else:
                ours = bool(SHARD_NAME.match(base)) or shard in self.ours() or base in FOLDER_FILES
            if ours:
                fs.remove(fs.join(self.out, name))

    def clear(self) -> None:
        """--overwrite: deletes what earlier builds wrote here, and nothing else. When their plan or manifest
        is damaged, the files named as a build names its shards count as theirs: the folder holds a build."""
        names = self.ours()
        if self.damage:
            names |= {_shard_of(name) for name in fs.listdir(self.out) if SHARD_NAME.match(name)}
        for name in names:
            self.forget(name)
        self.remove_partials()
        fs.rmtree(self.state)
        self.plan = self.manifest = None
        self.damage = []

    def start(self, plan_document: dict) -> None:
        """Creates the folders and records the plan (sealed, as the manifest is) before any shard is written."""
        fs.makedirs(self.state)
        plan_document = {key: value for key, value in plan_document.items() if key != manifest.CHECKSUM}
        write_json(fs.join(self.state, PLAN_FILE), manifest.sealed(plan_document))
        self.plan = plan_document

    def repair_index(self, unit, record: dict | None) -> bool:
        """Rebuilds the index of a committed shard of `unit` whose own bytes are intact, from the shard alone
        (no video decoded), byte for byte the one the build wrote; True when the shard is built after it."""
        if record is None or "index" not in record or not self.is_built(unit.name, unit.key, record, companions=False):
            return False
        try:
            shard_index.repair(self.out, self._dims(), self._entry(unit.name, record), unit.content_key)
        except (ShardError, KeyError, TypeError):
            return False  # not rebuildable as it was: the shard is redone
        return self.is_built(unit.name, unit.key, record)

    def finish(self) -> None:
        fs.rmtree(self.reuse)


KEY = re.compile(r"^[0-9a-f]{64}$")  # a work unit's key (plan.digest)


def check_shard_name(name, where: str) -> None:
    """Refuses, in one line naming the entry, anything but a plain shard name: no separators, no `..`,
    no absolute path, drive or scheme can come from a folder's metadata into a path."""
    if not isinstance(name, str) or not SHARD_NAME.match(name) or name.endswith((".index", ".rows")):
        raise InputError(f"{where} names {str(name)[:120]!r}, which is not a shard name a build writes; the folder's "
                         "metadata was edited or damaged: nothing was touched. Choose another --out, or delete the folder")


def _record(path: str) -> dict | None:
    """A shard's record, or None when it is unreadable or not one a build wrote (its shard is then redone)."""
    try:
        raw = manifest.read_bytes(path, 1 << 28)
        return manifest.shard_record(manifest.parse_document(raw, path), path, raw)
    except ManifestError:
        return None


def _own_record(name: str, record) -> dict | None:
    """`record` if it is a record of shard `name` naming only that shard's files, else None."""
    if not isinstance(record, dict) or record.get("file", name) != name or not KEY.match(str(record.get("key", ""))):
        return None
    index = record.get("index")
    if index is not None and (not isinstance(index, dict) or index.get("file") != name + shard_index.SUFFIX):
        return None
    rows = record.get("rows")
    if rows is not None and (not isinstance(rows, dict) or rows.get("file") != name + ROWS_SUFFIX):
        return None
    return record


def check_path(out: str) -> None:
    fs.check(out)
    if fs.exists(out) and not fs.isdir(out):
        raise InputError(f"output {out} is a file, not a folder; pass --out with a folder path")


@dataclasses.dataclass
class Prepared:
    done: dict  # {shard name: record} of units already built
    pending: list  # WorkUnit still to build, in plan order
    reuse: work_unit.Reuse
    leftovers: set  # files of an earlier plan to delete once the new manifest is written


def share(units: list, num_workers: int, worker_index: int) -> list:
    """The units part `worker_index` of a partitioned build builds: every num_workers-th in plan order
    (each part gets shards of every split)."""
    return units[worker_index::num_workers]


def prepare(plan, folder: OutputFolder, overwrite: bool = False, update: bool = False, planned: dict | None = None,
            num_workers: int = 1, worker_index: int = 0) -> Prepared:
    """Checks that `folder` holds nothing that conflicts with `plan`, and works out what is built.
    Runs under the folder lock (a whole build's, or a part's short hold on it)."""
    out = folder.out
    mine = {unit.name for unit in share(plan.units, num_workers, worker_index)}
    if overwrite:
        folder.clear()
    elif folder.damage:  # before any shard is moved or deleted
        raise folder.damage[0][1]
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
                    f"{out} holds a build of schema version {earlier['schema_version']}; pass --update to bring it to "
                    f"version {plan.identity['schema_version']} (its examples are reused: no video is decoded again), "
                    "or --overwrite to start over"
                )
            differences = []
        if differences:
            raise InputError(
                f"{out} already holds a build with other options ({'; '.join(differences)}); "
                "pass --overwrite to replace it, or choose another --out"
            )
        changes = plan_lib.input_changes(folder.plan.get("inputs", []), plan.inputs)
        if any(changes) and not update:
            raise InputError(
                f"{out} already holds a build of other input: {plan_lib.changes_text(*changes)}; "
                "pass --update to bring it up to date (unchanged videos are reused), or --overwrite to start over"
            )
    names = {unit.name for unit in plan.units}
    if folder.plan is None:  # a fresh folder: never replace shard files that no build of ours recorded
        foreign = sorted(n for n in names if fs.exists(fs.join(out, n)))
        if foreign:
            raise InputError(
                f"{out} holds {len(foreign)} shard file(s) that no dancedata build recorded (e.g. {foreign[0]}); "
                "choose another --out"
            )

    folder.remove_partials(mine if num_workers > 1 else None)
    records = folder.records()
    done = {}
    for unit in plan.units:
        record = records.get(unit.name)
        if folder.is_built(unit.name, unit.key, record) or (unit.name in mine and folder.repair_index(unit, record)):
            done[unit.name] = records.pop(unit.name)
    for name, record in records.items():
        # Committed shards the plan does not want as they are (an earlier plan's, of an older schema,
        # or with a damaged index): their examples may be reused, whichever part's they are.
        if folder.is_built(name, record.get("key"), record, companions=False) and (record.get("videos") or record.get("skipped")):
            folder.keep_for_reuse(name, record)
        elif name in mine or name not in names:
            folder.forget(name)
    leftovers = folder.ours() - names - set(FOLDER_FILES)
    if set(done) != names and folder.manifest is not None:
        fs.remove(fs.join(out, manifest.FILENAME))  # a manifest means "complete"; it is written again last
    folder.start(_plan_document(plan, sorted(names | leftovers), planned, num_workers))
    pending = [unit for unit in plan.units if unit.name not in done and unit.name in mine]
    return Prepared(done, pending, work_unit.Reuse(folder.reuse_records()), leftovers)


def upgradable(earlier: dict, identity: dict) -> bool:
    """Whether a build with identity `earlier` is of an older schema whose examples this version still
    writes (2 -> 3 added row files, 3 -> 4 replaced them by indexes) and otherwise the same build, so an
    update reuses every example. Options an older schema did not record count as this build's."""
    if earlier.get("schema_version") not in (2, 3):
        return False
    return not plan_lib.differences(_filled(earlier, identity), identity)


def _filled(earlier: dict, identity: dict) -> dict:
    """`earlier` with the keys it lacks taken from `identity` (recursively), and identity's schema version."""
    filled = {key: (_filled(earlier[key], value) if isinstance(value, dict) and isinstance(earlier.get(key), dict)
                    else earlier.get(key, value)) for key, value in identity.items()}
    filled["schema_version"] = identity.get("schema_version", filled.get("schema_version"))
    return {**earlier, **filled}


def _plan_document(plan, files: list, planned: dict | None, num_workers: int) -> dict:
    """.build/plan.json: what refuse-to-mix and --update compare, the files the build owns, and what
    finalize needs to write the manifest without the input folder or the extractor."""
    return {"identity": plan.identity, "inputs": plan.inputs, "files": files,
            "units": [[unit.name, unit.key] for unit in plan.units], "num_workers": num_workers, "manifest": planned}


def missing(folder: OutputFolder) -> list:
    """(position, name) of the plan's units whose shard is not committed, by the records alone."""
    records = folder.records()
    return [(position, name) for position, (name, key) in enumerate(folder.plan["units"])
            if (records.get(name) or {}).get("key") != key or not fs.exists(fs.join(folder.out, name))]


def finalize(folder: OutputFolder, info: dict | None = None) -> dict:
    """Writes the manifest of a build whose units are all committed (by any runner, on any machine),
    deletes an earlier plan's leftovers, and writes build_info.json; returns the manifest. Runs under
    the folder lock; running it twice writes the same manifest."""
    damaged = [error for path, error in folder.damage if path != fs.join(folder.out, manifest.FILENAME)]
    if damaged:  # a damaged manifest is written anew below; a damaged plan cannot be finished from
        raise damaged[0]
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
        statistics = {"split": "train", "frames": frames, "mean": mean.tolist(), "variance": variance.tolist()}
        write_json(fs.join(folder.out, manifest.STATISTICS), statistics)
        result["feature_statistics"] = {"file": manifest.STATISTICS, "split": "train", "frames": frames,
                                        "sha256": manifest.digest(statistics)}
    if not any(split["num_examples"] for split in result["splits"].values()):
        raise InputError(nothing_usable(result["source"]["path"], result["skipped"]))
    with output_errors(fs.join(folder.out, "dataset_info.json")):
        result["tfds_metadata"] = tfds_metadata.write(folder.out, result,
                                                      {name: records[name]["bytes"] for name, _ in document["units"]})
    result = manifest.sealed(result)
    write_json(fs.join(folder.out, manifest.FILENAME), result)  # last: a manifest means "complete"
    names = [name for name, _ in document["units"]]
    for name in set(document.get("files", [])) - set(names) - set(FOLDER_FILES):
        folder.forget(name)
    for name in names:  # a schema-3 build's row files, once its shards have indexes
        fs.remove(fs.join(folder.out, name + ROWS_SUFFIX))
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
