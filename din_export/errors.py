"""The errors din_export raises on purpose. The library raises only these (and Python's own); the
commands in `din_export.cli` turn them into click errors, so the Python API does not depend on click.
"""

from __future__ import annotations


class DinExportError(Exception):
    """Base of every error din_export raises on purpose; the CLI prints its message and exits with 1."""


class OptionError(DinExportError, ValueError):
    """An argument or a combination of arguments that cannot work (so also a ValueError); the CLI shows
    it as a usage error (exit 2). `option` names the CLI option it came from (`--tolerance`), where
    there is one."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option
