"""Scoring raw requests with the torch model, encoded by din_runtime's encoder exactly as din-score
encodes them for the exported model, so the two outputs compare line by line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from din_runtime.encode import encode_rows
from din_runtime.errors import DinRuntimeError, InputError
from din_runtime.io import Record
from din_runtime.manifest import FIRST_KNOWN_INDEX, Manifest
from din_runtime.manifest import Behaviour as RuntimeBehaviour
from din_runtime.manifest import Sparse as RuntimeSparse

from din_export.data import DataError
from din_export.model import DIN
from din_export.schema import Schema


def dataset_manifest(data_dir: Path, schema: Schema) -> Manifest:
    """The runtime's view of a dataset directory (schema + vocabularies), so that `predict` encodes
    requests with din_runtime's encoder exactly as din-score does for the exported model."""
    vocabs = {}
    for name in dict.fromkeys([s.vocab for s in schema.sparse] + [b.vocab for b in schema.behaviour]):
        path = data_dir / "vocab" / f"{name}.json"
        try:
            ids = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read the vocabulary: {e}") from e
        if not isinstance(ids, list) or len(ids) + FIRST_KNOWN_INDEX != schema.vocab_sizes[name]:
            raise DataError(f"{path}: expected a list of {schema.vocab_sizes[name] - FIRST_KNOWN_INDEX} ids "
                            f"(vocab_sizes[{name!r}] minus padding and OOV)")
        vocabs[name] = {str(v): i for i, v in enumerate(ids, start=FIRST_KNOWN_INDEX)}
    return Manifest(
        model_dir=data_dir, model_file="", sha256="", max_len=schema.max_len, group=schema.group,
        sparse=tuple(RuntimeSparse(s.name, s.vocab) for s in schema.sparse),
        behaviour=tuple(RuntimeBehaviour(b.target, b.history, b.vocab) for b in schema.behaviour),
        dense=schema.dense_names, vocab_sizes=dict(schema.vocab_sizes), vocabs=vocabs,
        inputs=tuple(schema.input_names()), outputs=("logit", "prob"), raw={"schema": schema.to_dict()})


@torch.no_grad()
def score_records(model: DIN, manifest: Manifest, batch: list[Record],
                  id_field: str | None) -> tuple[list | None, np.ndarray]:
    """(ids or None, float32 probabilities) of one batch of request records; a bad row raises with its line."""
    for r in batch:
        if r.error is not None:
            raise DinRuntimeError(f"line {r.line}: {r.error}")
        if id_field and id_field not in r.row:
            raise DinRuntimeError(f"line {r.line}, field {id_field!r}: missing (named by --id-field)")
    try:
        encoded = encode_rows(manifest, [r.row for r in batch])
    except InputError as e:
        field = f", field {e.field!r}" if e.field else ""
        raise DinRuntimeError(f"line {batch[e.row].line}{field}: {e.reason}") from e
    probs = torch.sigmoid(model({k: torch.from_numpy(v) for k, v in encoded.arrays.items()})).numpy()
    return ([r.row[id_field] for r in batch] if id_field else None), probs
