"""The events table every reader returns (`Events`), and the error every reader raises (`SourceError`).

The columns and their types are described in the package docstring (`din_export.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from din_export.errors import DinExportError

CHUNK_ROWS = 500_000


class SourceError(DinExportError, ValueError):
    """A source file is missing or malformed; the message names the file, line and field (a ValueError
    too, as it was before din_export had its own errors)."""


@dataclass
class Events:
    frame: pd.DataFrame
    source: str
    sparse: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    stats: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def explicit(self) -> bool:
        """True when each row carries its own click label (else every row is a positive)."""
        return "label" in self.frame.columns

