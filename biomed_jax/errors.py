"""The errors biomed_jax raises for bad files and settings (the bottom of the house: imports nothing)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config.json (or a config argument) asks for something invalid or not implemented."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, ambiguous, or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks for something other than tensors and plain data (code, foreign objects)."""


class OutputError(OSError):
    """An output could not be written (disk full, read-only, no permission); says what to do."""
