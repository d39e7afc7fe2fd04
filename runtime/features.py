"""The feature spec: what a DIN model reads, in one definition for every stage (docs/design.md).

`prepare` writes it (a dataset's schema.json), training builds the model from it, export copies it into
the manifest's "schema" and builds the portable graph's lookups from it, and `predict`, the Scorer and
Spark encode requests with it. It holds the fields (sparse ids, behaviour target/history pairs, dense
values with the mean and std the model standardises them with), the group field, max_len, the
vocabularies (names, sizes, files, raw id -> index), the graph's input order, and the encoding rules:

- index 0 pads histories, 1 stands for an id the vocabulary lacks (OOV), known ids start at 2;
- a history keeps its most recent `max_len` items and is right-padded with 0 to the longest kept
  history of the batch (at least 1 wide);
- a dense value enters the graph raw; the model computes (x - mean) / scale (`Dense.scale`: std, 1 if 0).

`FeatureSpec.from_dict` is the one validator of the schema JSON; `read_vocab` the one vocabulary loader;
`read_json` reads every JSON file of a dataset or model directory.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from itertools import repeat
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from din_runtime.errors import SchemaError

PAD_INDEX = 0
OOV_INDEX = 1
FIRST_KNOWN_INDEX = 2
SPEC_VERSION = 1
_INT64_MAX = 2**63 - 1

# The kinds of graph input, as the Scorer checks them and the portable graph declares them.
ID, HISTORY, LENGTH, DENSE = "id", "history", "length", "dense"


@dataclass(frozen=True)
class Sparse:
    name: str
    vocab: str


@dataclass(frozen=True)
class Behaviour:
    target: str
    history: str
    vocab: str


@dataclass(frozen=True)
class Dense:
    name: str
    mean: float = 0.0
    std: float = 1.0

    @property
    def scale(self) -> float:
        """The divisor of the model's standardisation (x - mean) / scale: std, or 1 for a constant column."""
        return self.std or 1.0


_FIELDS = {"sparse": (Sparse, {"name": str, "vocab": str}),
           "behaviour": (Behaviour, {"target": str, "history": str, "vocab": str}),
           "dense": (Dense, {"name": str, "mean": float, "std": float})}


