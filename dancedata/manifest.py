"""manifest.json: the one contract between a build and its readers. Local paths or any filesystem
TensorFlow knows (gs://, and s3:// etc. when tensorflow-io is imported)."""
from __future__ import annotations

import json
import os

from dancedata import schema
from dancedata.errors import ManifestError

FILENAME = "manifest.json"
REQUIRED = ("schema_version", "feature_spec", "classes", "num_frames", "feature_dim", "feature_dtype", "splits")


def path_in(folder: str) -> str:
    return folder.rstrip("/") + "/" + FILENAME


def dumps(document: dict) -> str:
    """The one JSON spelling of a manifest: the same dict gives the same bytes."""
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def write(folder: str, manifest: dict, name: str = FILENAME) -> str:
    """Writes atomically (temporary name, then rename): a reader never sees half a manifest."""
    target = os.path.join(folder, name)
    temporary = target + ".incomplete"
    with open(temporary, "w") as handle:
        handle.write(dumps(manifest))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target


def load(folder: str) -> dict:
    """Reads and checks a shard folder's manifest; raises ManifestError saying what is wrong."""
    import tensorflow as tf

    path = path_in(folder)
    if not tf.io.gfile.exists(path):
        raise ManifestError(f"no {FILENAME} in {folder}: build shards first with `python -m dancedata.build_shards VIDEO_DIR --out {folder}`")
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            manifest = json.load(handle)
    except (ValueError, tf.errors.OpError) as error:
        raise ManifestError(f"cannot read {path}: {error}") from None
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}; it was not written by dancedata")
    version = manifest["schema_version"]
    if version not in schema.READABLE_VERSIONS:
        newer = isinstance(version, int) and version > schema.SCHEMA_VERSION
        raise ManifestError(
            f"{path} has schema version {version!r}; this dancedata reads versions "
            f"{', '.join(map(str, schema.READABLE_VERSIONS))}. "
            + ("Upgrade dancedata (pip install -U dancedata) to read it" if newer else "Rebuild the shards with this dancedata")
        )
    return manifest
