"""Kept for old imports: a run folder is owned by models/training_run.TrainingRun now."""
from dancedata.models.training_run import RESUME_FREE, RUN_FILES, run_config  # noqa: F401
