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

Faults (measured with TF 2.21, docs/scaling.md): a distributed_epoch job waits for every worker it
started on, and the trainer retries a dead worker for ever; a dispatcher that loses its state loses
the trainer's job. So a trainer watches the service (`watchdogs`, dancedata/service_watchdog.py) and
stops with one line when no batch comes; a dispatcher with a `--work-dir` journals its state and
survives a restart.
"""
from __future__ import annotations

import getpass
import os
import re
import socket
import sys
import time

from dancedata import cli, fs
from dancedata.errors import ConfigError, DanceDataError

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


def registered_workers(address: str, timeout: float = 5.0) -> list[str]:
    """The addresses of the workers registered with the dispatcher at `address` (its GetWorkers call),
    the dead ones included: TensorFlow's dispatcher never forgets a worker. A grpc.RpcError when the
    dispatcher does not answer within `timeout` seconds."""
    import grpc

    host, port = parse_address(address)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        get_workers = channel.unary_unary("/tensorflow.data.DispatcherService/GetWorkers",
                                          request_serializer=bytes, response_deserializer=bytes)
        response = get_workers(b"", timeout=timeout)  # GetWorkersRequest has no field
    # GetWorkersResponse { repeated WorkerInfo workers = 1; } WorkerInfo { string address = 1; ... }:
    # two fields of TensorFlow's dispatcher.proto, whose Python module TensorFlow does not ship.
    return [value.decode() for number, worker in _fields(response) if number == 1
            for field, value in _fields(worker) if field == 1]


def _fields(message: bytes):
    """(field number, bytes) of each length-delimited field of a protobuf message; varints skipped."""
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        if key & 7 == 0:
            _, position = _varint(message, position)
        elif key & 7 == 2:
            size, position = _varint(message, position)
            yield key >> 3, message[position:position + size]
            position += size
        else:
            raise ValueError(f"unexpected protobuf wire type {key & 7} in a GetWorkers response")


def _varint(message: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = message[position]
        value, shift, position = value | (byte & 0x7F) << shift, shift + 7, position + 1
        if byte < 0x80:
            return value, position


def answers(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts connections at HOST:PORT (a killed server's port refuses them)."""
    try:
        host, port = parse_address(address)
        socket.create_connection((host, port), timeout=timeout).close()
    except (ConfigError, OSError):
        return False
    return True


def watchdogs(address: str | None, steps_per_epoch: int, timeout: float) -> list:
    """The Keras callbacks that keep a training run through the service at `address` from waiting
    for ever on a lost worker or dispatcher (none without a service); see service_watchdog."""
    if not address:
        return []
    from dancedata.service_watchdog import ServiceWatchdog

    return [ServiceWatchdog(address, steps_per_epoch, timeout)]


class ServiceLost(DanceDataError):
    """The tf.data service lost this trainer's job: the run stops (exit status 1); the same command continues it."""

    exit_status = 1


# What a dispatcher restarted without its work_dir answers about the job it no longer knows: to the trainer
# ("Unknown iteration client id", "Iteration client id 8 not found") or, relayed by a worker that asked it
# for the next split ("Failed to get split: Iteration id 2001 not found"); which comes first is a race.
_FORGOTTEN = re.compile(r"iteration client id|(iteration|job|dataset) id \d+ not found", re.IGNORECASE)


def lost_job(error, address: str | None) -> ServiceLost | None:
    """A ServiceLost for the error a trainer gets when the dispatcher at `address` was restarted without
    a work_dir (it no longer knows the trainer's job: a NotFoundError, _FORGOTTEN), else None."""
    import tensorflow as tf

    text = getattr(error, "message", "") or str(error)
    if not address or not isinstance(error, tf.errors.NotFoundError) or not _FORGOTTEN.search(text):
        return None
    host, port = parse_address(address)
    return ServiceLost(f"the tf.data service dispatcher at {host}:{port} was restarted without its state and has forgotten "
                       "this run's job. Start it with --work-dir DIR (a journal: restarted with the same DIR it carries on "
                       "with the jobs), then run the same command to continue this run from its last completed epoch")


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


# A worker heartbeats this often (TensorFlow's default: 30 s): how soon a restarted dispatcher knows its
# workers again; one small call per worker and interval.
HEARTBEAT = 5.0
# The dispatcher logs a worker without a heartbeat for this long as lost (TensorFlow's default: 10 min).
# In TF 2.21 that is all it does: the lost worker's tasks stay assigned (measured; the trainer's watchdog
# is what bounds the wait).
WORKER_TIMEOUT = 60.0


