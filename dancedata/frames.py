"""Stored frames: each example's sampled frames, after crop and resize, kept as encoded images.

`build_shards --keep-frames jpeg|png` adds them to every example under `schema.FRAMES`: one encoded
image per frame slot, T of them in presentation order, a padding slot (mask 0) holding a black image.
That is the layout of TFDS's `Video` feature (a BytesList of encoded images; tfds_metadata declares
it), so `tfds.builder_from_directory(out)` yields the frames decoded, [T, S, S, 3] uint8 RGB. A later
build re-extracts features from them without opening a video (`--from-frames`, from_frames.py), and a
trainer can fine-tune the backbone on them (`decode` below, in a parallel tf.data map).

PNG is lossless: features extracted from PNG frames are byte-identical to features extracted from
the videos. JPEG is several times smaller and changes the pixels a little (docs/frames.md has the
measured cost). Frames are encoded with OpenCV (libpng, libjpeg-turbo): the same pixels give the same
bytes, so a build with frames stays byte-reproducible; the encoder's version is in the build identity.
"""
from __future__ import annotations

import numpy as np

FORMATS = ("jpeg", "png")
# zlib level of PNG frames: 1, OpenCV's default. Measured on studio-like 224 px frames (one core): 2.7 ms and
# 11.0 KB a frame; level 6 takes 5.8 ms for 9.0 KB, level 9 47 ms for 8.5 KB. (JPEG quality 90: 0.08 ms, 5.8 KB.)
PNG_COMPRESSION = 1
# Bytes per pixel of a stored frame, to size shards before anything is encoded (the plan is a pure function
# of the options); never used to check a build. JPEG: the ~0.3 MB a 20-frame 224 px AIST video is said to
# take (issue 21); PNG: about 3x that, as natural footage compresses. The synthetic studio clips of
# benchmarks/ measure far less (0.12 and 0.22), so their shards come out smaller than --shard-mb.
BYTES_PER_PIXEL = {"jpeg": 0.3, "png": 1.0}


def entry(fmt: str, quality: int) -> dict:
    """What decides a stored frame's bytes besides its pixels: part of the build's identity."""
    import cv2

    settings = {"jpeg_quality": quality} if fmt == "jpeg" else {"png_compression": PNG_COMPRESSION}
    return {"format": fmt, **settings, "encoder": f"OpenCV {cv2.__version__}"}


def estimated_bytes(fmt: str, size: int, frames: int) -> int:
    """An example's stored frames in bytes, as the plan estimates them to size shards."""
    return int(frames * size * size * BYTES_PER_PIXEL[fmt])


class Encoder:
    """Real frames [n, S, S, 3] uint8 RGB + mask [T] -> T encoded images (black where mask is 0)."""

    def __init__(self, fmt: str, quality: int, size: int):
        import cv2

        self.entry = entry(fmt, quality)
        self.size = size
        self._extension = ".jpg" if fmt == "jpeg" else ".png"
        jpeg = fmt == "jpeg"
        self._params = [cv2.IMWRITE_JPEG_QUALITY, quality] if jpeg else [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
        self._black = self.encode_one(np.zeros((size, size, 3), np.uint8))

    def encode_one(self, frame_rgb: np.ndarray) -> bytes:
        import cv2

        ok, data = cv2.imencode(self._extension, np.ascontiguousarray(frame_rgb[..., ::-1]), self._params)  # OpenCV takes BGR
        if not ok:
            raise ValueError(f"OpenCV could not encode a {frame_rgb.shape} frame as {self._extension}")
        return data.tobytes()

    def encode(self, frames: np.ndarray, mask: np.ndarray) -> list:
        real = iter(frames)
        return [self.encode_one(next(real)) if kept else self._black for kept in np.asarray(mask, bool)]

    def for_clip(self, clip) -> list:
        """The clip's encoded frames: those it was read with when they are in this encoding already
        (a --from-frames build copies them, no second JPEG generation), else freshly encoded."""
        stored = getattr(clip, "encoded", None)
        if stored is not None and getattr(clip, "encoding", None) == (self.entry, self.size):
            return list(stored)
        return self.encode(clip.frames, clip.mask)


def decode(encoded, fmt: str, size: int):
    """Encoded frames [T] string -> [T, size, size, 3] uint8 RGB, in TensorFlow (inside a tf.data map:
    `dataset.map(lambda e: frames.decode(e["frames"], fmt, size), num_parallel_calls=tf.data.AUTOTUNE)`)."""
    import tensorflow as tf

    decoder = tf.io.decode_png if fmt == "png" else tf.io.decode_jpeg
    if encoded.shape.rank == 1 and encoded.shape[0] is not None:  # T known (parsed with the manifest's spec): no loop op
        images = tf.stack([decoder(image, channels=3) for image in tf.unstack(encoded)])
    else:
        signature = tf.TensorSpec([None, None, 3], tf.uint8)
        images = tf.map_fn(lambda image: decoder(image, channels=3), encoded, fn_output_signature=signature)
    return tf.ensure_shape(images, [None, size, size, 3])


def resized(images, size: int):
    """uint8 [T, s, s, 3] -> [T, size, size, 3], area averaging when shrinking as the decoder does,
    bilinear when enlarging; rounded back to uint8."""
    import tensorflow as tf

    if images.shape[1] == size:
        return images
    method = "area" if images.shape[1] > size else "bilinear"
    scaled = tf.image.resize(tf.cast(images, tf.float32), [size, size], method=method)
    return tf.cast(tf.clip_by_value(tf.round(scaled), 0, 255), tf.uint8)
