"""dancedata: a folder of dance videos -> sharded TFRecords of frame features -> tf.data for training."""

import warnings

__version__ = "0.1.0"

# `dancedata.build_shards` is both the public function and the `python -m` module that defines it;
# runpy warns that the package imported that module before running it, which is intended here.
warnings.filterwarnings("ignore", message=r".*'dancedata\.\w+' found in sys.modules", category=RuntimeWarning)

from dancedata.build_shards import build_shards  # noqa: E402  (rebinds the name from module to function)
from dancedata.config import BuildConfig, ExtractorConfig, SamplingConfig  # noqa: E402
from dancedata.read import DatasetBuilder, DatasetInfo  # noqa: E402
from dancedata.errors import (  # noqa: E402
    ConfigError,
    DanceDataError,
    InputError,
    LeakageError,
    ManifestError,
    WeightsError,
)

__all__ = [
    "BuildConfig",
    "ConfigError",
    "DatasetBuilder",
    "DatasetInfo",
    "DanceDataError",
    "ExtractorConfig",
    "InputError",
    "LeakageError",
    "ManifestError",
    "SamplingConfig",
    "WeightsError",
    "build_shards",
]
