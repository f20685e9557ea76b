"""A training run's folder (`train.py --out`): whether an earlier run there is resumed, refused or
replaced, and its history.csv as fit's History. The checkpoint itself is models/training.py's."""
from __future__ import annotations

import dataclasses
import datetime
import os

from dancedata.errors import ConfigError

RUN_FILES = ("model.keras", "metrics.json", "history.csv", "labels.json", "dataset.json", "train_config.json")
RESUME_FREE = ("out", "overwrite", "data_service_timeout")  # the flags a resumed run may change: neither changes what it computes


def run_config(cfg) -> dict:
    return {key: value for key, value in dataclasses.asdict(cfg).items() if key not in RESUME_FREE}


def prepare(cfg) -> tuple:
    """(run folder, the state of the interrupted run there to resume, or None). An interrupted run
    with the same flags is continued; one with other flags is refused naming them; a finished run
    (or one of an older dancedata, which kept no state) is refused; --overwrite removes the earlier
    run's files first, so two runs' files and TensorBoard logs never mix."""
    import shutil

    from dancedata.models import training

    out = cfg.out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; pass a folder for the run")
    earlier = [name for name in RUN_FILES + ("logs", "checkpoints") if os.path.exists(os.path.join(out, name))]
    state = training.read_state(os.path.join(out, "checkpoints"))
    if earlier and not cfg.overwrite:
        if state is None:
            raise ConfigError(f"{out} already holds a run ({', '.join(earlier[:3])}) that cannot be resumed; "
                              "pass --overwrite to replace it, or another --out")
        if state.get("status") == "done":
            raise ConfigError(f"{out} already holds a finished run; pass --overwrite to replace it, or another --out")
        before, now = state.get("config", {}), run_config(cfg)
        changed = [f"--{key.replace('_', '-')} {before.get(key)} → {now.get(key)}"
                   for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
        if changed:
            raise ConfigError(f"{out} holds an interrupted run with other flags ({'; '.join(changed)}); run it with its "
                              "own flags to resume it, or pass --overwrite to start over, or another --out")
        return out, state
    for name in earlier:
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out, exist_ok=True)
    return out, None


def history(out: str, epochs: int | None = None) -> dict:
    """history.csv as fit's History holds it ({metric: [per epoch]}); with `epochs`, cut to that many
    rows first (an interrupted epoch may have logged its row but not committed its checkpoint)."""
    import csv

    path = os.path.join(out, "history.csv")
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if epochs is not None and len(rows) > epochs + 1:
        rows = rows[: epochs + 1]
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    return {name: [float(row[i]) for row in body] for i, name in enumerate(header) if name != "epoch"}
