"""What every `din-export` command shares: its help options and the one place library errors become
click errors (message and exit 1; a usage error, exit 2, when an option is at fault)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from din_export.errors import DinExportError, OptionError

# Every command takes -h too. Set on each command, not only inherited from the group: click caches a
# command's help option, so a command first run on its own (tests, `python -m`) would keep only --help.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@contextmanager
def library_errors() -> Iterator[None]:
    """Run a command's library call: an OptionError becomes a usage error naming its option, any other
    DinExportError a plain click error with the library's message."""
    try:
        yield
    except OptionError as e:
        if e.option is None:
            raise click.UsageError(str(e)) from e
        raise click.BadParameter(str(e), param_hint=e.option) from e
    except DinExportError as e:
        raise click.ClickException(str(e)) from e
