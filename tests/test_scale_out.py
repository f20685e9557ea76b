"""Training past one device and one input machine: a tf.data service (an in-process dispatcher and two
workers on 127.0.0.1, and the `python -m dancedata.data_service` servers), MirroredStrategy over two
logical CPUs, and MultiWorkerMirroredStrategy over two processes."""
import collections
import itertools
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import LEARNING_TRAIN_FLAGS, cli_env

from dancedata import train as train_script
from dancedata import DatasetBuilder, ExampleConfig, ReadConfig, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def service():
    """An in-process dispatcher and two workers; yields the dispatcher's grpc:// address."""
    from dancedata import data_service

    dispatcher = data_service.start_dispatcher(port=0)
    workers = [data_service.start_worker(dispatcher.target, port=0) for _ in range(2)]
    yield dispatcher.target
    for server in workers + [dispatcher]:
        server.stop()


def _video_ids(dataset) -> collections.Counter:
    return collections.Counter(v.decode() for *_, metadata in dataset for v in metadata["video_id"].numpy())


def test_an_epoch_through_the_service_reads_every_example_once(learning_run, service):
    base, _ = learning_run
    builder = DatasetBuilder(str(base / "shards"))
    assert len(builder.files("train")) >= 4  # several files for the dispatcher to hand out
    metadata = ExampleConfig(with_metadata=True)
    local = _video_ids(builder.as_dataset("train", batch_size=4, read_config=ReadConfig(shuffle=True, seed=1), example_config=metadata))
    through = builder.as_dataset("train", batch_size=4, read_config=ReadConfig(shuffle=True, seed=1, data_service=service),
                                 example_config=metadata)
    epochs = [[v.decode() for *_, m in through for v in m["video_id"].numpy()] for _ in range(2)]  # a job each
    assert collections.Counter(epochs[0]) == collections.Counter(epochs[1]) == local and set(local.values()) == {1}
    assert epochs[0] != epochs[1]  # windows permuted afresh each epoch: one order repeated would train worse


@pytest.fixture(scope="module")
def one_worker():
    """An in-process dispatcher with one worker, which reads the whole split in the windows' order."""
    from dancedata import data_service

    dispatcher = data_service.start_dispatcher(port=0)
    worker = data_service.start_worker(dispatcher.target, port=0)
    yield dispatcher.target
    worker.stop()
    dispatcher.stop()


def _served_batches(base, target, epochs: int) -> list:
    through = DatasetBuilder(str(base / "shards")).as_dataset(
        "train", batch_size=4, read_config=ReadConfig(shuffle=True, seed=1, data_service=target),
        example_config=ExampleConfig(with_metadata=True))
    return [[tuple(v.decode() for v in m["video_id"].numpy()) for *_, m in through] for _ in range(epochs)]  # a job each


def test_a_global_seed_does_not_repeat_the_service_order(learning_run, one_worker):
    """train.py --seed (keras.utils.set_random_seed) sets TensorFlow's global seed before the reader is built;
    the service's per-epoch draw must still differ from job to job. With one worker a repeated draw repeats
    every batch (the old unseeded draw did: 16 of 16)."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    base, _ = learning_run
    previous = context.global_seed()  # put back after: later tests in this process see the seed they had
    tf.random.set_seed(0)
    try:
        epochs = _served_batches(base, one_worker, 3)
    finally:
        tf.random.set_seed(previous)
    assert len({frozenset(video for batch in epoch for video in batch) for epoch in epochs}) == 1  # the same examples
    for first, second in itertools.combinations(epochs, 2):
        assert len(set(first) & set(second)) < len(first) / 2, epochs  # fresh draws share next to no batch


def test_under_op_determinism_the_service_reads_one_order_and_says_so(learning_run, one_worker):
    """Op determinism refuses an unseeded draw (and the clock): the service then reads every epoch in one
    order, with a warning, instead of failing at its first batch."""
    from tensorflow.python.framework import config

    base, _ = learning_run
    config.enable_op_determinism()
    try:
        with pytest.warns(UserWarning, match="op determinism is enabled"):
            epochs = _served_batches(base, one_worker, 2)
    finally:
        config.disable_op_determinism()
    videos = [video for batch in epochs[0] for video in batch]
    assert epochs[0] == epochs[1] and len(set(videos)) == len(videos) == DatasetBuilder(str(base / "shards")).info.splits["train"]


def test_training_through_the_service_learns_as_well_as_without(learning_run, service, tmp_path):
    base, _ = learning_run
    argv = ["--shards", str(base / "shards"), "--out", str(tmp_path / "run"), *LEARNING_TRAIN_FLAGS, "--data-service", service]
    assert cli.run(train_script.main, "train.py", argv) == 0
    served = json.loads((tmp_path / "run" / "metrics.json").read_text())
    local = json.loads((base / "run" / "metrics.json").read_text())
    assert served["distribution"]["data_service"] and served["num_examples"] == local["num_examples"]
    assert served["test_accuracy"] >= 0.75 and abs(served["test_accuracy"] - local["test_accuracy"]) <= 0.1, (served, local)
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 25  # epochs stay epochs: repeat + steps per epoch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_server_commands_serve_a_dataset(learning_run, tmp_path):
    base, _ = learning_run
    port = _free_port()
    command = [sys.executable, "-m", "dancedata.data_service"]
    servers = [subprocess.Popen(command + ["dispatcher", "--port", str(port)], stdout=subprocess.PIPE, text=True, env=cli_env())]
    try:
        assert "trainers pass --data-service grpc://" in servers[0].stdout.readline()
        servers.append(subprocess.Popen(command + ["worker", "--dispatcher", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True, env=cli_env()))
        assert "worker serving" in servers[1].stdout.readline()
        builder = DatasetBuilder(str(base / "shards"))
        served = _video_ids(builder.as_dataset("test", batch_size=4, example_config=ExampleConfig(with_metadata=True),
                                               read_config=ReadConfig(data_service=f"grpc://127.0.0.1:{port}")))
        assert sum(served.values()) == builder.info.splits["test"] == len(served)
    finally:
        for server in servers:
            server.kill()
            server.wait()


def test_service_mistakes_are_one_line(learning_run, tmp_path, capsys):
    base, _ = learning_run
    shards = str(base / "shards")
    for address, message in (("grpc://127.0.0.1:1", "cannot reach a tf.data service dispatcher at 127.0.0.1:1"),
                              ("127.0.0.1", "data service address must be grpc://HOST:PORT or HOST:PORT")):
        code = cli.run(train_script.main, "train.py", ["--shards", shards, "--out", str(tmp_path / "r"), "--data-service", address])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and message in err[-1], err
    code = cli.run(train_script.main, "train.py", ["--shards", shards, "--data-service", "h:1", "--cache"])
    assert code == 2 and "cache and data_service exclude each other" in capsys.readouterr().err


TWO_CPUS = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from dancedata import train
from dancedata import cli
sys.exit(cli.run(train.main, "train.py", sys.argv[1:]))
"""


