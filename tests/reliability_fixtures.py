"""Shared by the reliability tests: valid request rows for any model directory, and one real exported DIN.

`valid_rows` builds rows from a manifest alone (its vocabularies and fields), so the same hostile-input
cases run against the runtime's fixture graph and against a DIN exported by din_export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from din_runtime import Manifest

_BUILT: dict[str, Path] = {}


@dataclass(frozen=True)
class Names:
    """The fields of a model that the cases mutate: a profile field, the item pair, one dense feature."""

    user: str
    item: str
    cate: str
    hist: str
    hist2: str
    dense: str
    max_len: int

    @classmethod
    def of(cls, m: Manifest) -> Names:
        return cls(m.sparse[0].name, m.targets[0], m.targets[1], m.histories[0], m.histories[1], m.dense[0],
                   m.max_len)


def valid_rows(m: Manifest, n: int, start: int = 0) -> list[dict[str, Any]]:
    """n valid requests (known ids, histories of 1 to 4 items, a label and a request id `rid`)."""
    ids = {name: list(vocab) for name, vocab in m.vocabs.items()}  # insertion order is index order
    rows = []
    for i in range(start, start + n):
        row: dict[str, Any] = {s.name: ids[s.vocab][i % len(ids[s.vocab])] for s in m.sparse}
        for b in m.behaviour:
            known = ids[b.vocab]
            row[b.target] = known[(3 * i + 1) % len(known)]
            row[b.history] = [known[(i + k) % len(known)] for k in range(1 + i % 4)]
        row.update({d: 20.0 + i % 50 for d in m.dense})
        row["label"] = i % 2
        row["rid"] = f"r{i}"
        rows.append(row)
    return rows


def exported_din(tmp_path_factory: Any) -> Path:
    """A tiny trained DIN exported and verified by din_export (built once per test session)."""
    if "din" not in _BUILT:
        from export_helpers import make_run

        from din_export.export import export_run

        root = tmp_path_factory.mktemp("real-din")
        export_run(make_run(root), root / "model")
        _BUILT["din"] = root / "model"
    return _BUILT["din"]
