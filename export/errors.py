"""The exporter's typed errors (torch-free, so CLIs and checks can import them cheaply)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.core.manifest import Manifest


class ExportError(ValueError):
    """The export cannot be done as asked (bad arguments, unwritable output, invalid graph)."""


class ExportInterrupted(KeyboardInterrupt):
    """A Ctrl-C/SIGTERM that came while a finished export was moved into place: the export is
    whole (`manifest`), and the caller still learns of the interrupt."""

    def __init__(self, manifest: Manifest):
        super().__init__("interrupted once the export was in place")
        self.manifest = manifest
