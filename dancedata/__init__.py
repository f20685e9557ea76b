"""dancedata: a folder of dance videos -> sharded TFRecords of frame features -> tf.data for training."""

import warnings

__version__ = "0.1.0"

# `dancedata.build_shards` is both the public function and the `python -m` module that defines it;
# runpy warns that the package imported that module before running it, which is intended here.
warnings.filterwarnings("ignore", message=r".*'dancedata\.\w+' found in sys.modules", category=RuntimeWarning)

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
