"""Builds to and training from s3:// on a local S3-compatible server (moto's server mode on
127.0.0.1), through tensorflow-io in the pinned `remote` stack (.ci/run's second environment). The
oracle is boto3 reading the objects back, not the code under test."""
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import BUILD_FLAGS, SMALL_SHARDS, build_outputs, cli_env, make_aist_folder

import dancedata

pytest.importorskip("tensorflow_io", exc_type=ImportError)
moto_server = pytest.importorskip("moto.server")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(environment for subprocesses, boto3 client) of a fresh S3 server with bucket `dance`."""
    import boto3

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "S3_ENDPOINT": endpoint, "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0"}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="dance")
    yield env, client
    server.stop()


def _objects(client, prefix: str) -> dict:
    listed = client.list_objects_v2(Bucket="dance", Prefix=prefix + "/").get("Contents", [])
    names = {item["Key"][len(prefix) + 1:] for item in listed}
    return {name: client.get_object(Bucket="dance", Key=f"{prefix}/{name}")["Body"].read() for name in sorted(names)
            if "/" not in name and name != "build_info.json"}


def test_build_to_s3_and_train_from_it(s3, tmp_path):
    env, client = s3
    videos = tmp_path / "aist"
    make_aist_folder(videos, performances=4, cameras=2)
    reference = tmp_path / "reference"
    dancedata.build_shards(str(videos), str(reference), **SMALL_SHARDS)

    build = [sys.executable, "-m", "dancedata.build_shards", str(videos), "--out", "s3://dance/shards", *BUILD_FLAGS]
    done = subprocess.run(build, capture_output=True, text=True, env=cli_env(**env), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # exits 0: no abort in tensorflow-io's destructors
    stored = _objects(client, "shards")
    assert stored.keys() == build_outputs(reference).keys()
    assert {k: v for k, v in stored.items() if k != "manifest.json"} == {k: v for k, v in build_outputs(reference).items() if k != "manifest.json"}
    local_manifest = json.loads(build_outputs(reference)["manifest.json"])
    assert json.loads(stored["manifest.json"])["splits"] == local_manifest["splits"]

    again = subprocess.run(build, capture_output=True, text=True, env=cli_env(**env), timeout=600)
    assert again.returncode == 0 and "0 to build" in again.stderr  # complete: nothing rebuilt
    assert _objects(client, "shards") == stored

    run = tmp_path / "run"
    train = [sys.executable, os.path.join(ROOT, "train.py"), "--shards", "s3://dance/shards", "--out", str(run),
             "--epochs", "2", "--batch-size", "8"]
    done = subprocess.run(train, capture_output=True, text=True, env=cli_env(**env), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_examples"] == local_manifest["splits"]["test"]["num_examples"]

    for path in sorted(run.iterdir()):  # the run folder in the bucket: predict reads its model from there
        if path.is_file():
            client.put_object(Bucket="dance", Key=f"run/{path.name}", Body=path.read_bytes())
    video = str(sorted(videos.glob("*.mp4"))[0])
    predict = [sys.executable, "-m", "dancedata.predict", video, "--model", "s3://dance/run", "--json"]
    done = subprocess.run(predict, capture_output=True, text=True, env=cli_env(**env), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["video"] == video
