"""tf.data stages whose functions TensorFlow instantiates without grappler: light_map, light_flat_map,
light_interleave. A fresh iterator (every epoch fit reads without repeat, every shard the streamed reader
opens) instantiates each stage's function again; grappler's pass over it costs ~3-5 ms each time, most of
a fresh epoch's start (measured, docs/performance.md). Where TensorFlow lacks the private pieces they
build on, the public stages.
"""
from __future__ import annotations

import functools
import os

# A tf.data function carrying this attribute is instantiated as a single-device function: TensorFlow skips
# grappler's optimization of it, which costs each function ~3-5 ms every time an iterator starts (most of a
# fresh epoch's start on the readers by index, measured). tf.data's functions run on the host's CPU and ours
# name no device, so what the attribute says (int32 kept in device memory) changes nothing there, except this:
# such a function returns an int32 through a _DeviceRetval, and tf.data's optimizations that look for the
# pipeline's end (inject_prefetch, slack, ...) then take the function for the pipeline and fail ("Expected only
# one fetch node", TF 2.21). So light_map's functions return no int32.
_SINGLE_DEVICE = {"experimental_ints_on_device": True}


# How many batches the readers by index gather at once. Without autotuning (see pipelines.unrewritten) AUTOTUNE would be
# one call per core: on a GPU host dozens of batches in flight, for a copy that memory bandwidth bounds.
GATHERS = min(4, os.cpu_count() or 1)


def light_map(dataset, fn, parallel: bool = False):
    """dataset.map(fn) (parallel: GATHERS calls at once, deterministic) with fn instantiated without
    grappler each time an iterator starts (see _SINGLE_DEVICE): a faster start, per-batch speed level
    (measured). fn must return no int32 (TypeError: see _SINGLE_DEVICE). Where TensorFlow lacks the
    private pieces this needs, the public stage."""

    if _light_stage() is None:
        return dataset.map(fn, num_parallel_calls=GATHERS, deterministic=True) if parallel else dataset.map(fn)
    return _light_stage()(dataset, fn, "parallel_map" if parallel else "map")


def light_flat_map(dataset, fn):
    """dataset.flat_map(fn), fn instantiated as light_map's are (it returns a dataset: no int32 to return)."""
    return dataset.flat_map(fn) if _light_stage() is None else _light_stage()(dataset, fn, "flat_map")


def light_interleave(dataset, fn, cycle_length: int, block_length: int):
    """dataset.interleave(fn, cycle_length, block_length, AUTOTUNE parallel calls, deterministic), fn
    instantiated as light_map's are (the streamed reader runs it once per shard it opens, and the stages
    it builds once each more: ours are light too), and no input opened before a place in the cycle is
    free (Dataset.interleave opens cycle_length more ahead). Where TensorFlow lacks the private pieces,
    Dataset.interleave."""
    import tensorflow as tf

    if _light_stage() is None:
        return dataset.interleave(fn, cycle_length=cycle_length, block_length=block_length,
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _light_stage()(dataset, fn, "interleave", cycle_length=cycle_length, block_length=block_length)


@functools.cache
def _light_stage():
    """The Dataset class of light_map's stages, or None where this TensorFlow lacks what it builds on (the
    private classes and ops its own map and flat_map use, present from 2.16 to 2.21 at least)."""
    import tensorflow as tf

    try:
        from tensorflow.python.data.ops import dataset_ops, structured_function
        from tensorflow.python.ops import gen_dataset_ops

        base, wrapper = dataset_ops.UnaryDataset, structured_function.StructuredFunctionWrapper
        ops = {"map": gen_dataset_ops.map_dataset, "parallel_map": gen_dataset_ops.parallel_map_dataset_v2,
               "flat_map": gen_dataset_ops.flat_map_dataset,
               "interleave": gen_dataset_ops.parallel_interleave_dataset_v4}
    except (ImportError, AttributeError):
        return None
    returns_dataset = ("flat_map", "interleave")

    class LightStage(base):
        def __init__(self, input_dataset, fn, kind: str, cycle_length: int = 1, block_length: int = 1):
            self._input_dataset, self._name = input_dataset, None
            self._map_func = wrapper(fn, f"Dataset.{kind}()", dataset=input_dataset, defun_kwargs=dict(_SINGLE_DEVICE))
            function, output = self._map_func.function, self._map_func.output_structure
            if kind in returns_dataset and not isinstance(output, dataset_ops.DatasetSpec):
                raise TypeError(f"a {kind}'s function must return a Dataset, not {output!r}")
            if kind not in returns_dataset and any(spec.dtype == tf.int32 for spec in tf.nest.flatten(output)):
                raise TypeError(f"a light_map's function must return no int32 (see _SINGLE_DEVICE), not {output!r}")
            self._structure = output._element_spec if kind in returns_dataset else output  # noqa: SLF001
            arguments, options = (), {} if kind in returns_dataset else {"preserve_cardinality": True}
            if kind == "parallel_map":
                options.update(num_parallel_calls=tf.constant(GATHERS, tf.int64), deterministic="true")
            if kind == "interleave":  # cycle, block, output buffer, inputs opened ahead (none), parallel calls
                arguments = tuple(tf.constant(value, tf.int64) for value in (
                    cycle_length, block_length, tf.data.AUTOTUNE, 0, tf.data.AUTOTUNE))
                options.update(deterministic="true")
            variant = ops[kind](input_dataset._variant_tensor, function.captured_inputs, *arguments,  # noqa: SLF001
                                f=function, **options, **self._common_args)
            super().__init__(input_dataset, variant)

        def _functions(self):
            return [self._map_func]

        @property
        def element_spec(self):
            return self._structure

    return LightStage