@dataclass(frozen=True)
class FeatureSpec:
    """The fields of a model's requests and how they are encoded. Constructed directly (prepare, tests) it
    checks its structure; `from_dict` also checks the JSON's types, naming the field at fault."""

    max_len: int
    behaviour: tuple[Behaviour, ...]
    vocab_sizes: dict[str, int]
    sparse: tuple[Sparse, ...] = ()
    dense: tuple[Dense, ...] = ()
    group: str = "user_id"
    source: str = ""
    protocol: str = ""
    version: int = SPEC_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.behaviour:
            raise SchemaError("schema behaviour is empty: a DIN needs at least one (target, history) pair")
        if self.max_len < 1:
            raise SchemaError(f"schema max_len must be >= 1, got {self.max_len}")
        names = self.input_names() + list(self.dense_names)
        collide = sorted(n for n, count in Counter(names).items() if count > 1)
        if collide:
            raise SchemaError(f"schema field names collide: {collide}")
        for name, vocab in self.id_fields:
            if vocab not in self.vocab_sizes:
                raise SchemaError(f"schema field {name!r} uses vocabulary {vocab!r}, which has no size in vocab_sizes")

    # Derived once per spec (the encoder and the Scorer read them on every call); cached_property writes the
    # instance's __dict__ directly, which a frozen dataclass allows.
    @cached_property
    def histories(self) -> tuple[str, ...]:
        return tuple(b.history for b in self.behaviour)

    @cached_property
    def targets(self) -> tuple[str, ...]:
        return tuple(b.target for b in self.behaviour)

    @cached_property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dense)

    @cached_property
    def id_fields(self) -> tuple[tuple[str, str], ...]:
        """(field, vocabulary) of every single-id field, in graph order: sparse fields, then targets."""
        return tuple([(s.name, s.vocab) for s in self.sparse] + [(b.target, b.vocab) for b in self.behaviour])

    @cached_property
    def vocab_names(self) -> tuple[str, ...]:
        """The vocabularies in use (one embedding table each), in first-use order; vocab_sizes may name more."""
        return tuple(dict.fromkeys(v for _, v in self.id_fields))

    @cached_property
    def vocab_by_field(self) -> Mapping[str, str]:
        """Id field (sparse, target or history) -> its vocabulary."""
        by_field = dict(self.id_fields)
        by_field.update((b.history, b.vocab) for b in self.behaviour)
        return MappingProxyType(by_field)

    def vocab_of(self, name: str) -> str | None:
        """The vocabulary of an id field; None for hist_len, dense and unknown names."""
        return self.vocab_by_field.get(name)

    @cached_property
    def inputs(self) -> tuple[str, ...]:
        """Graph inputs in order: sparse, targets, histories, hist_len, dense (one (batch, n) input, if any)."""
        return (*(s.name for s in self.sparse), *self.targets, *self.histories, "hist_len",
                *(["dense"] if self.dense else []))

    def input_names(self) -> list[str]:
        return list(self.inputs)

    @cached_property
    def input_kinds(self) -> Mapping[str, str]:
        """Graph input -> ID, HISTORY, LENGTH or DENSE."""
        kinds = dict.fromkeys(self.inputs, ID)
        kinds.update(dict.fromkeys(self.histories, HISTORY))
        kinds["hist_len"] = LENGTH
        if self.dense:
            kinds["dense"] = DENSE
        return MappingProxyType(kinds)

    @cached_property
    def request_kinds(self) -> Mapping[str, str]:
        """Raw request field -> kind: the graph inputs with each dense field in place of "dense"."""
        kinds = {k: v for k, v in self.input_kinds.items() if v != DENSE}
        kinds.update(dict.fromkeys(self.dense_names, DENSE))
        return MappingProxyType(kinds)

    def to_dict(self) -> dict:
        """The schema JSON (schema.json, the manifest's "schema"): from_dict(to_dict()) == self."""
        return {"max_len": self.max_len, "behaviour": [asdict(b) for b in self.behaviour],
                "vocab_sizes": dict(self.vocab_sizes), "sparse": [asdict(s) for s in self.sparse],
                "dense": [asdict(d) for d in self.dense], "group": self.group, "source": self.source,
                "protocol": self.protocol, "version": self.version, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "schema") -> FeatureSpec:
        """Validate schema JSON; SchemaError naming `where` and the field (e.g. "schema behaviour[1].vocab").
        Other top-level keys are ignored, as they always were (older datasets carry some); a field entry
        must hold exactly its own keys."""
        if not isinstance(d, dict):
            raise SchemaError(f"{where} must be a JSON object, got {type(d).__name__}")
        version = d.get("version", SPEC_VERSION)
        if type(version) is not int or version != SPEC_VERSION:
            raise SchemaError(f"{where} version {version!r} is not supported (expected {SPEC_VERSION})")
        max_len = d.get("max_len")
        if type(max_len) is not int or not 1 <= max_len <= _INT64_MAX:
            raise SchemaError(f"{where} max_len must be an integer in [1, 2**63), got {max_len!r:.40}")
        sizes = d.get("vocab_sizes")
        if not isinstance(sizes, dict):
            raise SchemaError(f"{where} vocab_sizes must map vocabulary names to sizes, got {sizes!r:.80}")
        for name, size in sizes.items():
            if type(size) is not int or not FIRST_KNOWN_INDEX <= size <= _INT64_MAX:
                raise SchemaError(f"{where} vocab_sizes[{name!r}] must be an integer >= {FIRST_KNOWN_INDEX} "
                                  f"(padding and OOV included), got {size!r:.40}")
        fields = {kind: _entries(d, kind, where) for kind in _FIELDS}
        texts = {}
        for key in ("group", "source", "protocol"):
            value = d.get(key, "user_id" if key == "group" else "")
            if not isinstance(value, str) or (key == "group" and not value):
                raise SchemaError(f"{where} {key} must be a {'field name' if key == 'group' else 'string'}, "
                                  f"got {value!r:.80}")
            texts[key] = value
        extra = d.get("extra", {})
        if not isinstance(extra, dict):
            raise SchemaError(f"{where} extra must be an object, got {extra!r:.80}")
        return cls(max_len=max_len, vocab_sizes=dict(sizes), version=version, extra=dict(extra), **fields, **texts)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        """A dataset's schema.json (or the directory holding it); FileNotFoundError if there is none."""
        path = Path(path)
        if path.is_dir():
            path = path / "schema.json"
        if not path.is_file():
            raise FileNotFoundError(f"no schema at {path}: is this a dataset directory made by `din-export prepare`?")
        return cls.from_dict(read_json(path), where=str(path))


