"""The exporter's typed error (torch-free, so CLIs and checks can import it cheaply)."""


class ExportError(ValueError):
    """The export cannot be done as asked (bad arguments, unwritable output, invalid graph)."""