def test_mirrored_over_two_devices_learns_and_evaluates_as_one_device(learning_run, tmp_path):
    import keras

    base, _ = learning_run
    argv = ["--shards", str(base / "shards"), "--out", str(tmp_path / "run"), *LEARNING_TRAIN_FLAGS, "--strategy", "mirrored"]
    # faulthandler: this subprocess once died of SIGSEGV in a TensorFlow thread on a loaded machine (a distributed
    # reader by index; seen again only under load, docs/troubleshooting.md); should it again, the stacks end the
    # stderr reported below.
    done = subprocess.run([sys.executable, "-c", TWO_CPUS, *argv], capture_output=True, text=True,
                          env=cli_env(PYTHONFAULTHANDLER="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["distribution"] == {"strategy": "mirrored", "replicas": 2, "data_service": False}
    assert metrics["test_accuracy"] >= 0.75, metrics
    model = keras.models.load_model(tmp_path / "run" / "model.keras")  # saved without the strategy
    builder = DatasetBuilder(str(base / "shards"))
    alone = train_script._evaluate(model, builder.as_dataset("test", batch_size=8), builder.info.classes)
    assert alone["test_accuracy"] == metrics["test_accuracy"]
    assert alone["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5, abs=1e-6)


def _two_workers(argv: list, tmp_path) -> list:
    """train.py as the two workers of a multi-worker cluster on 127.0.0.1, each with its own --out."""
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [
        subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train.py"), *argv, "--out", str(tmp_path / f"run{index}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=cli_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})),
        )
        for index in range(2)
    ]


def test_multi_worker_trains_in_two_processes_and_only_the_chief_writes(learning_run, tmp_path):
    base, _ = learning_run
    workers = _two_workers(["--shards", str(base / "shards"), *LEARNING_TRAIN_FLAGS, "--strategy", "multi-worker"], tmp_path)
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    metrics = json.loads((tmp_path / "run0" / "metrics.json").read_text())
    assert metrics["distribution"] == {"strategy": "multi-worker", "replicas": 2, "data_service": False}
    assert metrics["test_accuracy"] >= 0.75, metrics
    assert len((tmp_path / "run0" / "history.csv").read_text().splitlines()) == 1 + 25
    assert not (tmp_path / "run1").exists()  # the other worker trained in step and kept nothing


