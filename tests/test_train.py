"""The learning test: genre is visible in the pixels (one colour per genre), so a pipeline that keeps
labels aligned with videos learns it; a broken alignment would sit at chance (0.25)."""
import json
import subprocess
import sys

import pytest
from conftest import FAST_EXTRACTOR, cli_env, make_aist_folder

import dancedata
from dancedata import DatasetBuilder
from dancedata import run_data
from dancedata import train as train_script
from dancedata import cli
from dancedata import predict as predict_module


@pytest.fixture(scope="module")
def run(learning_run):
    return learning_run


def test_training_learns_genre_well_above_chance(run):
    base, _ = run
    metrics = json.loads((base / "run" / "metrics.json").read_text())
    assert metrics["evaluated_split"] == "test" and metrics["num_examples"] >= 8
    assert metrics["split_strategy"] == "sequence" and metrics["shared_with_train"]["dancers"]["shared"] == 0
    assert metrics["test_accuracy"] >= 0.75, metrics
    assert len(metrics["confusion_matrix"]) == 10 and set(metrics["per_class"]["BR"]) == {"precision", "recall", "f1", "support"}
    for name in ("model.keras", "labels.json", "confusion_matrix.png", "training_curves.png", "history.csv", "dataset.json"):
        assert (base / "run" / name).exists(), name
    assert json.loads((base / "run" / "labels.json").read_text())["names"][0] == "Break"


