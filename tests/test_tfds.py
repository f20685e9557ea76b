"""TensorFlow Datasets opens a build's folder: every split with its exact size, slicing, the same
examples as DatasetBuilder reads, class names from ClassLabel."""
import json

import numpy as np
import pytest

from dancedata import DatasetBuilder, ExampleConfig

tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_reads_every_split_as_dancedata_does(built):
    out = str(built["out"])
    builder = tfds.builder_from_directory(out)
    ours = DatasetBuilder(out)
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
        name: count for name, count in ours.info.splits.items() if count
    }
    assert builder.info.features["label"].names == ours.info.classes
    for split in builder.info.splits:
        theirs = {ex["video_id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
        mine = {}
        for (features, mask), label, metadata in ours.as_dataset(split, batch_size=64, example_config=ExampleConfig(with_metadata=True)):
            for i, video_id in enumerate(metadata["video_id"].numpy()):
                mine[video_id.decode()] = (features[i].numpy(), mask[i].numpy(), int(label[i]))
        assert theirs.keys() == mine.keys() and len(mine) == ours.info.splits[split]
        for video_id, (features, mask, label) in mine.items():
            example = theirs[video_id]
            assert example["features"].dtype == np.float16 and example["features"].shape == features.shape
            np.testing.assert_array_equal(example["features"].astype(np.float32), features)
            np.testing.assert_array_equal(example["mask"].astype(bool), mask)
            assert example["label"] == label


def test_tfds_split_slicing_uses_exact_shard_lengths(built):
    builder = tfds.builder_from_directory(str(built["out"]))
    total = builder.info.splits["train"].num_examples
    sliced = sum(1 for _ in builder.as_dataset(split="train[:50%]"))
    assert sliced == builder.info.splits["train[:50%]"].num_examples and 0 < sliced < total
    info = json.loads((built["out"] / "dataset_info.json").read_text())
    manifest = json.loads((built["out"] / "manifest.json").read_text())
    lengths = {split["name"]: [int(n) for n in split["shardLengths"]] for split in info["splits"]}
    assert lengths["train"] == [shard["num_examples"] for shard in manifest["splits"]["train"]["shards"]]
    assert len(lengths["train"]) > 1
