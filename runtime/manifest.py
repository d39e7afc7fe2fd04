"""Read and validate MODEL_DIR/manifest.json and the vocabularies it names (format: docs/design.md).

Every path in the manifest must stay inside the model directory, symlinks included: a model directory
may come from someone else, and a manifest must not make the runtime read arbitrary files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from din_runtime.errors import IntegrityError, ManifestError, ModelDirError
from din_runtime.features import (
    DENSE,
    HISTORY,
    ID,
    LENGTH,
    OOV_INDEX,
    PAD_INDEX,
    Behaviour,
    Features,
    FeatureSpec,
    Sparse,
    read_json,
)

MANIFEST_FILE = "manifest.json"
FORMAT = "din-model"
FORMAT_VERSION = 1

# Files that identify the other kinds of directory this project writes, for a helpful error.
_OTHER_DIRS = {
    "model.safetensors": "it looks like a training run directory; export it first with `din-export export`",
    "schema.json": "it looks like a dataset directory; train and export a model from it first",
}


@dataclass(frozen=True)
class Manifest:
    """A validated model directory: its feature spec and vocabularies (`features`), and what the model file
    adds: the graph files and their SHA-256, the graph's outputs. `raw` is the whole manifest.json, for
    fields the runtime does not use (parity, versions, ...)."""

    model_dir: Path
    model_file: str
    sha256: str
    features: Features
    outputs: tuple[str, ...]
    raw: Mapping[str, Any]
    # The optional candidate graph (one user's history x many candidates): its file and SHA-256, or None.
    candidate_file: str | None = None
    candidate_sha256: str | None = None
    # The optional portable graph (raw ids in, manifest "portable"): its file and SHA-256, or None.
    portable_file: str | None = None
    portable_sha256: str | None = None
    # The optional short-history graph (manifest "short_history": the model's interface, faster for batches
    # whose histories are at most `short_max_width` wide): its file, SHA-256 and that width, or None.
    short_file: str | None = None
    short_sha256: str | None = None
    short_max_width: int | None = None
    # The widest layer of the attention unit (manifest "model" "attention_hidden"; the output's 1 without
    # hidden layers), or None for a model without attention or a manifest that does not say.
    attention_width: int | None = None

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.model_file

    @property
    def candidate_path(self) -> Path | None:
        return None if self.candidate_file is None else self.model_dir / self.candidate_file

    @property
    def portable_path(self) -> Path | None:
        return None if self.portable_file is None else self.model_dir / self.portable_file

    @property
    def short_path(self) -> Path | None:
        return None if self.short_file is None else self.model_dir / self.short_file

    # The feature spec's parts, read through the manifest (docs/runtime.md).
    @property
    def spec(self) -> FeatureSpec:
        return self.features.spec

    @property
    def vocabs(self) -> Mapping[str, Mapping[str, int]]:
        return self.features.vocabs

    @property
    def max_len(self) -> int:
        return self.features.spec.max_len

    @property
    def group(self) -> str:
        return self.features.spec.group

    @property
    def sparse(self) -> tuple[Sparse, ...]:
        return self.features.spec.sparse

    @property
    def behaviour(self) -> tuple[Behaviour, ...]:
        return self.features.spec.behaviour

    @property
    def dense(self) -> tuple[str, ...]:
        """The dense fields' names, in the order of the "dense" input's columns."""
        return self.features.spec.dense_names

    @cached_property
    def vocab_sizes(self) -> Mapping[str, int]:
        return MappingProxyType(self.features.spec.vocab_sizes)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.features.spec.inputs

    @property
    def histories(self) -> tuple[str, ...]:
        return self.features.spec.histories

    @property
    def targets(self) -> tuple[str, ...]:
        return self.features.spec.targets

    def vocab_of(self, field: str) -> str | None:
        """The vocabulary of an id field (sparse, target or history); None for hist_len and dense."""
        return self.features.spec.vocab_of(field)


def load_manifest(model_dir: str | Path) -> Manifest:
    """Load MODEL_DIR/manifest.json and its vocabularies, or raise ModelDirError / ManifestError."""
    root = Path(model_dir)
    raw = _read_manifest(root)
    version = raw.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ManifestError(f"{root / MANIFEST_FILE}: format_version {version!r} is not supported by this "
                            f"runtime (it reads version {FORMAT_VERSION}); use the din-toolkit that exported it")
    for key, expected in (("padding_index", PAD_INDEX), ("oov_index", OOV_INDEX)):
        value = raw.get(key, expected)
        if type(value) is not int or value != expected:
            raise ManifestError(f"manifest {key} is {value!r}; this runtime needs {expected}")

    model_file = _str(raw, "model_file", "manifest")
    _inside(root, model_file, "model_file")
    sha = _str(raw, "sha256", "manifest").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ManifestError(f"manifest sha256 must be 64 hex digits, got {raw['sha256']!r}")

    if not isinstance(raw.get("schema"), dict):
        raise ManifestError("manifest has no 'schema' object")
    spec = FeatureSpec.from_dict(raw["schema"], where="manifest schema")
    inputs = tuple(_str(i, "name", "manifest inputs") for i in _list_of_objects(raw, "inputs", required=True))
    if inputs != spec.inputs:
        raise ManifestError(f"manifest inputs {list(inputs)} do not match the schema's input order "
                            f"{list(spec.inputs)}")
    outputs = tuple(_str(o, "name", "manifest outputs") for o in _list_of_objects(raw, "outputs", required=True))
    if "prob" not in outputs:
        raise ManifestError(f"manifest outputs {list(outputs)} have no 'prob'")

    vocab_files = raw.get("vocab_files")
    if not isinstance(vocab_files, dict):
        raise ManifestError("manifest has no 'vocab_files' object")
    paths = {}
    for name in spec.vocab_names:
        if name not in vocab_files:
            raise ManifestError(f"vocabulary {name!r} has no file in manifest vocab_files")
        rel = vocab_files[name]
        if not isinstance(rel, str):
            raise ManifestError(f"manifest vocab_files[{name!r}] must be a path string, got {rel!r}")
        paths[name] = _inside(root, rel, f"vocab_files[{name!r}]")
    features = Features.read(spec, paths)
    _check_input_entries(raw["inputs"], spec)
    candidate_file, candidate_sha = _candidate_graph(root, raw, inputs)
    portable_file, portable_sha = _portable_graph(root, raw, spec)
    short_file, short_sha, short_width = _short_graph(root, raw)
    attention_width = _attention_width(raw)

    return Manifest(
        model_dir=root, model_file=model_file, sha256=sha, features=features, outputs=outputs,
        raw=MappingProxyType(raw), candidate_file=candidate_file, candidate_sha256=candidate_sha,
        portable_file=portable_file, portable_sha256=portable_sha,
        short_file=short_file, short_sha256=short_sha, short_max_width=short_width,
        attention_width=attention_width,
    )


def _graph_entry(root: Path, raw: dict, key: str, file_key: str) -> tuple[dict, str, str] | None:
    """An optional extra graph of the manifest (`key`: "candidates", "portable", "short_history"): (entry,
    file, lowercase sha256), or None when the manifest has none; the file must lie inside the model directory."""
    entry = raw.get(key)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ManifestError(f"manifest '{key}' must be an object, got {entry!r:.80}")
    file = _str(entry, file_key, f"manifest {key}")
    _inside(root, file, f"{key} {file_key}")
    sha = _str(entry, "sha256", f"manifest {key}").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ManifestError(f"manifest {key} sha256 must be 64 hex digits, got {entry['sha256']!r}")
    return entry, file, sha


def _candidate_graph(root: Path, raw: dict, inputs: tuple[str, ...]) -> tuple[str | None, str | None]:
    """The optional "candidates" entry: (file, sha256), or (None, None) when the manifest has none.

    The graph takes the model's inputs in the same order (each history and hist_len for one user) and
    returns "prob"; anything else is a manifest from another exporter, refused rather than half-used.
    """
    found = _graph_entry(root, raw, "candidates", "model_file")
    if found is None:
        return None, None
    entry, model_file, sha = found
    names = tuple(_str(i, "name", "manifest candidates inputs")
                  for i in _list_of_objects(entry, "inputs", required=True))
    if names != inputs:
        raise ManifestError(f"manifest candidates inputs {list(names)} differ from the model's {list(inputs)}")
    outputs = [_str(o, "name", "manifest candidates outputs")
               for o in _list_of_objects(entry, "outputs", required=True)]
    if "prob" not in outputs:
        raise ManifestError(f"manifest candidates outputs {outputs} have no 'prob'")
    return model_file, sha


def _short_graph(root: Path, raw: dict) -> tuple[str | None, str | None, int | None]:
    """The optional "short_history" entry: (file, sha256, max_width), or Nones when the manifest has none.

    The graph has the model's own inputs and outputs (the Scorer checks its session as it checks
    model.onnx's); `max_width` is the widest history the Scorer sends it.
    """
    found = _graph_entry(root, raw, "short_history", "model_file")
    if found is None:
        return None, None, None
    entry, model_file, sha = found
    width = entry.get("max_width")
    if type(width) is not int or width < 1:
        raise ManifestError(f"manifest short_history max_width must be a positive integer, got {width!r}")
    return model_file, sha, width


def _attention_width(raw: dict) -> int | None:
    """The attention unit's widest layer from the manifest's "model" entry (written by din-export), or None."""
    model = raw.get("model")
    if not isinstance(model, dict) or model.get("name") != "din" or "attention_hidden" not in model:
        return None
    hidden = model["attention_hidden"]
    if not isinstance(hidden, list) or any(type(h) is not int or h < 1 for h in hidden):
        raise ManifestError(f"manifest model attention_hidden must be a list of positive integers, got {hidden!r}")
    return max(hidden, default=1)


_PORTABLE_DTYPES = {ID: ("string", "int64"), HISTORY: ("string", "int64"), LENGTH: ("int64",), DENSE: ("float32",)}


def _portable_graph(root: Path, raw: dict, spec: FeatureSpec) -> tuple[str | None, str | None]:
    """The optional "portable" entry (portable.onnx, raw ids in; docs/design.md): (file, sha256), or (None, None).

    Its inputs must be the request fields the schema names, each with a kind and a dtype the graph can
    take, and an int64 id field must name the sentinel a caller passes for an id that cannot be a key:
    a caller outside Python builds its tensors from this entry alone.
    """
    found = _graph_entry(root, raw, "portable", "file")
    if found is None:
        return None, None
    entry, file, sha = found
    kinds = spec.request_kinds
    entries = _list_of_objects(entry, "inputs", required=True)
    names = [_str(i, "name", "manifest portable inputs") for i in entries]
    if sorted(names) != sorted(kinds):
        raise ManifestError(f"manifest portable inputs {names} are not the schema's request fields {list(kinds)}")
    for i in entries:
        name, kind = i["name"], kinds[i["name"]]
        if i.get("kind") != kind or i.get("dtype") not in _PORTABLE_DTYPES[kind]:
            raise ManifestError(f"manifest portable input {name!r} must be kind {kind!r} with a dtype in "
                                f"{list(_PORTABLE_DTYPES[kind])}, got {i.get('kind')!r} {i.get('dtype')!r}")
        if kind in (ID, HISTORY) and i["dtype"] == "int64" and type(i.get("oov_int64_sentinel")) is not int:
            raise ManifestError(f"manifest portable input {name!r} takes int64 ids but names no integer "
                                f"'oov_int64_sentinel'")
    outputs = [_str(o, "name", "manifest portable outputs") for o in _list_of_objects(entry, "outputs", required=True)]
    if not {"prob", "logit", "oov"} <= set(outputs):
        raise ManifestError(f"manifest portable outputs {outputs} lack one of 'prob', 'logit', 'oov'")
    return file, sha


def read_portable(manifest: Manifest) -> bytes:
    """portable.onnx's bytes, checked against the manifest's SHA-256 (IntegrityError if they differ).

    Read on demand, not by `load_manifest`: the Scorer does not use the portable graph, and a large
    vocabulary makes it megabytes. Serve or embed these bytes, not the file, so what runs is what was checked.
    """
    path = manifest.portable_path
    if path is None:
        raise ManifestError(f"{manifest.model_dir} has no portable graph (manifest 'portable'); add one with "
                            "`din-export portable MODEL_DIR`")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"cannot read {path}: {e.strerror}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.portable_sha256:
        raise IntegrityError(f"{path} has SHA-256 {digest}, the manifest says {manifest.portable_sha256}: the "
                             f"file was changed or damaged after export")
    return data


def _read_manifest(root: Path) -> dict:
    if not root.exists():
        raise ModelDirError(f"model directory {root} does not exist")
    if not root.is_dir():
        raise ModelDirError(f"{root} is not a directory; pass the model directory written by `din-export export`")
    try:
        names = sorted(p.name for p in root.iterdir())
    except OSError as e:
        raise ModelDirError(f"cannot list model directory {root}: {e.strerror}") from e
    if not names:
        raise ModelDirError(f"model directory {root} is empty; write one with `din-export export`")
    if MANIFEST_FILE not in names:
        hint = next((why for marker, why in _OTHER_DIRS.items() if marker in names),
                    "write a model directory with `din-export export`")
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ModelDirError(f"{root} is not a din model directory (no {MANIFEST_FILE}; it holds {shown}): {hint}")
    path = _inside(root, MANIFEST_FILE, "file")
    raw = read_json(path, unreadable=ModelDirError, invalid=ManifestError)
    if not isinstance(raw, dict):
        raise ManifestError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise ModelDirError(f"{root} is not a din model directory: {MANIFEST_FILE} has format "
                            f"{raw.get('format')!r}, expected {FORMAT!r}")
    return raw


def _str(obj: Any, key: str, where: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _list_of_objects(obj: dict, key: str, required: bool) -> list[dict]:
    if key not in obj and not required:
        return []
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ManifestError(f"{key!r} must be a list of objects, got {value!r:.80}")
    return value


def _inside(root: Path, rel: str, what: str) -> Path:
    """The regular file `rel` names inside `root`; ManifestError if it is absolute, climbs out, or links out."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel or "\0" in rel or ".." in pure.parts:
        raise ManifestError(f"manifest {what} {rel!r} must be a relative path inside the model directory")
    path = root / pure
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise ManifestError(f"manifest {what} {rel!r}: {path} does not exist") from e
    if not resolved.is_relative_to(root.resolve()):
        raise ManifestError(f"manifest {what} {rel!r} resolves to {resolved}, outside the model directory")
    if not resolved.is_file():
        raise ManifestError(f"manifest {what} {rel!r} is not a regular file")
    return resolved


def _check_input_entries(entries: list[dict], spec: FeatureSpec) -> None:
    """Optional 'vocab' / 'columns' details of manifest inputs must agree with the schema."""
    for entry in entries:
        name = entry["name"]
        if "vocab" in entry and entry["vocab"] != spec.vocab_of(name):
            raise ManifestError(f"manifest input {name!r} uses vocabulary {entry['vocab']!r}, "
                                f"the schema says {spec.vocab_of(name)!r}")
        if name == "dense" and "columns" in entry and entry["columns"] != list(spec.dense_names):
            raise ManifestError(f"manifest dense columns {entry['columns']} differ from schema dense "
                                f"{list(spec.dense_names)}")
