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


def on_console(exc: ScaleProtoSegError) -> ScaleProtoSegError:
    """Also write `exc`'s message to the process's own stderr (the console `dvc repro` shows), not only to the
    notebook: when the disk is full, papermill cannot save the executed notebook that holds the message, and
    the console would show only papermill's own OSError. Returns `exc` (`raise on_console(ArtifactError(...))`)."""
    import sys

    stream = sys.__stderr__ or sys.stderr  # a kernel redirects sys.stderr into the notebook; __stderr__ is the console
    try:
        stream.write(f"{type(exc).__name__}: {exc}\n")
        stream.flush()
    except (OSError, ValueError):
        pass
    return exc