def _entries(d: dict, kind: str, where: str) -> tuple:
    """The `kind` list of schema JSON as field records, each entry's keys and types checked."""
    record, types = _FIELDS[kind]
    value = d.get(kind, [])
    if kind == "behaviour" and kind not in d:
        raise SchemaError(f"{where} has no behaviour list")
    if not isinstance(value, list):
        raise SchemaError(f"{where} {kind} must be a list of objects, got {value!r:.80}")
    out = []
    for i, entry in enumerate(value):
        at = f"{where} {kind}[{i}]"
        if not isinstance(entry, dict):
            raise SchemaError(f"{at} must be an object, got {entry!r:.80}")
        keys = set(entry)
        required = {k for k, t in types.items() if t is str}
        if not required <= keys or not keys <= set(types):
            raise SchemaError(f"{at} has keys {sorted(keys)}; expected {sorted(required)}"
                              + (f" and optionally {sorted(set(types) - required)}" if set(types) - required else ""))
        for key, want in types.items():
            if key not in entry:
                continue
            v = entry[key]
            if want is str and (not isinstance(v, str) or not v):
                raise SchemaError(f"{at}.{key} must be a non-empty string, got {v!r:.80}")
            if want is float and (type(v) not in (int, float) or not math.isfinite(v) or (key == "std" and v < 0)):
                raise SchemaError(f"{at}.{key} must be a finite{' non-negative' if key == 'std' else ''} number, "
                                  f"got {v!r:.80}")
        out.append(record(**entry))  # numbers as written: to_dict gives back the same JSON
    return tuple(out)


# --- Vocabularies ---------------------------------------------------------------------------------------


def read_vocab(path: Path, name: str, size: int) -> Mapping[str, int]:
    """Vocabulary file `path` (a JSON list of distinct string ids, index 2 onwards) as raw id -> index.

    SchemaError if it cannot be read, is not such a list, or its length disagrees with `size` (the
    schema's vocab_sizes, which counts padding and OOV). The mapping keeps the file's order.
    """
    ids = read_json(path, "vocabulary file ")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise SchemaError(f"vocabulary file {path} must be a JSON list of strings")
    lookup = {raw_id: index for index, raw_id in enumerate(ids, start=FIRST_KNOWN_INDEX)}
    if len(lookup) != len(ids):
        dup = next(raw_id for raw_id, count in Counter(ids).items() if count > 1)
        raise SchemaError(f"vocabulary file {path} lists {dup!r} twice")
    if len(ids) + FIRST_KNOWN_INDEX != size:
        raise SchemaError(f"vocabulary {name!r} has {len(ids)} ids, so its size is {len(ids) + FIRST_KNOWN_INDEX} "
                          f"with padding and OOV, but schema vocab_sizes says {size}")
    return MappingProxyType(lookup)


