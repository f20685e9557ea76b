"""One training run (`train.py --out`): the owner of its folder, bound to the build it reads, with one
small committed state and one step that advances it. Keras' fit (RunProgress), the multi-worker loop
and fine-tuning all go through it, so its rules exist once:

- Owned: the run holds the folder lock (`OUT/.dancedata.lock`, the build's kind of lock) for its whole
  life; a second trainer is refused with one line naming the live one, and a dead holder's lock is
  taken over and said so.
- Bound: `run.json` records the flags that change what the run computes and the build it reads (the
  manifest's checksum, schema, extractor, classes and each split's shards). A resume against another
  build is refused naming what changed, unless the user accepts it; a build changed under a live run
  stops it at the next epoch (its last checkpoint kept) with one line that says so.
- Resumable at any step: a checkpoint is the model's variables (weights, optimizer slots, the dropout
  seed generators, the epoch's metric accumulators) in one .npz, committed by one atomic rename of
  `state.json`: {epoch, step, best, since_best, status, checkpoint}, a few hundred bytes. The readers
  start at (epoch, step) directly (ReadConfig(epoch=, step=)), so a resume replays nothing.
- A kill at any moment leaves the old state or the new one; temporary files of a killed write are
  removed on the next start; a folder whose run never committed a state starts afresh.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import json
import os
import re
import signal
import sys

import keras
import numpy as np

from dancedata.errors import ConfigError, DanceDataError, EnvironmentFailure

STATE = "state.json"
RUN = "run.json"
CHECKPOINTS = "checkpoints"
RUN_FILES = ("model.keras", "metrics.json", "history.csv", "labels.json", "dataset.json", "train_config.json",
             "damage.json", RUN)
# Flags a resumed run may change: none of them changes what it computes.
# Flags a resume may change. The damage policy among them: a run stopped by damage goes on with --on-damage skip.
RESUME_FREE = ("out", "overwrite", "data_service_timeout", "checkpoint_every", "accept_other_build", "on_damage",
               "skip_bad_shards")
STATUSES = ("training", "stopped early", "trained", "done")
# The only files a state may name: what commit() writes (epoch-NNNNN.npz: runs of earlier releases).
_CHECKPOINT = re.compile(r"(epoch-\d{5}|epoch-\d{5}-step-\d{9})\.npz")
_TEMPORARY = re.compile(r"\.(state\.json|epoch-\d{5}(-step-\d{9})?\.npz)\.\d+")


class BuildChanged(ConfigError):
    """The shard folder is not the build this run read (replaced, rebuilt or updated)."""


@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run has committed: `epoch` epochs done and `step` steps of the next (the position its
    next batch is read from), the best validation accuracy so far and the epochs since it, the status,
    and the checkpoint holding the variables at that position."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    since_best: int = 0
    status: str = "training"
    checkpoint: str | None = None
    best_sha256: str | None = None  # of checkpoints/best.weights.h5, which the final model is loaded from
    history_sha256: str | None = None  # of history.csv's committed rows, which the run's history continues

    @classmethod
    def parse(cls, found, path: str) -> RunState:
        """A state read from `path`, checked field by field (it travels with the run folder)."""
        def refuse(what):
            return ConfigError(f"{path} is not a run state dancedata wrote ({what}); pass --overwrite to start the run "
                               "over, or another --out")

        if not isinstance(found, dict):
            raise refuse(f"a JSON {type(found).__name__}, not an object")
        fields = {field.name for field in dataclasses.fields(cls)}
        if set(found) - fields - {"config"} or not {"epoch", "status"} <= set(found):  # config: runs of earlier releases
            raise refuse(f"keys {', '.join(sorted(map(str, set(found) ^ fields)))[:200]}")
        values = {}
        for name, kind in (("epoch", int), ("step", int), ("since_best", int)):
            value = found.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**40:
                raise refuse(f"{name} {value!r}")
            values[name] = value
        best = found.get("best")
        if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool) or not 0 <= best <= 1):
            raise refuse(f"best {best!r}")
        status = found.get("status", "training")
        if status not in STATUSES:
            raise refuse(f"status {status!r}")
        checkpoint = found.get("checkpoint")
        if checkpoint is not None and not (isinstance(checkpoint, str) and _CHECKPOINT.fullmatch(checkpoint)):
            raise refuse(f"checkpoint {checkpoint!r}: it may name only its own checkpoint files")
        for name in ("best_sha256", "history_sha256"):
            digest = found.get(name)
            if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise refuse(f"{name} {digest!r}")
            values[name] = digest
        return cls(best=None if best is None else float(best), status=status, checkpoint=checkpoint, **values)

    def describe(self, epochs: int, steps: int) -> str:
        where = f"after epoch {self.epoch} of {epochs}"
        if self.step:
            where += f" and step {self.step} of {steps} of epoch {self.epoch + 1}"
        said = f"; best val_accuracy so far {self.best:.4f}" if self.best is not None else ""
        return f"{where} ({self.status}{said})"


def run_config(cfg) -> dict:
    """The flags that define what a run computes (the ones a resume must repeat)."""
    return {key: value for key, value in dataclasses.asdict(cfg).items() if key not in RESUME_FREE}


def build_identity(m: dict, path: str) -> dict:
    """What binds a run to the build it reads (manifest `m` of the folder `path`): small, and enough to
    say what changed."""
    from dancedata import manifest as manifest_lib

    def shards_digest(split):
        import hashlib

        return hashlib.sha256(" ".join(s.get("sha256", "") for s in split["shards"]).encode()).hexdigest()[:16]

    return {
        "path": path if "://" in path else os.path.abspath(path),
        "checksum": m.get(manifest_lib.CHECKSUM) or manifest_lib.digest(m),
        "schema": m.get("schema_version"),
        "extractor": (m.get("extractor") or {}).get("fingerprint") or (m.get("extractor") or {}).get("backbone"),
        "classes": list(m["classes"]),
        "splits": {name: [split["num_examples"], shards_digest(split)] for name, split in m["splits"].items()},
    }


def build_changes(before: dict, now: dict) -> list:
    """What differs between two build identities, in words."""
    if before.get("checksum") == now.get("checksum"):
        return []
    changed = [f"schema {before.get('schema')} → {now.get('schema')}"] if before.get("schema") != now.get("schema") else []
    if before.get("extractor") != now.get("extractor"):
        changed.append("the extractor's weights")
    if before.get("classes") != now.get("classes"):
        changed.append("the classes")
    old, new = before.get("splits") or {}, now.get("splits") or {}
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            changed.append(f"split {name} {'added' if a is None else 'removed'}")
        elif a[0] != b[0]:
            changed.append(f"split {name} {a[0]} → {b[0]} examples")
        elif a[1] != b[1]:
            changed.append(f"the shards of {name}")
    return changed or ["its manifest"]


def _write_atomically(path: str, write) -> None:
    """write(handle) into a temporary name, fsync, rename: a kill leaves the old file or the new one."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _json_writer(document):
    """A run document (state.json, run.json) sealed as a build's manifest is: its checksum, so a changed byte
    is refused naming the file, not read as another epoch, best score or flag (_load checks it)."""
    from dancedata import manifest

    return lambda handle: handle.write(manifest.dumps(manifest.sealed(document)).encode())


