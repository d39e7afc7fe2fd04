"""A dataset's feature schema (schema.json): the runtime's feature spec, plus writing it.

The fields, their validation and the schema JSON are din_runtime.features' (one definition for every
stage, see docs/design.md); `prepare` writes the spec with `Schema.save`. Index 0 is padding and 1
out-of-vocabulary in every vocabulary.
"""

from __future__ import annotations

from pathlib import Path

from din_runtime.features import OOV_INDEX, PAD_INDEX, Behaviour, FeatureSpec
from din_runtime.features import Dense as DenseField
from din_runtime.features import Sparse as SparseField

# Files are written the runtime's way (din_runtime.fs), re-exported here for the writers of din_export.
from din_runtime.fs import write_bytes_atomic, write_json_atomic

__all__ = ["OOV_INDEX", "PAD_INDEX", "Behaviour", "DenseField", "Schema", "SparseField", "write_bytes_atomic",
           "write_json_atomic"]


class Schema(FeatureSpec):
    """The feature spec of a dataset directory; `load` (inherited) reads its schema.json, `save` writes it."""

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())
