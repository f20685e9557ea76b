"""Old scripts' `import models` / `from models import training` in the repository: the classifiers
moved to `dancedata.models` (installed with the package); this folder is not installed."""
import sys
import warnings

from dancedata import models as _models
from dancedata.models import *  # noqa: F401,F403
from dancedata.models import ARCHITECTURES, build_model, gru, report, run_folder, training, transformer  # noqa: F401

warnings.warn("`models` moved to `dancedata.models`; import it from there", DeprecationWarning, stacklevel=2)
for _name in ("gru", "report", "run_folder", "training", "transformer"):
    sys.modules[f"{__name__}.{_name}"] = getattr(_models, _name)