def test_s3_where_tensorflow_io_cannot_load_is_one_line(tmp_path, capsys):
    """In the main environment (current TensorFlow) tensorflow-io is absent or cannot load; .ci/run's
    pinned environment builds to s3:// for real (test_s3.py)."""
    import tensorflow as tf

    from dancedata.build_shards import main as build_main

    try:
        import tensorflow_io  # noqa: F401

        loadable = "s3" in tf.io.gfile.get_registered_schemes()
    except ImportError:
        loadable = False
    if loadable:
        pytest.skip("tensorflow-io loads here: the pinned remote stack")
    (tmp_path / "videos").mkdir()
    code = cli.run(build_main, "build_shards", [str(tmp_path / "videos"), "--out", "s3://bucket/shards"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "s3:// " in err[0] and "tensorflow-io" in err[0] and "dancedata[remote]" in err[0], err
    code = cli.run(train_script.main, "train.py", ["--shards", "s3://bucket/shards", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tensorflow-io" in err[0], err


@pytest.mark.parametrize("killed", [1, 0], ids=["a worker", "the chief"])
def test_a_killed_multi_worker_peer_ends_the_others_with_one_line(learning_run, tmp_path, killed):
    """The survivors' next all-reduce fails (or times out after --collective-timeout): each stops with
    one line and exit status 1, never waiting without end (it was asked for 100000 epochs: ending at all,
    with that line, is the bound)."""
    import signal
    import threading

    base, _ = learning_run
    workers = _two_workers(["--shards", str(base / "shards"), "--epochs", "100000", "--batch-size", "8", "--seed", "0",
                            "--strategy", "multi-worker", "--collective-timeout", "20"], tmp_path)
    epochs = threading.Event()
    lines = []

    def watch(stream):  # the chief prints a line per epoch
        for line in stream:
            lines.append(line)
            if line.startswith("epoch 3/"):
                epochs.set()

    threading.Thread(target=watch, args=(workers[0].stdout,), daemon=True).start()
    try:
        assert epochs.wait(600), (lines, workers[0].poll())
        workers[killed].send_signal(signal.SIGKILL)
        survivor = workers[1 - killed]
        try:
            survivor.wait(timeout=600)  # its stdout may be the watcher's: read stderr alone
        except subprocess.TimeoutExpired:
            survivor.kill()
            survivor.wait()
            pytest.fail(f"the survivor still ran 600 s after its peer was killed:\n{survivor.stderr.read()[-3000:]}")
        err = survivor.stderr.read()
        assert survivor.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("train.py: error: a worker of this multi-worker run stopped answering during epoch "), err[-3000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()


def _multi_worker_flags(learning_run, *extra) -> list:
    base, _ = learning_run
    return ["--shards", str(base / "shards"), "--epochs", "5", "--batch-size", "8", "--learning-rate", "0.01", "--seed", "0",
            "--strategy", "multi-worker", *extra]


def _finish(workers):
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def never_stopped(learning_run, tmp_path_factory):
    """The chief's folder of a multi-worker run never stopped: both tests below end where it did. One run
    serves both: --checkpoint-every is one of the flags a resume may change (training_run.RESUME_FREE),
    as it changes when the run saves, never what it computes."""
    base = tmp_path_factory.mktemp("multi-worker-whole")
    _finish(_two_workers(_multi_worker_flags(learning_run), base))
    return base / "run0"


def test_a_multi_worker_run_killed_mid_run_continues_to_the_same_result(learning_run, never_stopped, tmp_path):
    """Both workers killed after the chief committed epoch 2, then the same commands again: the run goes on
    from the chief's checkpoint (every worker takes the chief's state) and ends with the history and
    weights of a run never stopped."""
    _killed_and_resumed(learning_run, never_stopped, tmp_path, [], lambda state: state["epoch"] >= 2)


def test_a_multi_worker_run_killed_inside_an_epoch_continues_to_the_same_result(learning_run, never_stopped, tmp_path):
    """As above, killed after the chief committed a step inside epoch 2 (--checkpoint-every 1): every
    worker resumes at that step, with the chief's running sums of the epoch."""
    _killed_and_resumed(learning_run, never_stopped, tmp_path, ["--checkpoint-every", "1"],
                        lambda state: state["epoch"] >= 1 and state["step"] >= 1)


def _killed_and_resumed(learning_run, whole, tmp_path, extra: list, reached):
    import signal
    import time

    import keras
    import numpy as np

    flags = _multi_worker_flags(learning_run, *extra)
    stopped = _two_workers(flags, tmp_path / "stopped")
    state = tmp_path / "stopped" / "run0" / "checkpoints" / "state.json"
    deadline = time.monotonic() + 600
    def committed():
        try:
            return reached(json.loads(state.read_text()))
        except (OSError, ValueError, KeyError):
            return False

    while not committed():
        assert stopped[0].poll() is None, stopped[0].stderr.read()[-3000:]
        if time.monotonic() > deadline:
            for worker in stopped:
                worker.kill()
            pytest.fail(f"the chief committed no such state within 600 s:\n{stopped[0].communicate()[1][-3000:]}")
        time.sleep(0.005)
    for worker in stopped:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    resumed = _two_workers(flags, tmp_path / "stopped")
    (chief_out, _), _ = resumed[0].communicate(timeout=600), _finish(resumed[1:])
    assert resumed[0].returncode == 0 and "resuming the run in " in chief_out, chief_out[-3000:]
    again = tmp_path / "stopped" / "run0"
    assert (again / "history.csv").read_text() == (whole / "history.csv").read_text()
    assert len((whole / "history.csv").read_text().splitlines()) == 1 + 5
    assert json.loads((again / "metrics.json").read_text())["test_accuracy"] == json.loads((whole / "metrics.json").read_text())["test_accuracy"]
    for a, b in zip(keras.models.load_model(whole / "model.keras").get_weights(), keras.models.load_model(again / "model.keras").get_weights()):
        np.testing.assert_array_equal(a, b)
