"""Typed runtime errors: library code raises these, only the CLI prints them and exits."""

from __future__ import annotations


class QDMNRuntimeError(Exception):
    """Base of every error the runtime raises on purpose (the CLI prints its message)."""


class InputError(QDMNRuntimeError):
    """A frame source (folder, video, camera, stream) is missing, empty or unreadable."""


class MaskError(InputError, ValueError):
    """A mask PNG is missing, of an unknown format or has unknown values; or a first-frame
    mask is empty."""


class TooManyObjectsError(MaskError):
    """The first mask holds more objects than the exported graphs' max_objects."""


class RuntimeConfigError(QDMNRuntimeError, ValueError):
    """A RuntimeConfig value is invalid or conflicts with the manifest."""


class BackendUnavailableError(QDMNRuntimeError):
    """The requested backend's library, provider or device is not available here."""


class EngineMismatchError(QDMNRuntimeError):
    """A graph/engine file does not match what the manifest declares."""


class OutputError(QDMNRuntimeError):
    """The output folder or overlay video cannot be written."""
