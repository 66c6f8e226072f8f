"""Errors that end a stage with one clear message naming the offending key or file and the fix."""


class ScaleProtoSegError(Exception):
    """Base class: the message alone must tell the user what is wrong and how to fix it."""


class ConfigError(ScaleProtoSegError, ValueError):
    """A params.yaml key is unknown, missing, of the wrong type or out of range."""


class DataError(ScaleProtoSegError, ValueError):
    """A dataset folder, image or label file is missing or unreadable."""


class ArtifactError(ScaleProtoSegError, FileNotFoundError):
    """An artifact that an upstream stage should have produced is missing or malformed."""


class StageError(ScaleProtoSegError, RuntimeError):
    """A stage run in other processes (torchrun) failed; the message carries their last output."""


class DivergenceError(ScaleProtoSegError, FloatingPointError):
    """Training produced a non-finite loss, gradient or weight; nothing non-finite was written."""


class DiskFullError(ScaleProtoSegError, OSError):
    """A write ran out of disk space (or quota); the previous version of the file is unchanged."""