@dataclass(frozen=True)
class Features:
    """A feature spec with its vocabularies read: everything the encoder needs, and nothing of a model file."""

    spec: FeatureSpec
    vocabs: Mapping[str, Mapping[str, int]]

    @classmethod
    def read(cls, spec: FeatureSpec, files: Mapping[str, Path]) -> Features:
        """Read each vocabulary in use from `files` (name -> path), checked against the spec's sizes."""
        vocabs = {}
        for name in spec.vocab_names:
            if name not in files:
                raise SchemaError(f"vocabulary {name!r} has no file")
            vocabs[name] = read_vocab(files[name], name, spec.vocab_sizes[name])
        return cls(spec, MappingProxyType(vocabs))

    @classmethod
    def of_dataset(cls, data_dir: str | Path, spec: FeatureSpec | None = None) -> Features:
        """A dataset directory's spec (schema.json, unless given) and vocabularies (vocab/<name>.json)."""
        root = Path(data_dir)
        spec = spec or FeatureSpec.load(root)
        return cls.read(spec, {v: root / "vocab" / f"{v}.json" for v in spec.vocab_names})


def id_key(value: Any) -> str:
    """The vocabulary key of one raw id: strings as they are, integers (and integral floats) as str(int).
    ValueError with the reason for a boolean, a non-integral number, null or a container."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{value!r} is a boolean, not an id")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value) and float(value).is_integer():
            return str(int(value))
        raise ValueError(f"{float(value)!r} is not an integral number, so not an id")
    if value is None:
        raise ValueError("is null")
    raise ValueError(f"expected a string or integer id, got {type(value).__name__}")


def lookup(keys: Sequence[str], vocab: Mapping[str, int]) -> tuple[np.ndarray, int]:
    """Indices (int64) of vocabulary keys, unseen ones OOV_INDEX, and how many were unseen."""
    index = np.fromiter(map(vocab.get, keys, repeat(OOV_INDEX)), dtype=np.int64, count=len(keys))
    return index, int(np.count_nonzero(index == OOV_INDEX))


# --- Histories: truncation and padding --------------------------------------------------------------------


@dataclass(frozen=True)
class Padding:
    """Where the kept items of each row's history go in the (rows, width) arrays: the newest `max_len`
    items, left-aligned, right-padded with PAD_INDEX to the longest kept history (at least 1 wide)."""

    kept: np.ndarray  # (rows,) int64: kept items per row, the hist_len input
    width: int
    rows: np.ndarray  # per kept item (flat, row by row): its row and column
    cols: np.ndarray

    @classmethod
    def of(cls, lengths: np.ndarray, max_len: int) -> Padding:
        kept = np.minimum(lengths, max_len)
        width = max(1, int(kept.max())) if len(kept) else 1
        starts = np.cumsum(kept) - kept
        cols = np.arange(int(kept.sum())) - np.repeat(starts, kept)
        return cls(kept, width, np.repeat(np.arange(len(kept)), kept), cols)

    def pad(self, index: np.ndarray) -> np.ndarray:
        """The (rows, width) int64 array of the kept items' indices (flat, row by row)."""
        out = np.full((len(self.kept), self.width), PAD_INDEX, dtype=np.int64)
        out[self.rows, self.cols] = index
        return out


def read_json(path: Path, what: str = "", unreadable: type[Exception] = SchemaError,
              invalid: type[Exception] = SchemaError) -> Any:
    """The JSON in file `path`; `unreadable` / `invalid` (with `what` before the path) if it cannot be read
    or parsed, including nesting deeper than the parser's stack."""
    try:
        return _parse_json(path.read_bytes())
    except OSError as e:
        raise unreadable(f"cannot read {what}{path}: {e.strerror}") from e
    except ValueError as e:
        raise invalid(f"{what}{path} is not valid JSON: {e}") from e


def _parse_json(data: bytes) -> Any:
    """JSON from bytes; every failure is a ValueError, including nesting deeper than the parser's stack."""
    try:
        return json.loads(data)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError as e:
        raise ValueError("nested too deeply") from e
    # any other ValueError (an integer literal over Python's 4300-digit limit) passes as it is
