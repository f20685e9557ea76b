"""tf.data service servers, to move reading and parsing of shards off the training machine:

    python -m dancedata.data_service dispatcher --port 5050
    python -m dancedata.data_service worker --dispatcher HOST:5050          # on each input machine
    python train.py --shards gs://bucket/shards --data-service grpc://HOST:5050

Thin wrappers over `tf.data.experimental.service`: the workers need TensorFlow and read access to the
shards (the same paths the trainer uses), not dancedata. The trainer sends its pipeline (reading,
checking record counts, parsing, batching) to the dispatcher; each worker reads the shard files the
dispatcher hands it, so an epoch reads every example once however many workers there are
("distributed_epoch"), and the trainer only receives finished batches.

Both servers listen on every network interface without authentication, and TensorFlow offers no bind
address: whoever reaches a port can have the server run TensorFlow operations as its user. Each says
so on stderr when it starts; docs/servers.md says how to keep them on a private network.
"""
from __future__ import annotations

import getpass
import os
import re
import socket
import sys
import time

from dancedata import cli, fs
from dancedata.errors import ConfigError

ADDRESS = re.compile(r"^(?:grpc://)?(?P<host>\[[0-9a-fA-F:]+\]|[^:/\s]+):(?P<port>\d{1,5})$")


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of `grpc://HOST:PORT` or `HOST:PORT`; a ConfigError otherwise."""
    found = ADDRESS.match(address or "")
    if not found or not 0 < int(found["port"]) < 65536:
        raise ConfigError(f"data service address must be grpc://HOST:PORT or HOST:PORT, got {address!r}")
    return found["host"].strip("[]"), int(found["port"])


def check_reachable(address: str, timeout: float = 5.0) -> str:
    """The address as tf.data wants it (grpc://HOST:PORT) once something listens there. tf.data
    retries an unreachable dispatcher for ever; a mistyped port should be one line instead."""
    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise ConfigError(
            f"cannot reach a tf.data service dispatcher at {host}:{port} ({error.strerror or error}); "
            f"start one with `python -m dancedata.data_service dispatcher --port {port}`"
        ) from None
    return f"grpc://{host}:{port}"


def distribute(dataset, address: str):
    """`dataset` produced by the service's workers, each shard file read by one worker per epoch.
    The result has unknown cardinality: repeat it and give fit() steps_per_epoch."""
    import tensorflow as tf

    return dataset.apply(
        tf.data.experimental.service.distribute(
            processing_mode="distributed_epoch",
            service=address,
            compression=None,  # float features barely compress; on a LAN the CPU cost is not worth it
        )
    )


def exposure(role: str, port) -> str:
    """The line a server prints when it starts: who can reach it, and what they can do."""
    return (f"data_service: the {role} listens on port {port} on every network interface (TensorFlow offers no bind "
            f"address), without authentication: anyone who can reach the port can run TensorFlow operations (read and "
            f"write files) as user {_user()}; keep it on a private network (docs/servers.md)")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


def _private_work_dir(work_dir: str | None) -> None:
    """Creates a missing local `work_dir` readable by this user only: it holds every registered dataset
    graph (datasets/) and the journal, and whoever can write them chooses what the dispatcher and the
    workers run. TensorFlow would create it with the umask's permissions; an existing folder is left as
    it is."""
    if work_dir and not fs.is_remote(work_dir) and not os.path.isdir(work_dir):
        os.makedirs(work_dir, mode=0o700)
        os.chmod(work_dir, 0o700)  # makedirs' mode passes through the umask


def start_dispatcher(port: int = 0, work_dir: str | None = None):
    """A DispatchServer on `port` (0: any free port; its address is `server.target`)."""
    import tensorflow as tf

    _private_work_dir(work_dir)
    service = tf.data.experimental.service
    return service.DispatchServer(service.DispatcherConfig(port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir)))


def start_worker(dispatcher: str, port: int = 0, worker_address: str | None = None):
    """A WorkerServer registered with `dispatcher` (HOST:PORT or grpc://HOST:PORT)."""
    import tensorflow as tf

    host, dispatcher_port = parse_address(dispatcher)
    service = tf.data.experimental.service
    options = {"dispatcher_address": f"{host}:{dispatcher_port}", "port": port}
    if worker_address:
        options["worker_address"] = worker_address
    return service.WorkerServer(service.WorkerConfig(**options))


def _parser():
    parser = cli.ArgumentParser(prog="python -m dancedata.data_service", description="Start a tf.data service dispatcher or worker.")
    commands = parser.add_subparsers(dest="role", required=True)
    dispatcher = commands.add_parser("dispatcher", help="the coordinator trainers connect to")
    dispatcher.add_argument("--port", type=int, default=5050, help="port to listen on (default: 5050)")
    dispatcher.add_argument("--work-dir", help="folder (local or gs://) for the dispatcher's journal: restarts without "
                            "losing jobs (a missing local folder is created readable by this user only)")
    worker = commands.add_parser("worker", help="a process that reads and parses shards for trainers")
    worker.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    worker.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    worker.add_argument("--worker-address", help="HOST:%%port%% the dispatcher and trainers use to reach this worker")
    return parser


INTERRUPTED = "server stopped"  # what Ctrl-C leaves, and how to go on


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "dispatcher":
        server = start_dispatcher(args.port, args.work_dir)
        port = server.target.rsplit(":", 1)[1]
        print(exposure("dispatcher", port), file=sys.stderr, flush=True)
        print(f"tf.data service dispatcher on port {port}; trainers pass --data-service grpc://{socket.getfqdn()}:{port}", flush=True)
    else:
        check_reachable(args.dispatcher)
        server = start_worker(args.dispatcher, args.port, args.worker_address)
        print(exposure("worker", server._address.rsplit(":", 1)[1]), file=sys.stderr, flush=True)  # its bound port
        print(f"tf.data service worker serving for dispatcher {args.dispatcher}", flush=True)
    while True:  # the server runs in its own threads. Not server.join(): a wait in C++, during which Ctrl-C
        time.sleep(3600)  # and SIGTERM never reach Python, so the process could only be killed with SIGKILL


if __name__ == "__main__":
    cli.exit(cli.run(main, "data_service", interrupted=INTERRUPTED))
