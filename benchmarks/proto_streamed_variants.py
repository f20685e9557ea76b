"""Scratch (issue 30): where the streamed reader's time goes, as variants of its pipeline beside the
library's and plain tf.data, each checked batch for batch against the library's order first.

    python benchmarks/proto_streamed_variants.py [FOLDER] [ROUNDS]

FOLDER (default /tmp/dancedata-streamed-variants) gets a 4096-example build of [20, 2048] float16 in 4
shards (benchmarks/readers.py's make_build) when it has none. Batch 64, consumed from Python as
readers.py consumes it; min and median over ROUNDS (default 4) rounds in a new order each. Variants:
the library's pipeline rebuilt outside its per-epoch flat_map, then with a 256 KiB read buffer instead
of 8 MiB, chunks of 256 records instead of 64, windows decoded before rebatching, and combinations; the
same inside a flat_map over the epoch (as the library builds it). Findings: docs/performance.md."""
import os, sys, time, random
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np, tensorflow as tf
import dancedata
from dancedata import pipelines, schema, ReadConfig, ExampleConfig
from dancedata import sampler as sampler_lib
folder = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dancedata-streamed-variants"
if not os.path.exists(os.path.join(folder, "manifest.json")):
    import readers

    readers.make_build(folder, 4096, 4)
B = 64
b = dancedata.DatasetBuilder(folder)
read = ReadConfig(shuffle=True, seed=0, source="stream")
paths, sampler = b.ordered_files("train", read)
AT = tf.data.AUTOTUNE
keys = schema.TRAINING_KEYS
T, D = b.info.num_frames, b.info.feature_dim
to_inputs = b._to_inputs(None, True, False, False)

def dec(s):
    return b.decode(s, keys, cast=False)

def chunks_of(chunk, buf):
    def read_(path, expected, skip):
        records = tf.data.TFRecordDataset(path, buffer_size=buf).ignore_errors()
        chunks = records.batch(chunk).concatenate(tf.data.Dataset.from_tensors(tf.zeros([0], tf.string)))
        def count(seen, c):
            seen += tf.size(c, tf.int64)
            ok = tf.logical_or(tf.size(c) > 0, tf.equal(seen, expected))
            check = tf.debugging.Assert(ok, ["bad", path, seen, expected])
            with tf.control_dependencies([check]):
                return seen, tf.identity(c)
        return chunks.scan(tf.constant(0, tf.int64), count)
    return read_

def variant(chunk=64, buf=8 << 20, decode_first=False, parallel=True, epoch=None, inner_prefetch=False):
    epoch = tf.constant(0, tf.int64) if epoch is None else epoch
    count = len(sampler.counts)
    shards = tf.gather(tf.range(count, dtype=tf.int64), pipelines.draw(sampler.seed, epoch, sampler_lib.SHARD_RUN, count))
    cols = (tf.gather(tf.constant(paths), shards), tf.gather(tf.constant(sampler.counts, tf.int64), shards), tf.zeros_like(shards))
    files = tf.data.Dataset.from_tensor_slices(cols)
    nchunks = -(-max(sampler.counts) // chunk) + 1
    if parallel:
        recs = files.interleave(chunks_of(chunk, buf), cycle_length=min(count, 4), block_length=nchunks, num_parallel_calls=AT, deterministic=True)
    else:
        recs = files.flat_map(chunks_of(chunk, buf))
    windows = recs.rebatch(sampler.window)
    def permute(run, w):
        return tf.gather(w, pipelines.draw(sampler.seed, epoch, run, tf.shape(w, tf.int64)[0]))
    windows = windows.enumerate().map(permute)
    if decode_first:
        batches = windows.map(dec, num_parallel_calls=AT, deterministic=True).rebatch(B).map(to_inputs, num_parallel_calls=AT, deterministic=True)
    else:
        batches = windows.rebatch(B).map(lambda s: to_inputs(dec(s)), num_parallel_calls=AT, deterministic=True)
    return batches.prefetch(AT) if inner_prefetch or epoch is not None else batches.prefetch(AT)

def wrapped(**kw):
    return tf.data.Dataset.from_tensors(np.int64(0)).flat_map(lambda e: variant(epoch=e, **kw)).prefetch(AT)

def wrapped_no_inner(**kw):
    def one(e):
        d = variant(epoch=e, **kw)
        return d
    return tf.data.Dataset.from_tensors(np.int64(0)).flat_map(one)

def pyepoch(**kw):
    counter = pipelines.EpochCounter(0)
    return tf.data.Dataset.from_tensors(np.int64(0)).map(lambda _: tf.ensure_shape(tf.numpy_function(counter.read, [], tf.int64, stateful=True), [])).flat_map(lambda e: variant(epoch=e, **kw)).prefetch(AT)

lib = b.as_dataset("train", batch_size=B, read_config=read, example_config=ExampleConfig(cast=False))
spec = {"features": tf.io.FixedLenFeature([], tf.string), "mask": tf.io.FixedLenFeature([T], tf.int64), "label": tf.io.FixedLenFeature([], tf.int64)}
def pb(r):
    x = tf.io.parse_example(r, spec)
    return (tf.reshape(tf.io.decode_raw(x["features"], tf.float16), [-1, T, D]), x["mask"] > 0), x["label"]
plain = tf.data.TFRecordDataset(paths).shuffle(256).batch(B).map(pb, num_parallel_calls=AT).prefetch(AT)
cases = {"library": lib, "plain per batch": plain, "v in flat_map": wrapped(), "v in flat_map, no outer prefetch": wrapped_no_inner(),
         "v in flat_map, epoch from numpy_function": pyepoch(),
         "v: same as library": variant(),
         "v: buffer 256K": variant(buf=256 << 10),
         "v: chunk 256": variant(chunk=256),
         "v: decode first": variant(decode_first=True),
         "v: 256K + chunk 256 + decode first": variant(chunk=256, buf=256 << 10, decode_first=True),
         "v: 256K + chunk 256 + decode first, flat_map": variant(chunk=256, buf=256 << 10, decode_first=True, parallel=False),
         }
def both(d):
    got = [(l.numpy(), f.numpy()[:, 0, :4]) for (f, _), l in d]
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
ref, reff = both(lib)
for k, d in cases.items():
    if k.startswith("v"):
        got, fl = both(d)
        assert np.array_equal(got, ref) and np.array_equal(fl, reff), k
print("orders equal")
best = {}
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
for r in range(rounds):
    order = list(cases.items()); random.Random(r).shuffle(order)
    for k, d in order:
        t = time.perf_counter(); c = time.process_time(); n = 0
        for batch in d:
            n += int(batch[-1].shape[0])
        t = time.perf_counter() - t; c = time.process_time() - c
        best.setdefault(k, []).append((t * 1e6 / n, c * 1e6 / n))
for k, v in best.items():
    w = sorted(x[0] for x in v); c = sorted(x[1] for x in v)
    print(f"{k:48s} wall min {w[0]:6.1f} med {w[len(w)//2]:6.1f}  cpu min {c[0]:6.1f} med {c[len(c)//2]:6.1f} us/ex")
