"""The package installs only the `dancedata` namespace, and a user's own models/ or train.py in the
working folder neither breaks dancedata nor is replaced by it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import cli_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_wheel_holds_nothing_outside_dancedata(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools leaves build/ where it builds
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "benchmarks", "site"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("dancedata-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {top for top in tops if not top.startswith("dancedata")} == set(), tops
    names = zipfile.ZipFile(wheel).namelist()
    assert "dancedata/train.py" in names and "dancedata/models/gru.py" in names


def test_a_users_models_and_train_py_do_not_meet_dancedatas(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise SystemExit('the user models package was imported')\n")
    (tmp_path / "train.py").write_text("print('the user train.py')\n")
    env = cli_env()
    imports = "import dancedata, dancedata.train, dancedata.predict, dancedata.models; print('ok')"
    done = subprocess.run([sys.executable, "-c", imports], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    helped = subprocess.run([sys.executable, "-m", "dancedata", "train", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "--shards" in helped.stdout, helped.stderr[-2000:]
    mine = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert mine.stdout == "the user train.py\n"


def test_old_scripts_import_models_from_the_repository(tmp_path):
    script = "import models, models.training as t; from models import build_model; print(t.__name__)"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "dancedata.models.training", done.stderr[-2000:]
