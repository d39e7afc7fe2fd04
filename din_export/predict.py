"""Scoring raw requests with the torch model, encoded by din_runtime's encoder exactly as din-score
encodes them for the exported model, so the two outputs compare line by line."""

from __future__ import annotations

import numpy as np
import torch
from din_runtime.encode import encode_rows
from din_runtime.errors import DinRuntimeError, InputError
from din_runtime.features import Features
from din_runtime.io import Record

from din_export.model import DIN


@torch.no_grad()
def score_records(model: DIN, features: Features, batch: list[Record],
                  id_field: str | None) -> tuple[list | None, np.ndarray]:
    """(ids or None, float32 probabilities) of one batch of request records; a bad row raises with its line."""
    for r in batch:
        if r.error is not None:
            raise DinRuntimeError(f"line {r.line}: {r.error}")
        if id_field and id_field not in r.row:
            raise DinRuntimeError(f"line {r.line}, field {id_field!r}: missing (named by --id-field)")
    try:
        encoded = encode_rows(features, [r.row for r in batch])
    except InputError as e:
        field = f", field {e.field!r}" if e.field else ""
        raise DinRuntimeError(f"line {batch[e.row].line}{field}: {e.reason}") from e
    probs = torch.sigmoid(model({k: torch.from_numpy(v) for k, v in encoded.arrays.items()})).numpy()
    return ([r.row[id_field] for r in batch] if id_field else None), probs
