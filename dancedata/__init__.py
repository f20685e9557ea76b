"""dancedata: a folder of dance videos -> sharded TFRecords of frame features -> tf.data for training."""

import os
import sys
import warnings

__version__ = "0.1.0"

# TensorFlow's C++ INFO lines stay hidden unless the user chose a level before TensorFlow loaded: its start-up
# notices (oneDNN, CPU instructions, no CUDA driver) and the line each TFRecordDataset or generator op the library
# runs would log ("The default buffer size is 262144, which is overridden by ... 8388608"). Its warnings and
# errors still show; TF_CPP_MIN_LOG_LEVEL=0 shows everything. The commands hide more (dancedata/cli.py).
_SET_TF_LOG_LEVEL = "tensorflow" not in sys.modules and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
if _SET_TF_LOG_LEVEL:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"

# `dancedata.build_shards` is both the public function and the `python -m` module that defines it;
# runpy warns that the package imported that module before running it, which is intended here.
warnings.filterwarnings("ignore", message=r".*'dancedata\.\w+' found in sys.modules", category=RuntimeWarning)

from dancedata import cli as _cli  # noqa: E402

_cli.hold_interrupts_while_starting()  # a command's Ctrl-C before its imports finish: one line, not a traceback

from dancedata.build_shards import build_shards  # noqa: E402  (rebinds the name from module to function)
from dancedata.config import BuildConfig, ExtractorConfig, SamplingConfig  # noqa: E402
from dancedata.read import DatasetBuilder, DatasetInfo  # noqa: E402
from dancedata.read_config import ExampleConfig, Holdout, ReadConfig  # noqa: E402
from dancedata.sampler import Sampler  # noqa: E402
from dancedata.source import ExampleSource  # noqa: E402
from dancedata.errors import (  # noqa: E402
    ConfigError,
    DanceDataError,
    InputError,
    LeakageError,
    ManifestError,
    WeightsError,
)

_LAZY = {"VideoDecoder": "dancedata.video_decoder", "Frames": "dancedata.video_decoder", "VideoIndex": "dancedata.video_decoder"}


def __getattr__(name: str):
    """The decoder's names, imported on first use: `import dancedata` stays free of PyAV (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dancedata' has no attribute {name!r}")


__all__ = [
    "BuildConfig",
    "ConfigError",
    "DatasetBuilder",
    "DatasetInfo",
    "DanceDataError",
    "ExampleConfig",
    "ExampleSource",
    "ExtractorConfig",
    "Frames",
    "Holdout",
    "InputError",
    "LeakageError",
    "ManifestError",
    "ReadConfig",
    "Sampler",
    "SamplingConfig",
    "VideoDecoder",
    "VideoIndex",
    "WeightsError",
    "build_shards",
]
