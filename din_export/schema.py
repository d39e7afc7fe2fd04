"""The feature schema of a dataset: which fields exist, which share a vocabulary, how long histories are.

One JSON document (see docs/design.md) written by `prepare`, read by training, export and, through the
manifest, by the runtime. Index 0 is padding and 1 out-of-vocabulary in every vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Files are written the runtime's way (din_runtime.fs), re-exported here for the writers of din_export.
from din_runtime.fs import write_bytes_atomic, write_json_atomic

# The id conventions and the id-field records are the runtime's: one definition for both sides.
from din_runtime.manifest import OOV_INDEX, PAD_INDEX, Behaviour
from din_runtime.manifest import Sparse as SparseField

SCHEMA_VERSION = 1

__all__ = ["OOV_INDEX", "PAD_INDEX", "Behaviour", "DenseField", "Schema", "SparseField", "write_bytes_atomic",
           "write_json_atomic"]


@dataclass(frozen=True)
class DenseField:
    name: str
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Schema:
    max_len: int
    behaviour: tuple[Behaviour, ...]
    vocab_sizes: dict[str, int]
    sparse: tuple[SparseField, ...] = ()
    dense: tuple[DenseField, ...] = ()
    group: str = "user_id"
    source: str = ""
    protocol: str = ""
    version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.behaviour:
            raise ValueError("schema needs at least one behaviour (target, history) pair")
        if self.max_len < 1:
            raise ValueError(f"schema max_len must be >= 1, got {self.max_len}")
        names = self.input_names()
        if len(set(names)) != len(names):
            raise ValueError(f"schema field names collide: {names}")
        for f in (*self.sparse, *self.behaviour):
            if f.vocab not in self.vocab_sizes:
                raise ValueError(f"schema field {getattr(f, 'name', getattr(f, 'target', ''))!r} uses "
                                 f"vocabulary {f.vocab!r} with no size in vocab_sizes")

    @property
    def histories(self) -> tuple[str, ...]:
        return tuple(b.history for b in self.behaviour)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(b.target for b in self.behaviour)

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dense)

    def input_names(self) -> list[str]:
        """Model inputs in graph order: sparse, targets, histories, hist_len, dense (if any)."""
        names = [s.name for s in self.sparse] + list(self.targets) + list(self.histories) + ["hist_len"]
        if self.dense:
            names.append("dense")
        return names

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sparse"] = [asdict(s) for s in self.sparse]
        d["dense"] = [asdict(s) for s in self.dense]
        d["behaviour"] = [asdict(b) for b in self.behaviour]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        if d.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(f"schema version {d.get('version')} is not supported (expected {SCHEMA_VERSION})")
        return cls(
            max_len=int(d["max_len"]),
            behaviour=tuple(Behaviour(**b) for b in d["behaviour"]),
            vocab_sizes={k: int(v) for k, v in d["vocab_sizes"].items()},
            sparse=tuple(SparseField(**s) for s in d.get("sparse", [])),
            dense=tuple(DenseField(**s) for s in d.get("dense", [])),
            group=d.get("group", "user_id"),
            source=d.get("source", ""),
            protocol=d.get("protocol", ""),
            extra=dict(d.get("extra", {})),
        )

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        if path.is_dir():
            path = path / "schema.json"
        if not path.is_file():
            raise FileNotFoundError(f"no schema at {path}: is this a dataset directory made by `din-export prepare`?")
        return cls.from_dict(json.loads(path.read_text()))