def start_dispatcher(port: int = 0, work_dir: str | None = None, worker_timeout: float = WORKER_TIMEOUT):
    """A DispatchServer on `port` (0: any free port; its address is `server.target`). With a
    `work_dir` it runs fault-tolerant: its state (registered datasets, jobs, workers, splits handed
    out) is journaled there before it answers, and a dispatcher restarted on the same port and
    work_dir carries on with the trainers' jobs."""
    import tensorflow as tf

    if worker_timeout <= 0:
        raise ConfigError(f"worker_timeout must be positive, got {worker_timeout!r}")
    _private_work_dir(work_dir)
    service = tf.data.experimental.service
    return service.DispatchServer(service.DispatcherConfig(port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir),
                                                           worker_timeout_ms=int(worker_timeout * 1000)))


def start_worker(dispatcher: str, port: int = 0, worker_address: str | None = None, heartbeat: float = HEARTBEAT):
    """A WorkerServer registered with `dispatcher` (HOST:PORT or grpc://HOST:PORT). It keeps
    retrying a dispatcher that is down (for up to an hour, TensorFlow's default), and registers again
    with one restarted on the same address."""
    import tensorflow as tf

    if heartbeat <= 0:
        raise ConfigError(f"heartbeat must be positive, got {heartbeat!r}")
    host, dispatcher_port = parse_address(dispatcher)
    service = tf.data.experimental.service
    options = {"dispatcher_address": f"{host}:{dispatcher_port}", "port": port, "heartbeat_interval_ms": int(heartbeat * 1000)}
    if worker_address:
        options["worker_address"] = worker_address
    return service.WorkerServer(service.WorkerConfig(**options))


def _parser():
    parser = cli.ArgumentParser(prog="python -m dancedata.data_service", description="Start a tf.data service dispatcher or worker.")
    commands = parser.add_subparsers(dest="role", required=True)
    dispatcher = commands.add_parser("dispatcher", help="the coordinator trainers connect to")
    dispatcher.add_argument("--port", type=int, default=5050, help="port to listen on (default: 5050)")
    dispatcher.add_argument("--work-dir", help="folder (local or gs://) for the dispatcher's journal: it runs fault-tolerant, "
                            "and restarted on the same port with the same folder it carries on with the trainers' jobs "
                            "(a missing local folder is created readable by this user only)")
    dispatcher.add_argument("--worker-timeout", type=float, default=WORKER_TIMEOUT, help="seconds without a heartbeat after "
                            f"which the dispatcher logs a worker as lost (default: {WORKER_TIMEOUT:g})")
    worker = commands.add_parser("worker", help="a process that reads and parses shards for trainers")
    worker.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    worker.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    worker.add_argument("--worker-address", help="HOST:%%port%% the dispatcher and trainers use to reach this worker")
    worker.add_argument("--heartbeat", type=float, default=HEARTBEAT, help="seconds between the worker's heartbeats to the "
                        f"dispatcher (default: {HEARTBEAT:g})")
    return parser


INTERRUPTED = "server stopped"  # what Ctrl-C leaves, and how to go on


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "dispatcher":
        server = start_dispatcher(args.port, args.work_dir, args.worker_timeout)
        port = server.target.rsplit(":", 1)[1]
        print(exposure("dispatcher", port), file=sys.stderr, flush=True)
        durable = (f"fault-tolerant, journal in {args.work_dir}" if args.work_dir else
                   "no --work-dir: a restart loses the trainers' jobs")
        print(f"tf.data service dispatcher on port {port} ({durable}); trainers pass --data-service "
              f"grpc://{socket.getfqdn()}:{port}", flush=True)
        count, say = server._num_workers, lambda n: f"tf.data service dispatcher: {n} worker{'s' * (n != 1)} registered"
    else:
        check_reachable(args.dispatcher)
        server = start_worker(args.dispatcher, args.port, args.worker_address, args.heartbeat)
        port = server._address.rsplit(":", 1)[1]  # its bound port
        print(exposure("worker", port), file=sys.stderr, flush=True)
        print(f"tf.data service worker serving for dispatcher {args.dispatcher}", flush=True)
        count, say = server._num_tasks, lambda n: f"tf.data service worker on port {port}: serving {n} task{'s' * (n != 1)}"
    _report_changes(count, say)


def _report_changes(count, say, every: float = 1.0) -> None:
    """Prints say(count()) whenever the count passes its highest value so far: the dispatcher's
    registered workers (it never forgets one), a worker's tasks (each epoch of a trainer is one task
    on every worker), so a server's log shows that it is used, in a few lines.
    The server runs in its own threads. Not server.join(): a wait in C++, during which Ctrl-C and
    SIGTERM never reach Python, so the process could only be killed with SIGKILL."""
    highest = 0
    while True:
        time.sleep(every)
        now = count()
        if now > highest:
            print(say(now), flush=True)
            highest = now


if __name__ == "__main__":
    cli.exit(cli.run(main, "data_service", interrupted=INTERRUPTED))
