"""Typed errors. Anything deriving from `DanceDataError` is a user's problem to fix:
the CLIs print its message as one line on stderr and exit with status 2."""


class DanceDataError(Exception):
    """Base class for errors a user can act on (bad path, bad value, missing file)."""


class ConfigError(DanceDataError, ValueError):
    """A configuration field has a value it cannot take."""


class InputError(DanceDataError):
    """The input folder, CSV or video list cannot be used."""


class WeightsError(DanceDataError):
    """Backbone weights cannot be loaded."""


class ManifestError(DanceDataError):
    """A shard folder's manifest is missing, unreadable, or from an unknown schema."""


class LeakageError(DanceDataError):
    """A split assignment would put one performance (sequence) into two splits."""


class DecodeError(Exception):
    """One video cannot be decoded. Not fatal: the build records it in `skipped`."""


class EnvironmentFailure(DanceDataError):
    """The machine failed (memory, open files, disk, I/O, permissions), not a video. The build stops
    with one line; committed shards stay, and the same command resumes."""

    exit_status = 1


class ShardError(ManifestError):
    """A shard file is missing, corrupted or truncated."""
