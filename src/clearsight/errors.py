"""Errors raised for user mistakes and for files that cannot be read or written.

Every error that a user can cause (a wrong name, a missing or damaged file, a bad value), and a write the system
refuses (a full disk), derives from `ClearsightError`, so the command line can print it without a traceback and
exit non-zero. Each message says what was wrong and how to fix it. The subclasses also derive from the built-in
exception a Python user would expect to catch.
"""

from __future__ import annotations


class ClearsightError(Exception):
    """Base class of user-facing errors: the message is meant to be read, not debugged."""


class UnknownNameError(ClearsightError, KeyError):
    """A name that no registry entry has."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(ClearsightError, ValueError):
    """A configuration key that does not exist or a value of the wrong type."""


class DataError(ClearsightError, ValueError):
    """Missing, corrupted or invalid data (files, checksums, NaN inputs, labels out of range)."""


class CheckpointError(ClearsightError, RuntimeError):
    """A run directory or checkpoint that cannot be used as asked."""


class TrainingError(ClearsightError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class WriteError(ClearsightError, OSError):
    """A file that could not be written (a full disk, no permission); the file keeps its previous content."""
