"""The training reader of schema-4 shards: local TFRecords memory-mapped (each checked whole, once per
process, by shard_index) and their training fields gathered through each shard's index, with no
protobuf parsing: one copy per example, from the page cache into the batch."""
from __future__ import annotations

import numpy as np

from dancedata import fs, schema, shard_index
from dancedata.errors import ShardError


class MappedShards:
    """The shards `paths` (holding `counts` examples) of a schema-4 build, memory-mapped and checked,
    as one table: example i is record i - start of the shard whose examples start at `start`.

    Masks, labels and sequence ids are read into memory when the table is made; a batch of indices
    gathers its features with one copy each, from the page cache into the batch. Mapped pages count in
    the process's resident memory but belong to the page cache, which reclaims them. A shard truncated
    in place while mapped ends the process (SIGBUS), as for any mmap reader; builds never do that
    (they write new files and rename them over old ones)."""

    def __init__(self, folder: str, manifest: dict, shards: list):
        self.frames = manifest["num_frames"]
        self.dtype = np.dtype(manifest["feature_dtype"]).newbyteorder("<")
        self.shape = (self.frames, manifest["feature_dim"])
        self.width = shard_index.feature_bytes(manifest)
        self.maps, starts, masks, labels, self._sequences = [], [], [], [], []
        classes = len(manifest["classes"])
        for shard in shards:
            path = fs.join(folder, shard["file"])
            header, table = shard_index.load(folder, shard)
            mapped = shard_index.mapped(path, header, table, shard, self.frames, self.width) if len(table) else shard_index.empty(path)
            data = table[:, 0].astype(np.int64) + 12
            self.maps.append(mapped)
            starts.append(data + table[:, 3].astype(np.int64))
            masks.append(mapped[(data + table[:, 4].astype(np.int64))[:, None] + np.arange(self.frames)] if len(table)
                         else np.zeros((0, self.frames), np.uint8))
            labels.append(_labels(mapped, data + table[:, 5].astype(np.int64), table[:, 6]))
            self._sequences.append((mapped, data + table[:, 7].astype(np.int64), table[:, 8].astype(np.int64)))
            if np.any(masks[-1] > 1) or (len(labels[-1]) and (labels[-1].min() < 0 or labels[-1].max() >= classes)):
                raise ShardError(f"shard {path} holds a mask or label this build cannot have written. {shard_index.REBUILD}")
        self.file = np.repeat(np.arange(len(shards), dtype=np.int32), [len(s) for s in starts])
        self.start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.masks = (np.concatenate(masks) if masks else np.zeros((0, self.frames), np.uint8)) != 0
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)

    def sequences(self) -> np.ndarray:
        """Every example's sequence id (bytes), in table order."""
        found = []
        for mapped, starts, lengths in self._sequences:
            found += [mapped[a:a + n].tobytes() for a, n in zip(starts.tolist(), lengths.tolist())]
        return np.asarray(found, dtype=object)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Features [len(indices), T, D] (stored dtype) of examples `indices`: one copy per example."""
        out = np.empty((len(indices), self.width), np.uint8)
        files, starts, maps, width = self.file[indices], self.start[indices], self.maps, self.width
        for k in range(len(indices)):
            start = starts[k]
            out[k] = maps[files[k]][start:start + width]
        return out.view(self.dtype).reshape(len(indices), *self.shape)

    def decoder(self):
        """A batch of example indices -> dict of tensors (features in the stored dtype, mask, label)."""
        import tensorflow as tf

        masks, labels = tf.constant(self.masks), tf.constant(self.labels)
        stored = tf.dtypes.as_dtype(self.dtype.newbyteorder("="))
        shape = self.shape

        def decode(indices):
            features = tf.numpy_function(self.gather, [indices], stored, stateful=False)
            features.set_shape([None, *shape])
            return {schema.FEATURES: features, schema.MASK: tf.gather(masks, indices), schema.LABEL: tf.gather(labels, indices)}

        return decode


def _labels(mapped: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each label's varint, decoded (one byte for labels below 128: one gather)."""
    if not len(starts):
        return np.zeros(0, np.int64)
    if np.all(lengths == 1):
        return mapped[starts].astype(np.int64)
    values = []
    for start, length in zip(starts.tolist(), lengths.tolist()):
        value, end = shard_index.varint(mapped[start:start + length].tobytes(), 0)
        values.append(value if end == length else -1)
    return np.asarray(values, np.int64)
