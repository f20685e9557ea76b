"""The measuring instruments run: benchmarks/readers.py and benchmarks/gpu_check.py in their tiny CPU
modes, as a user would start them, each giving a figure for every row it promises. Their figures
mean nothing at these sizes; a script that no longer runs against the library is what this catches."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_READERS = ("dancedata mapped", "dancedata cached", "dancedata device table", "dancedata streamed",
              "plain tf.data per example:", "plain tf.data per example, cached", "plain tf.data per batch:",
              "plain tf.data per batch, cached")


def run_script(name, out, *flags):
    """Runs benchmarks/NAME --tiny --out OUT in a fresh process; fails with its output if it fails."""
    command = [sys.executable, os.path.join(ROOT, "benchmarks", name), "--tiny", "--out", str(out), *flags]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def check_reader_rows(result, host_readers=True):
    """Every row of one batch size positive, the limits among them, and a fit figure for every TensorFlow reader."""
    names = [row["reader"] for row in result["rows"]]
    for row in result["rows"]:
        assert row["examples_per_s"] > 0 and row["ratio_to_limit"] > 0 and row["cpu_us_per_example"] > 0, row
        if row["group"] != "limit":
            assert row["examples"] == result["examples"], row
    for prefix in TF_READERS + ("limit: np.take", "limit, prefetched", "memcpy", "tf.data floor") + (
            ("ExampleSource.batches",) if host_readers else ()):
        assert any(name.startswith(prefix) for name in names), (prefix, names)
    fitted = {row["reader"] for row in result["rows"] if row["fit_step_ratio"]}
    for prefix in TF_READERS:
        assert any(name.startswith(prefix) for name in fitted), (prefix, fitted)
    assert all(row["fit_step_s"] > 0 and row["fit_step_cpu_s"] > 0 and row["fit_cpu_ratio"] > 0
               for row in result["rows"] if row["fit_step_ratio"])
    assert result["fit_reference_step_s"] > 0 and result["limit_examples_per_s"] > 0
    drained = {row["reader"] for row in result["rows"] if row["in_graph_ratio_to_limit"]}  # Dataset.reduce's pass
    for prefix in TF_READERS + ("tf.data floor",):
        assert any(name.startswith(prefix) for name in drained), (prefix, drained)
    assert all(row["in_graph_examples_per_s"] > 0 and row["in_graph_cpu_us_per_example"] > 0
               for row in result["rows"] if row["in_graph_ratio_to_limit"])


def optional_rows(names, skipped):
    """grain and TFDS rows wherever those packages import (the test extra installs both)."""
    for module, prefix, row in (("grain", "grain ", "grain readers"), ("tensorflow_datasets", "TFDS", "TFDS"),
                                ("torch", "PyTorch", "PyTorch DataLoader")):
        try:
            __import__(module)
        except ImportError:
            assert row in skipped
            continue
        assert any(name.startswith(prefix) for name in names), (prefix, names)


def test_readers_benchmark_gives_every_row(tmp_path):
    printed = run_script("readers.py", tmp_path)
    document = json.loads((tmp_path / "readers.json").read_text())
    assert (tmp_path / "readers.md").read_text().strip() in printed
    assert document["machine"]["tensorflow"] and document["results"]
    for result in document["results"]:
        check_reader_rows(result)
        optional_rows([row["reader"] for row in result["rows"]], document["skipped"])


def test_readers_benchmark_runs_only_the_readers_asked_for_and_the_limits(tmp_path):
    run_script("readers.py", tmp_path, "--only", "NumPy|streamed", "--no-fit")
    rows = json.loads((tmp_path / "readers.json").read_text())["results"][0]["rows"]
    assert [row["reader"] for row in rows if row["group"] != "limit"] == [
        'dancedata streamed (ReadConfig(source="stream"))', "ExampleSource.batches + .batch (NumPy loop)"]
    assert any(row["reader"].startswith("limit: np.take") for row in rows)


def test_gpu_check_runs_every_part_and_says_no_gpu_is_visible(tmp_path):
    printed = run_script("gpu_check.py", tmp_path)
    document = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not document["errors"], document["errors"]
    assert document["gpus"] == [] and document["warning"].startswith("NO GPU VISIBLE") and "NO GPU VISIBLE" in printed
    assert "NO GPU VISIBLE" in (tmp_path / "gpu_check.md").read_text()
    parts = document["parts"]
    assert set(parts) == {"extraction", "decoding", "readers", "finetune"}
    switches = {(row["mixed_precision"], row["xla"]) for row in parts["extraction"]}
    assert {precision for precision, _ in switches} == {"off", "on"} and {xla for _, xla in switches} == {False, True}
    for row in parts["extraction"]:
        assert row["frames_per_s"] > 0 and row["setup_s"] > 0 and "CPU" in row["device"], row
    for row in parts["decoding"]:
        assert row["videos"] > 0 and row["batches"] > 0, row
        assert row["build_frames_per_s"] > 0 and row["extractor_frames_per_s"] > 0 and 0 <= row["idle_share"] < 1, row
    check_reader_rows(parts["readers"], host_readers=False)
    assert parts["finetune"]["frames_per_second"] > 0 and parts["finetune"]["steps"] > 0


def test_gpu_check_refuses_an_unknown_part(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--parts", "extraction,gpus",
               "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "unknown part(s) gpus" in result.stderr


@pytest.mark.parametrize("name", ["readers.py", "gpu_check.py"])
def test_benchmark_help_names_its_flags(name):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), "--help"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0 and "--tiny" in result.stdout and "--out" in result.stdout
