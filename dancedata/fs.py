"""Files of a build, local or in object storage. Local paths keep POSIX guarantees (fsync, atomic
rename); `scheme://` paths go through TensorFlow's filesystems: gs:// is built in, and s3://, hdfs://,
az:// and http(s):// come from tensorflow-io (the `remote` extra), loaded here on first use.

On object storage a rename is a copy and a delete, not atomic; a build stays safe because a shard
counts as built only when its record's size and sha256 match its bytes (build_folder.OutputFolder.is_built).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil

from dancedata.errors import InputError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
BUILT_IN = {"gs", "file", "ram"}  # TensorFlow's own filesystems
TENSORFLOW_IO = {"s3", "hdfs", "viewfs", "az", "http", "https"}


def scheme(path: str) -> str | None:
    found = _SCHEME.match(str(path))
    return found.group(1).lower() if found else None


def is_remote(path: str) -> bool:
    return scheme(path) is not None


def join(folder: str, *names: str) -> str:
    return "/".join([str(folder).rstrip("/"), *names]) if is_remote(folder) else os.path.join(folder, *names)


@functools.lru_cache(maxsize=None)
def _load_tensorflow_io(kind: str) -> None:
    import tensorflow as tf

    try:
        import tensorflow_io  # noqa: F401  (registers s3://, hdfs://, az://, http://)
    except ImportError:
        raise InputError(
            f"{kind}:// paths need tensorflow-io; install the pinned stack in its own environment: "
            'pip install "dancedata[remote]" "numpy<2" (tensorflow 2.17 + tensorflow-io 0.37.1)'
        ) from None
    if kind not in tf.io.gfile.get_registered_schemes():
        raise InputError(
            f"{kind}:// is not available: tensorflow-io {tensorflow_io.__version__} cannot load its filesystems into "
            f"TensorFlow {tf.__version__} (they load only with TensorFlow 2.16/2.17); install the pinned stack: "
            'pip install "dancedata[remote]" "numpy<2" in its own environment'
        )


def check(path: str) -> None:
    """Makes `path`'s filesystem available, or raises InputError saying in one line what to install."""
    kind = scheme(path)
    if kind in TENSORFLOW_IO:
        _load_tensorflow_io(kind)
        _used_tensorflow_io.add(kind)


_used_tensorflow_io: set = set()


def used_tensorflow_io() -> bool:
    """Whether this process touched a tensorflow-io filesystem (see cli.run: its exit can abort)."""
    return bool(_used_tensorflow_io)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def read_errors() -> tuple:
    """What a failed read raises besides OSError: tf.errors.OpError once TensorFlow is loaded."""
    import sys

    tf = sys.modules.get("tensorflow")
    return (tf.errors.OpError,) if tf is not None and hasattr(tf, "errors") else ()


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    if is_remote(path):
        return _gfile().exists(path) and not _gfile().isdir(path)
    return os.path.isfile(path)


def listdir(path: str) -> list:
    if is_remote(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)] if _gfile().isdir(path) else []
    return os.listdir(path) if os.path.isdir(path) else []


def makedirs(path: str) -> None:
    _gfile().makedirs(path) if is_remote(path) else os.makedirs(path, exist_ok=True)


def size(path: str) -> int:
    return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)


def remove(path: str) -> None:
    """Deletes a file; one already gone is fine (another machine of the build may have deleted it)."""
    import tensorflow as tf

    if is_remote(path):
        with contextlib.suppress(tf.errors.NotFoundError):
            _gfile().remove(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def rmtree(path: str) -> None:
    if is_remote(path):
        if _gfile().isdir(path):
            _gfile().rmtree(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace(source: str, target: str) -> None:
    """Renames over `target`: atomic locally; a copy then a delete on object storage."""
    if is_remote(source) or is_remote(target):
        _gfile().rename(source, target, overwrite=True)
    else:
        os.replace(source, target)


def open_file(path: str, mode: str = "r"):
    return _gfile().GFile(path, mode) if is_remote(path) else open(path, mode)


def sync(path: str) -> None:
    """Flushes a written local file to disk (object storage has committed it when it was closed)."""
    if not is_remote(path):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open_file(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str, text: str) -> None:
    """Writes `text` so that no reader sees half of it: locally under a temporary name of this process
    (machines of a partitioned build may write the same file at once), flushed, then renamed; on object
    storage the object appears whole when it is closed."""
    if is_remote(path):
        with open_file(path, "w") as handle:
            handle.write(text)
        return
    import threading

    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.incomplete"
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
