"""A dataset's feature schema (schema.json): the runtime's feature spec, plus writing it.

The fields, their validation and the schema JSON are din_runtime.features' (one definition for every
stage, see docs/design.md); `prepare` writes the spec with `Schema.save`. Index 0 is padding and 1
out-of-vocabulary in every vocabulary.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from din_runtime.features import OOV_INDEX, PAD_INDEX, Behaviour, FeatureSpec
from din_runtime.features import Dense as DenseField
from din_runtime.features import Sparse as SparseField

__all__ = ["OOV_INDEX", "PAD_INDEX", "Behaviour", "DenseField", "Schema", "SparseField"]


class Schema(FeatureSpec):
    """The feature spec of a dataset directory; `load` (inherited) reads its schema.json, `save` writes it."""

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())


def write_json_atomic(path: str | Path, obj: object) -> None:
    """Write JSON to a temporary file beside `path` and rename it, so readers see old or new, never half."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would have had.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
