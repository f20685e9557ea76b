"""The metadata TensorFlow Datasets needs to open a shard folder, written beside the manifest:

    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory("tfrecords/")
    train = builder.as_dataset(split="train[:10%]")   # split slicing works: shard lengths are exact

dataset_info.json (name, version, per-split shard lengths, the file template of our shard names),
features.json (the example's features as TFDS feature classes: the raw feature bytes are a
Tensor(shape=(T, D), dtype, encoding="bytes"); stored frames a Video) and label.labels.txt (the class names). Written as plain
JSON in TFDS's own layout, so a build needs no TFDS; TFDS parses one example at a time, so it is for
interoperability, not for training speed (`DatasetBuilder.as_dataset` is).
"""
from __future__ import annotations

from dancedata import fs, schema

DATASET_INFO = "dataset_info.json"
FEATURES = "features.json"
LABELS = f"{schema.LABEL}.labels.txt"
FILES = (DATASET_INFO, FEATURES, LABELS)
TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.tfrecord"  # train-00000-of-00004.tfrecord, as plan.shard_name writes
_TENSOR = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_VIDEO = "tensorflow_datasets.core.features.video_feature.Video"  # a sequence of encoded images, as frames.py stores


def _tensor(shape: list, dtype: str, encoding: str = "none") -> dict:
    return {"pythonClassName": _TENSOR,
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]} if shape else {}, "dtype": dtype, "encoding": encoding}}


def features(manifest: dict) -> dict:
    """features.json: a FeaturesDict of every key in the manifest's feature_spec."""
    content = {}
    for key, entry in manifest["feature_spec"].items():
        if key == schema.FEATURES:
            content[key] = _tensor([manifest["num_frames"], manifest["feature_dim"]], manifest["feature_dtype"], "bytes")
        elif key == schema.FRAMES:  # stored frames: TFDS decodes them to [T, S, S, 3] uint8
            size = str(manifest["frames"]["image_size"])
            content[key] = {"pythonClassName": _VIDEO,
                            "video": {"shape": {"dimensions": [str(manifest["num_frames"]), size, size, "3"]},
                                      "dtype": "uint8", "encodingFormat": manifest["frames"]["format"]}}
        elif key == schema.LABEL:
            content[key] = {"pythonClassName": "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
                            "classLabel": {"numClasses": str(len(manifest["classes"]))}}
        elif entry["dtype"] == "string":
            content[key] = {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}
        else:
            content[key] = _tensor(entry["shape"], entry["dtype"])
    return {"type": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "content": {"features": content}, "proto_cls": "tensorflow_datasets.FeaturesDict"}


def dataset_info(manifest: dict, sizes: dict) -> dict:
    """dataset_info.json: splits with exact per-shard example counts; `sizes` is {file: bytes}."""
    from dancedata import __version__

    splits = []
    for name, split in manifest["splits"].items():
        if not split["shards"]:
            continue
        splits.append({
            "name": name,
            "numBytes": str(sum(sizes[shard["file"]] for shard in split["shards"])),
            "shardLengths": [str(shard["num_examples"]) for shard in split["shards"]],
            "filepathTemplate": TEMPLATE,
        })
    return {
        "name": "dancedata",
        "description": (f"Frame features ({manifest['extractor'].get('backbone', '?')}, {manifest['num_frames']} frames x "
                        f"{manifest['feature_dim']}) of dance videos, written by dancedata {__version__}; manifest.json "
                        "holds the build's full description."),
        "version": "1.0.0",
        "fileFormat": "tfrecord",
        "moduleName": "dancedata",
        "splits": splits,
        "supervisedKeys": {"tuple": {"items": [{"featureKey": schema.FEATURES}, {"featureKey": schema.LABEL}]}},
    }


def write(out: str, manifest: dict, sizes: dict) -> dict:
    """Writes the three files into `out` (deterministic: the same manifest gives the same bytes); returns
    {file: sha256 of its bytes}, which the manifest records so inspect can check them."""
    import hashlib

    from dancedata import manifest as manifest_lib

    texts = {DATASET_INFO: manifest_lib.dumps(dataset_info(manifest, sizes)), FEATURES: manifest_lib.dumps(features(manifest)),
             LABELS: "".join(f"{name}\n" for name in manifest["classes"])}
    for name, text in texts.items():
        fs.write_text(fs.join(out, name), text)
    return {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in texts.items()}
