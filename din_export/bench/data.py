"""The bench's data: the prepared datasets, synthetic model inputs of a chosen shape, raw test requests."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from din_export.schema import Schema


def prepare_dataset(source: str, path: Path, out: Path, train_rows: int | None) -> Path:
    """`din-export prepare` of one source into `out`; with train_rows, a seeded subset of the train split."""
    from din_export.prepare import load_source, prepare

    with contextlib.redirect_stdout(io.StringIO()):
        prepare(load_source(source, path), out, max_len=50, seed=0)
    if train_rows is not None:
        from din_export.data import keep_rows, load_split

        n = load_split(out, "train").n
        if n > train_rows:
            keep_rows(out, "train", np.sort(np.random.default_rng(0).choice(n, train_rows, replace=False)))
    return out


def workload_arrays(schema: Schema, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Model inputs with every row's history `seq` long (known ids only, so no row is cheaper)."""
    rng = np.random.default_rng(seed)
    arrays = {s.name: rng.integers(2, schema.vocab_sizes[s.vocab], batch) for s in schema.sparse}
    for b in schema.behaviour:
        arrays[b.target] = rng.integers(2, schema.vocab_sizes[b.vocab], batch)
    for b in schema.behaviour:
        arrays[b.history] = rng.integers(2, schema.vocab_sizes[b.vocab], (batch, seq))
    arrays["hist_len"] = np.full(batch, seq, dtype=np.int64)
    if schema.dense:
        mean = np.array([d.mean for d in schema.dense])
        std = np.array([d.scale for d in schema.dense])
        arrays["dense"] = (mean + std * rng.standard_normal((batch, len(schema.dense)))).astype(np.float32)
    return arrays


def read_requests(data_dir: Path) -> list[dict]:
    with open(data_dir / "test_requests.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