def test_predict_returns_the_genre_of_a_video(run, capsys):
    base, made = run
    videos = [str(base / "aist" / f"{stem}.mp4") for stem in sorted(made)]
    results = predict_module.predict(videos, str(base / "run"), top_k=2)
    correct = sum(r["top"][0]["genre"] == made[stem] for r, stem in zip(results, sorted(made)))
    assert correct / len(made) >= 0.75
    bad = base / "broken.mp4"
    bad.write_bytes(b"")
    code = cli.run(predict_module.main, "predict", [videos[0], str(bad), "--model", str(base / "run"), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # one video failed; the other was still predicted
    assert lines[0]["video"] == videos[0] and len(lines[0]["top"]) == 3
    assert lines[1] == {"video": str(bad), "error": "empty file (0 bytes)"}


def test_train_cli_errors(tmp_path, capsys):
    code = cli.run(train_script.main, "train.py", ["--shards", str(tmp_path)])
    assert code == 2 and "no manifest.json in" in capsys.readouterr().err
    code = cli.run(train_script.main, "train.py", ["--model", "lstm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["train.py: error: model must be one of gru, transformer; got 'lstm'"]


def test_predict_cli_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dancedata.predict", "x.mp4", "--model", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"predict: error: {tmp_path} is not a train.py run folder: model.keras is missing"


def test_transformer_option_trains(run, tmp_path):
    base, _ = run
    argv = ["--shards", str(base / "shards"), "--out", str(tmp_path / "t"), "--epochs", "2", "--model", "transformer", "--seq-len", "4"]
    assert cli.run(train_script.main, "train.py", argv) == 0
    assert (tmp_path / "t" / "model.keras").exists()


def test_without_a_val_split_validation_is_held_out_by_sequence(tmp_path, capsys):
    make_aist_folder(tmp_path / "aist", performances=3, cameras=2, frames=4)
    dancedata.build_shards(str(tmp_path / "aist"), str(tmp_path / "shards"), frames=4, quiet=True,
                           val_fraction=0.0, test_fraction=0.3, **FAST_EXTRACTOR)
    builder = dancedata.DatasetBuilder(str(tmp_path / "shards"))
    assert "val" not in builder.info.splits
    argv = ["--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--epochs", "2", "--val-fraction", "0.5", "--verify"]
    assert cli.run(train_script.main, "train.py", argv) == 0
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()[0]
    assert "val_accuracy" in history
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test accuracy: ")


def test_cache_changes_speed_not_training(run, tmp_path, capsys, monkeypatch):
    base, _ = run
    histories = []
    for mode in ("--cache", "--no-cache"):
        argv = ["--shards", str(base / "shards"), "--out", str(tmp_path / mode), "--epochs", "3", "--seed", "1", mode]
        assert cli.run(train_script.main, "train.py", argv) == 0
        histories.append((tmp_path / mode / "history.csv").read_text())
    assert histories[0] == histories[1]  # same seed, same batches: the cache is invisible to training
    assert run_data.fits_in_memory(1 << 20) and not run_data.fits_in_memory(1 << 60)
    monkeypatch.setattr(run_data, "fits_in_memory", lambda nbytes: False)
    argv = ["--shards", str(base / "shards"), "--out", str(tmp_path / "auto"), "--epochs", "1"]
    assert cli.run(train_script.main, "train.py", argv) == 0
    assert "reading them from the shards every epoch (--cache keeps them anyway)" in capsys.readouterr().err


def test_a_split_left_without_examples_is_left_out_with_a_message(tmp_path, capsys):
    """Every video of the test split fails to decode: train.py evaluates on val and says why."""
    import pandas as pd

    from dancedata import naming, split

    root = tmp_path / "aist"
    made = make_aist_folder(root, genres=("BR", "PO"), performances=8, cameras=1, frames=6)
    table = pd.DataFrame([naming.parse_aist_name(stem) for stem in made])
    in_test = table.video_id[split.assign(table, "sequence", 0.1, 0.2, seed=0) == "test"]
    assert len(in_test)
    for stem in in_test:
        (root / f"{stem}.mp4").write_bytes(b"")
    manifest = dancedata.build_shards(str(root), str(tmp_path / "shards"), frames=6, quiet=True, **FAST_EXTRACTOR)
    assert manifest["splits"]["test"]["num_examples"] == 0
    assert any("test have no example" in w for w in manifest["warnings"])
    argv = ["--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8"]
    assert cli.run(train_script.main, "train.py", argv) == 0
    err = capsys.readouterr().err
    assert "split test has no example" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluated_split"] == "val"


def test_training_takes_the_statistics_the_build_recorded(run, tmp_path, monkeypatch):
    from dancedata import read

    base, _ = run
    assert DatasetBuilder(str(base / "shards")).info.splits["val"]  # with a val split, train is all of train

    def read_again(dataset):
        raise AssertionError("train.py read the train split again for statistics the build recorded")

    monkeypatch.setattr(read, "feature_moments", read_again)
    argv = ["--shards", str(base / "shards"), "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert cli.run(train_script.main, "train.py", argv) == 0


# predict's command as a user runs it, its memory read after it has printed and written each result (the
# wrapped stream resumes when the command asks for the next one).
STREAMED_PREDICT = """
import os, sys, tracemalloc
from dancedata import cli, predict
page = os.sysconf("SC_PAGE_SIZE")
def rss_kb():
    return int(open("/proc/self/statm").read().split()[1]) * page // 1024
stream = predict.iter_predict
def measured(*args, **kwargs):
    after_100 = highest = 0
    for count, result in enumerate(stream(*args, **kwargs), 1):
        yield result
        if count == 100:
            after_100 = rss_kb()
            tracemalloc.start()  # from here on: every Python object and NumPy buffer still held at the end
        highest = max(highest, rss_kb())
    print("RSS_KB", after_100, highest, "HELD_KB", tracemalloc.get_traced_memory()[0] // 1024, file=sys.stderr)
predict.iter_predict = measured
sys.exit(cli.run(predict.main, "predict", sys.argv[1:]))
"""


def test_predict_streams_a_folder_of_500_videos_in_bounded_memory(run, tmp_path):
    import csv

    from conftest import GENRE_COLOURS, write_video

    base, _ = run
    folder = tmp_path / "many"
    folder.mkdir()
    genres = list(GENRE_COLOURS)
    for i in range(500):  # each video's pixels and features would add ~70 KB if predict kept them
        write_video(folder / f"v{i:03d}.mp4", frames=6, colour=GENRE_COLOURS[genres[i % 4]], seed=i)
    # One pass of the command over the 500 (decoding them is this test's cost): its memory, its JSON lines
    # and its CSV.
    argv = [str(folder), "--model", str(base / "run"), "--csv", str(tmp_path / "many.csv"), "--batch-size", "16", "--json"]
    done = subprocess.run([sys.executable, "-c", STREAMED_PREDICT, *argv], capture_output=True,
                          text=True, timeout=600, env=cli_env(MALLOC_ARENA_MAX="2"))  # fewer malloc arenas: steadier RSS
    assert done.returncode == 0, done.stderr[-2000:]
    after_100, highest, _, held = done.stderr.split("RSS_KB")[1].split()[:4]
    # From the 100th video to the 500th nothing accumulates: what is still held at the end of what was
    # allocated since the 100th, NumPy buffers and Python objects, which tracemalloc counts exactly
    # (measured: 0.1 MB; keeping just each video's decoded frames held 7.0 MB).
    assert int(held) < 4 * 1024, held
    # The process's resident memory, native allocations included, has only a loose bound: the allocator
    # reuses freed memory (those kept frames grew it by 1.2 MB) and moves it in steps (measured: 0-9 MB,
    # once 31 MB on a loaded CI runner).
    assert int(highest) - int(after_100) < 96 * 1024, (after_100, highest)
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    with open(tmp_path / "many.csv") as handle:
        rows = list(csv.DictReader(handle))
    expected = [str(folder / f"v{i:03d}.mp4") for i in range(500)]
    assert [row["video"] for row in rows] == [result["video"] for result in printed] == expected  # input order
    assert [row["genre_1"] for row in rows] == [result["top"][0]["genre"] for result in printed]
    correct = sum(row["genre_1"] == genres[i % 4] for i, row in enumerate(rows))
    assert correct / 500 >= 0.75 and all(not row["error"] for row in rows)


def test_device_cache_trains_on_the_same_batches_and_saves_no_table(run, tmp_path):
    import csv

    import keras
    import numpy as np

    base, _ = run
    histories = {}
    for mode in ("memory", "device"):
        argv = ["--shards", str(base / "shards"), "--out", str(tmp_path / mode), "--epochs", "3", "--seed", "1",
                "--seq-len", "4", "--cache", mode]
        assert cli.run(train_script.main, "train.py", argv) == 0
        with open(tmp_path / mode / "history.csv") as handle:
            histories[mode] = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    for memory, device in zip(histories["memory"], histories["device"]):  # same batches, same windows
        assert memory.keys() == device.keys()
        for key in memory:
            assert device[key] == pytest.approx(memory[key], rel=1e-4, abs=1e-5), (key, memory, device)
    model = keras.models.load_model(tmp_path / "device" / "model.keras")
    table_size = DatasetBuilder(str(base / "shards")).info.splits["train"]
    assert all(table_size not in np.shape(weight) for weight in model.get_weights())  # the table stayed out
    sizes = [(tmp_path / mode / "model.keras").stat().st_size for mode in ("memory", "device")]
    assert sizes[1] <= sizes[0]  # not larger than the memory run's (which also holds its optimizer's state)
    assert json.loads((tmp_path / "device" / "metrics.json").read_text())["test_accuracy"] == pytest.approx(
        json.loads((tmp_path / "memory" / "metrics.json").read_text())["test_accuracy"], abs=0.101)
