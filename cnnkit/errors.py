"""cnnkit's own error types.

Library code raises these and never prints; the CLI turns any `CnnkitError` into one line on
stderr and exit code 2. Each message says what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class CnnkitError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in cnnkit."""

    exit_code = 2


class ConfigError(CnnkitError):
    """A YAML config or a --set override is malformed or invalid."""


class ShapeError(CnnkitError):
    """A layer cannot be applied to the given input size (kernel too large, bad padding...)."""


class DataError(CnnkitError):
    """The dataset cannot be found, read or decoded."""


class CheckpointError(CnnkitError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


class DeviceError(CnnkitError):
    """The requested device or precision is not available on this machine."""


class RunError(CnnkitError):
    """The run folder cannot be created or written, or would overwrite an existing run."""


class ExportError(CnnkitError):
    """A model cannot be exported, its exporter is not installed, or the export does not match the model."""


class TrainingError(CnnkitError):
    """Training hit a numerical fault (NaN/inf loss) and stopped."""


class Interrupted(CnnkitError):
    """Training stopped on SIGINT (exit 130) or SIGTERM (exit 143) after saving a resumable state."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(exc: BaseException) -> str:
    """An exception as a short phrase on one line (error messages must stay one line)."""
    return " ".join(str(exc).split()) or type(exc).__name__