class TrainingRun:
    """A run folder and its committed state; see the module docstring. Open it with `TrainingRun.open`
    (a context manager that releases the folder), `track` what a checkpoint holds, `restore`, then call
    `after_step` after every training step and `after_epoch` after every epoch."""

    def __init__(self, out: str | None, cfg, identity: dict, state: RunState, *, steps: int = 1,
                 strategy=None, chief: bool = True, lock=None):
        self.out, self.cfg, self.identity, self.state = out, cfg, identity, state
        self.shards = cfg.shards.rstrip("/")
        self._steps, self.strategy, self.chief, self.lock = steps, strategy, chief, lock
        self.checkpoints = os.path.join(out, CHECKPOINTS) if out else None
        self.best_path = os.path.join(self.checkpoints, "best.weights.h5") if out else None
        self.restored_metrics: list | None = None  # the partial epoch's metric accumulators, once restored
        self.stop_requested = False
        self._variables = None

    @property
    def steps(self) -> int:
        """Training steps per epoch (set once the datasets know them)."""
        return self._steps

    @steps.setter
    def steps(self, steps: int) -> None:
        if self.state.step >= steps > 0:  # the readers would refuse the position without naming the state
            where = os.path.join(self.checkpoints, STATE) if self.checkpoints else "the chief's run state"
            raise ConfigError(f"{where} is at step {self.state.step} of epoch {self.state.epoch + 1}, but an epoch here "
                              f"has {steps} steps (the state was edited, or the build changed); pass --overwrite to "
                              "start the run over, or another --out")
        self._steps = steps

    # --- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, cfg, builder, strategy=None, chief: bool = True) -> TrainingRun:
        """The run in cfg.out (a new folder runs/<timestamp> without one): locked, its earlier state read
        and checked against these flags and this build. Workers other than the chief keep no folder:
        they take the chief's state (share_state)."""
        identity = build_identity(builder.manifest, builder.path)
        if not chief:
            run = cls(None, cfg, identity, RunState(), strategy=strategy, chief=False)
            run.share_state()  # before any dataset is made: every worker reads from the chief's position
            return run
        out = cfg.out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        if os.path.exists(out) and not os.path.isdir(out):
            raise ConfigError(f"--out {out} is a file; pass a folder for the run")
        lock = _lock(out)
        try:
            run = cls(out, cfg, identity, RunState(), strategy=strategy, lock=lock)
            run._prepare()
            run.share_state()
        except BaseException:
            lock.release()
            raise
        return run

    def _prepare(self) -> None:
        """Resumes, refuses or starts the run in self.out (see open)."""
        import shutil

        cfg, out = self.cfg, self.out
        if os.path.isdir(self.checkpoints):
            for name in os.listdir(self.checkpoints):  # a killed write's leftovers: no live writer (we hold the lock)
                if _TEMPORARY.fullmatch(name):
                    os.remove(os.path.join(self.checkpoints, name))
        state_path = os.path.join(self.checkpoints, STATE)
        if os.path.exists(state_path) and not cfg.overwrite:
            self.state = RunState.parse(_load(state_path), state_path)
            if self.state.epoch > cfg.epochs or (self.state.epoch == cfg.epochs and self.state.step):
                raise ConfigError(f"{state_path} is not a run state dancedata wrote (epoch {self.state.epoch}, step "
                                  f"{self.state.step} of a run of {cfg.epochs} epochs); pass --overwrite to start the run "
                                  "over, or another --out")
            if self.state.status == "done":
                raise ConfigError(f"{out} already holds a finished run; pass --overwrite to replace it, or another --out")
            self._check_resume(state_path)
            self.history(cut=True)
            if self.state.history_sha256 is not None and self._history_digest() != self.state.history_sha256:
                raise ConfigError(f"{os.path.join(out, 'history.csv')} does not match the run's state (changed, cut or "
                                  "damaged since its last checkpoint); pass --overwrite to start over, or another --out")
            return
        if not cfg.overwrite and os.path.isdir(self.checkpoints) and any(
                _CHECKPOINT.fullmatch(name) for name in os.listdir(self.checkpoints)):
            raise ConfigError(f"{out} holds checkpoints but no {state_path} (a run's state is only ever replaced, never "
                              "removed: it was deleted); pass --overwrite to start over, or another --out")
        earlier = [name for name in RUN_FILES + ("logs", CHECKPOINTS) if os.path.exists(os.path.join(out, name))]
        # Without a committed state: a run of ours that was killed before its first commit (it writes run.json,
        # then state.json) starts afresh; anything else may be another program's files, never deleted unasked.
        ours = os.path.exists(os.path.join(out, RUN)) or os.path.isdir(self.checkpoints)
        finished = [name for name in ("model.keras", "metrics.json") if name in earlier]
        if earlier and not cfg.overwrite and (finished or not ours):
            raise ConfigError(f"{out} already holds a run ({', '.join(earlier[:3])}) that cannot be resumed; "
                              "pass --overwrite to replace it, or another --out")
        if earlier and not cfg.overwrite:
            print(f"train.py: the run in {out} stopped before its first checkpoint: starting it afresh", file=sys.stderr)
        for name in earlier:  # two runs' files and TensorBoard logs never mix
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        os.makedirs(self.checkpoints, exist_ok=True)
        self._write(os.path.join(out, RUN), {"config": run_config(cfg), "build": self.identity})
        self._write(state_path, self.state)

    def _check_resume(self, state_path: str) -> None:
        """Refuses a resume with other flags or against another build (unless accepted)."""
        cfg, out = self.cfg, self.out
        run_path = os.path.join(out, RUN)
        if os.path.exists(run_path):
            recorded = _load(run_path)
            if not isinstance(recorded, dict) or set(recorded) != {"config", "build"} \
                    or not isinstance(recorded["config"], dict) or not isinstance(recorded["build"], dict):
                raise ConfigError(f"{run_path} is not a run description dancedata wrote; pass --overwrite to start the "
                                  "run over, or another --out")
            before, build = recorded["config"], recorded["build"]
        else:  # a run of an earlier release: its flags are in its state, its build was not recorded
            legacy = _load(state_path)
            if not isinstance(legacy.get("config"), dict):
                raise ConfigError(f"{out} holds a run without its {run_path}; pass --overwrite to start over, or another "
                                  "--out")
            before, build = legacy["config"], None
        now = run_config(cfg)
        unknown = sorted(set(before) - {f.name for f in dataclasses.fields(cfg)})
        if unknown:  # a name train.py never had: the file is damaged, or not ours
            raise ConfigError(f"{run_path if os.path.exists(run_path) else state_path} records flags train.py does not "
                              f"have ({', '.join(map(str, unknown[:3]))}): it is damaged or not a run description "
                              "dancedata wrote; pass --overwrite to start the run over, or another --out")
        # A flag added since the run started was at its default then.
        defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
        before = {**{key: defaults[key] for key in set(now) - set(before) if key in defaults}, **before}
        changed = [f"--{key.replace('_', '-')} {before.get(key)} → {now.get(key)}"
                   for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
        if changed:
            raise ConfigError(f"{out} holds an interrupted run with other flags ({'; '.join(changed)[:300]}) than its "
                              f"{RUN} records; run it with its own flags to resume it, or pass --overwrite to "
                              "start over, or another --out")
        differences = build_changes(build, self.identity) if build is not None else []
        if differences and not getattr(cfg, "accept_other_build", False):
            raise BuildChanged(f"{cfg.shards} is not the build this run in {out} read ({', '.join(differences)} changed); "
                               "point --shards at that build to resume, or pass --accept-other-build to continue on this "
                               "one, or --overwrite to start over")
        if differences or build is None:
            if differences:
                print(f"train.py: continuing the run in {out} on another build ({', '.join(differences)} changed), as "
                      "--accept-other-build says", file=sys.stderr)
            self._write(run_path, {"config": now, "build": self.identity})

    # --- what a checkpoint holds --------------------------------------------------------------------
    def track(self, classifier, fitted=None, optimizer=None) -> None:
        """The variables a checkpoint holds: `classifier`'s weights, the optimizer's (fit's, unless the
        loop has its own), and the seed generators of `fitted` (the model fit trains: the classifier, or
        a model around it)."""
        fitted = fitted or classifier
        self._variables = (classifier, fitted, optimizer)

    def _saved(self) -> dict:
        classifier, fitted, optimizer = self._variables
        optimizer = optimizer or fitted.optimizer
        seeds = [v for v in fitted.variables if v.path.endswith("seed_generator_state")]
        return {"weights": list(classifier.weights), "optimizer": list(optimizer.variables), "seeds": seeds}

    @property
    def position(self) -> tuple[int, int]:
        return self.state.epoch, self.state.step

    def restore(self) -> None:
        """Loads the committed checkpoint into the tracked variables (nothing on a fresh run). Under a
        multi-worker strategy every worker then takes the chief's variables."""
        if self.chief and self.state.checkpoint:
            classifier, fitted, optimizer = self._variables
            optimizer = optimizer or fitted.optimizer
            if not optimizer.built:
                optimizer.build(fitted.trainable_variables)
            path = os.path.join(self.checkpoints, self.state.checkpoint)
            import zipfile

            try:
                with np.load(path) as saved:
                    self._assign(saved, path)
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
                raise ConfigError(f"cannot read the run's checkpoint {path} ({error}); pass --overwrite to start over, "
                                  "or another --out") from None
        if self._multi_worker and (self.state.epoch or self.state.step):  # the same decision on every worker
            from dancedata.models.multi_worker import from_chief

            classifier, fitted, optimizer = self._variables
            variables = [*fitted.variables, *(optimizer or fitted.optimizer).variables]
            for variable, value in zip(variables, from_chief(self.strategy, [v.numpy() for v in variables])):
                variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))

    def resumed_metrics(self, default: list) -> list:
        """The metric accumulators of the epoch this run resumes inside (`default` at an epoch's start):
        what the checkpoint held, the chief's on every worker."""
        values = self.restored_metrics if self.state.step and self.restored_metrics is not None else default
        self.restored_metrics = None
        if self._multi_worker and self.state.step:
            from dancedata.models.multi_worker import from_chief

            values = from_chief(self.strategy, [np.asarray(v, np.float64) for v in values])
        return values

    def _assign(self, saved, path: str) -> None:
        for kind, values in self._saved().items():
            count = sum(1 for key in saved.files if key.startswith(kind + "/"))
            if count != len(values):
                raise ConfigError(f"the checkpoint {path} holds {count} {kind} variables, the model {len(values)}: it "
                                  "is not this run's; pass --overwrite to start over")
            for i, variable in enumerate(values):
                value = saved[f"{kind}/{i}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ConfigError(f"the checkpoint {path} does not fit the model ({kind} {i}: {value.shape} vs "
                                      f"{tuple(variable.shape)}); pass --overwrite to start over")
                variable.assign(value)
        count = sum(1 for key in saved.files if key.startswith("metrics/"))
        self.restored_metrics = [saved[f"metrics/{i}"] for i in range(count)] if self.state.step else None

    @property
    def _multi_worker(self) -> bool:
        return getattr(self.strategy, "cluster_resolver", None) is not None and bool(
            getattr(self.strategy.cluster_resolver, "task_type", None))

    def share_state(self) -> None:
        """Every worker of a multi-worker run takes the chief's state (a no-op on one worker)."""
        if not self._multi_worker:
            return
        from dancedata.models.multi_worker import from_chief

        s = self.state
        mine = np.array([s.epoch, s.step, -1.0 if s.best is None else s.best, s.since_best, STATUSES.index(s.status),
                         1.0 if s.checkpoint else 0.0], np.float64)
        epoch, step, best, since, status, _ = from_chief(self.strategy, [mine])[0].tolist()
        self.state = dataclasses.replace(s, epoch=int(epoch), step=int(step), best=None if best < 0 else best,
                                         since_best=int(since), status=STATUSES[int(status)])

    # --- advancing ----------------------------------------------------------------------------------
    def after_step(self, step: int, metrics=lambda: ()) -> None:
        """After step `step` (1-based within the epoch) of epoch state.epoch: commits a checkpoint every
        cfg.checkpoint_every steps, and when a stop was asked for (SIGTERM, Ctrl-C: see stopping), then
        stops the run (KeyboardInterrupt). `metrics()` gives the epoch's metric accumulators so far. The
        epoch's last step is committed by after_epoch, after validation."""
        if step >= self.steps:
            return
        every = getattr(self.cfg, "checkpoint_every", 0) or 0
        if self.stop_requested or (every and step % every == 0):
            self.commit(dataclasses.replace(self.state, step=step), metrics())
        if self.stop_requested:
            raise KeyboardInterrupt

    def after_epoch(self, val_accuracy: float | None, save_best) -> bool:
        """After the epoch state.epoch (its validation done): keeps the best weights (save_best(path)),
        commits the checkpoint of the next epoch's start, and returns whether patience ran out."""
        best, since, digest = self.state.best, self.state.since_best, self.state.best_sha256
        if val_accuracy is not None:
            if best is None or val_accuracy > best:
                best, since = float(val_accuracy), 0
                if self.chief:
                    self._write(self.best_path, lambda handle: None, save=save_best)
                    digest = _sha256(self.best_path)
            else:
                since += 1
        patience = self.cfg.patience
        stop = bool(patience and val_accuracy is not None and since >= patience)
        self.commit(RunState(epoch=self.state.epoch + 1, step=0, best=best, since_best=since,
                             status="stopped early" if stop else "training", checkpoint=self.state.checkpoint,
                             best_sha256=digest, history_sha256=self._history_digest()))
        if self.stop_requested:
            raise KeyboardInterrupt
        return stop

    def commit(self, state: RunState, metrics=()) -> None:
        """Writes the variables at `state`'s position, then commits `state` naming them, then drops the
        previous checkpoint. Only the chief writes; every worker advances its state alike."""
        if not self.chief:
            self.state = state
            return
        name = f"epoch-{state.epoch:05d}-step-{state.step:09d}.npz" if state.step else f"epoch-{state.epoch:05d}.npz"
        arrays = {f"{kind}/{i}": np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                  for kind, values in {**self._saved(), "metrics": list(metrics)}.items() for i, v in enumerate(values)}
        previous = self.state.checkpoint
        self._write(os.path.join(self.checkpoints, name), lambda handle: np.savez(handle, **arrays))
        self._write(os.path.join(self.checkpoints, STATE), dataclasses.replace(state, checkpoint=name))
        self.state = dataclasses.replace(state, checkpoint=name)
        if previous not in (None, name):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.checkpoints, previous))

    def finish(self, status: str) -> None:
        """Commits the run's status ("trained": fitting over; "done": artefacts written)."""
        self.state = dataclasses.replace(self.state, status=status)
        if self.chief:
            self._write(os.path.join(self.checkpoints, STATE), self.state)

    def _write(self, path: str, content, save=None) -> None:
        """An atomic write (or save(path): a writer of its own, e.g. Keras'); a document (a dict, or the
        state) is written sealed (_json_writer). A failure (disk full, permissions) reads as the build's do:
        the path, what is kept, what to do, exit status 1."""
        if isinstance(content, RunState):
            content = dataclasses.asdict(content)
        try:
            if save is not None:
                save(path)
            else:
                _write_atomically(path, content if callable(content) else _json_writer(content))
        except OSError as error:
            kept = (f"its last checkpoint ({self.state.describe(self.cfg.epochs, self.steps)}) is kept"
                    if self.state.checkpoint else "nothing was committed yet")
            reason = str(error.strerror or error).strip().splitlines()[0][:200]
            raise EnvironmentFailure(f"cannot write {path}: {reason}; the run in {self.out} stops and "
                                     f"{kept}: free space (or fix the folder) and run the same command to continue") from None

    def _history_digest(self) -> str | None:
        path = os.path.join(self.out, "history.csv") if self.chief else None
        return _sha256(path) if path and os.path.exists(path) else None

    def best_weights(self) -> str | None:
        """The path of the best epoch's weights, checked against the state; None when no epoch was validated."""
        if self.state.best is None or not self.chief:
            return None
        if not os.path.exists(self.best_path):
            raise ConfigError(f"{self.best_path} is missing (the run's best weights); pass --overwrite to start over")
        if self.state.best_sha256 is not None and _sha256(self.best_path) != self.state.best_sha256:
            raise ConfigError(f"{self.best_path} does not match the run's state (changed or damaged); pass --overwrite to "
                              "start over")
        return self.best_path

    # --- the build ---------------------------------------------------------------------------------
    def check_build(self) -> None:
        """Raises BuildChanged when the shard folder no longer holds the build this run reads (a build
        --update or a replaced folder while training): noticed at every epoch and before evaluation."""
        from dancedata import manifest as manifest_lib

        try:
            now = manifest_lib.load(self.shards)
        except DanceDataError as error:
            changes = [f"its manifest ({error})"]
        else:
            if (now.get(manifest_lib.CHECKSUM) or manifest_lib.digest(now)) == self.identity["checksum"]:
                return
            changes = build_changes(self.identity, build_identity(now, self.shards))
        where = f"its last checkpoint ({self.state.describe(self.cfg.epochs, self.steps)}) is kept" if self.chief else ""
        raise BuildChanged(f"the build in {self.shards} changed while this run read it ({', '.join(changes)} changed); "
                           f"{where + '; ' if where else ''}run the same command with --accept-other-build to continue "
                           "on the new build, or --overwrite to start over")

    # --- history and stopping --------------------------------------------------------------------------
    def history(self, cut: bool = False) -> dict:
        """history.csv as fit's History holds it ({metric: [per epoch]}); `cut` first drops the rows of
        epochs the state has not committed (an epoch may log its row, then be killed before its commit)."""
        path = os.path.join(self.out, "history.csv")
        if not os.path.exists(path):
            return {}
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except (UnicodeDecodeError, csv.Error) as error:
            raise ConfigError(f"{path} is not a history dancedata wrote ({error}); pass --overwrite to start over") from None
        if cut and len(rows) > self.state.epoch + 1:
            import io

            text = io.StringIO()
            csv.writer(text).writerows(rows[: self.state.epoch + 1])
            rows = rows[: self.state.epoch + 1]
            self._write(path, lambda handle: handle.write(text.getvalue().encode()))
        if not rows:
            return {}
        header, body = rows[0], rows[1:]
        try:
            return {name: [float(row[i]) for row in body] for i, name in enumerate(header) if name != "epoch"}
        except (ValueError, IndexError):
            raise ConfigError(f"{path} is not a history dancedata wrote; pass --overwrite to start over") from None

    @contextlib.contextmanager
    def stopping(self):
        """While training: the first SIGINT or SIGTERM asks the run to stop after the current step, with
        a checkpoint there (after_step, after_epoch); a second one stops at once."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask(number, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            print("\ntrain.py: stopping after this step, with a checkpoint (press Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

        previous = {number: signal.signal(number, ask) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    @contextlib.contextmanager
    def reading(self):
        """Around everything that reads the build: a read that fails (a shard gone, a record count that
        differs) on a build that changed under the run says that, not "rebuild it"."""
        try:
            yield
        except (BuildChanged, KeyboardInterrupt):
            raise
        except Exception:
            self.check_build()
            raise

    def say_resuming(self, file=None) -> None:
        if self.chief and self.position != (0, 0):  # sys.stderr now, not as imported: a caller may have replaced it
            print(f"resuming the run in {self.out} {self.state.describe(self.cfg.epochs, self.steps)}",
                  file=file or sys.stderr, flush=True)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sha256(path: str) -> str:
    from dancedata import fs

    return fs.sha256(path)


def _load(path: str):
    """A run document (state.json, run.json), its seal checked and removed; runs of earlier releases wrote
    none (their values are still checked one by one). Refuses in one line naming the file."""
    from dancedata import manifest

    over = "pass --overwrite to start the run over, or another --out"
    try:
        with open(path, "rb") as handle:
            raw = handle.read((1 << 20) + 1)  # a few hundred bytes; more is not a file a run wrote
        if len(raw) > 1 << 20:
            raise ValueError("it holds more than 1 MiB")
        document = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"cannot read {path} ({str(error)[:200]}); {over}") from None
    if isinstance(document, dict) and manifest.CHECKSUM in document:
        if manifest.sealed(document) != document or raw != manifest.dumps(document).encode("utf-8"):
            raise ConfigError(f"{path} was changed or damaged since the run wrote it (its checksum does not match its "
                              f"bytes); {over}")
        document = {key: value for key, value in document.items() if key != manifest.CHECKSUM}
    return document


def _lock(out: str):
    """The folder lock of a run folder, taken; one line naming the live holder when another has it."""
    from dancedata import folder_lock

    lock = folder_lock.FolderLock(out, folder_lock.LOCK_NAME, "training")
    try:
        lock.acquire()
    except folder_lock.FolderBusy:
        holder = lock.holder() or {}
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
        what = "another training run" if holder.get("what") == "training" else f"another process ({holder.get('what') or 'a build'})"
        raise ConfigError(f"{out} is in use by {what} ({who}); wait for it to finish or stop it, or pass another --out") \
            from None
    if lock.previous is not None:
        holder = lock.previous
        print(f"train.py: taking over {out} from pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
              f"(since {holder.get('since', '?')}), which ended without releasing it", file=sys.stderr)
    return lock


def fit(run: TrainingRun, fitted, train_from, val, phases, callbacks_for) -> None:
    """Keras' fit through the run, from its position to the last epoch: a run resumed inside an epoch
    first finishes that epoch (fit with the steps left, its metric accumulators restored), then goes on
    epoch by epoch. `train_from(epoch, step)` is the training dataset from that position; `phases` are
    [(until epoch, what to do to the model first)]; `callbacks_for(first_epoch, steps)` are the loggers."""
    run.say_resuming()
    for until, first in phases:
        while run.state.status == "training" and run.state.epoch < until:
            if first is not None:
                first(fitted)
            epoch, step = run.position
            end = epoch + 1 if step else until  # the rest of a cut epoch alone: its own step count
            callbacks = [*callbacks_for(epoch, run.steps - step), RunProgress(run, fitted, step)]
            with run.stopping():
                fitted.fit(train_from(epoch, step), validation_data=val, epochs=end, initial_epoch=epoch,
                           steps_per_epoch=run.steps - step, callbacks=callbacks, verbose=2, shuffle=False)


class RunProgress(keras.callbacks.Callback):
    """Keras' side of a TrainingRun: after each step run.after_step, after each epoch run.after_epoch
    (best weights, checkpoint, patience). The first epoch of a fit that resumes inside an epoch starts
    at step `offset`, with the metric accumulators the checkpoint held. Last in the callback list, so an
    epoch's history row and logs exist before its checkpoint does."""

    def __init__(self, run: TrainingRun, fitted, offset: int = 0):
        super().__init__()
        self.run, self.fitted, self.offset = run, fitted, offset
        self.classifier = run._variables[0]

    def on_epoch_begin(self, epoch, logs=None):
        self.run.check_build()
        if self.offset:  # fit reset the accumulators just before this: put back the cut epoch's
            _build_metrics(self.model)
            variables = self.model.metrics_variables
            values = self.run.resumed_metrics([v.numpy() for v in variables])
            if len(variables) != len(values):
                raise ConfigError(f"the run's checkpoint holds {len(values)} metric values, the model {len(variables)}: "
                                  "pass --overwrite to start over")
            for variable, value in zip(variables, values):
                variable.assign(value)

    def on_train_batch_end(self, batch, logs=None):
        self.run.after_step(self.offset + batch + 1, lambda: self.model.metrics_variables)

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0
        if self.run.after_epoch((logs or {}).get("val_accuracy"), self.classifier.save_weights):
            self.model.stop_training = True


def _build_metrics(model) -> None:
    """Creates the compiled metrics' accumulators, which Keras otherwise makes at the first step (too
    late to put a cut epoch's values in). Shapes only: nothing is computed, no random state is used."""
    metrics = getattr(model, "_compile_metrics", None)
    if metrics is not None and not metrics.built:
        outputs = tuple(model.output_shape[1:])
        metrics.build(keras.ops.zeros((1,)), keras.ops.zeros((1, *outputs)))
