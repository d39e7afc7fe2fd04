"""Tiny dataset directories written with numpy exactly as docs/design.md describes (no `prepare`).

Each user likes two of six categories; a row is a click with probability 0.9 when the target's
category is one the user likes and 0.1 otherwise, and histories are drawn from the liked categories,
so attention over the history has something to find.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from din_export.data import write_splits
from din_export.schema import Schema

MAX_LEN = 8
N_ITEMS, N_CATES, N_USERS = 60, 6, 40


def _vocab(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def schema_dict() -> dict:
    return {
        "version": 1, "source": "synthetic", "protocol": "test", "max_len": MAX_LEN, "group": "user_id",
        "sparse": [{"name": "user_id", "vocab": "user_id"}, {"name": "gender", "vocab": "gender"}],
        "dense": [{"name": "age", "mean": 35.0, "std": 10.0}],
        "behaviour": [{"target": "item_id", "history": "hist_item_id", "vocab": "item_id"},
                      {"target": "cate_id", "history": "hist_cate_id", "vocab": "cate_id"}],
        "vocab_sizes": {"user_id": N_USERS + 2, "gender": 4, "item_id": N_ITEMS + 2, "cate_id": N_CATES + 2},
        "item_frequency": "item_freq.npy",
    }


def make_rows(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n encoded rows (indices already shifted past padding 0 and OOV 1)."""
    item_cate = np.arange(N_ITEMS) % N_CATES
    liked = np.stack([rng.choice(N_CATES, 2, replace=False) for _ in range(N_USERS)])
    user = rng.integers(0, N_USERS, n)
    target = rng.integers(0, N_ITEMS, n)
    hist_len = rng.integers(0, MAX_LEN + 1, n)
    hist = np.zeros((n, MAX_LEN), dtype=np.int64)
    hist_cate = np.zeros((n, MAX_LEN), dtype=np.int64)
    for r in range(n):
        cates = rng.choice(liked[user[r]], hist_len[r])
        items = cates + N_CATES * rng.integers(0, N_ITEMS // N_CATES, hist_len[r])
        hist[r, : hist_len[r]] = items + 2
        hist_cate[r, : hist_len[r]] = item_cate[items] + 2
    likes = (liked[user] == item_cate[target][:, None]).any(axis=1)
    label = (rng.random(n) < np.where(likes, 0.9, 0.1)).astype(np.float32)
    return {
        "user_id": user + 2, "gender": (user % 2) + 2, "item_id": target + 2, "cate_id": item_cate[target] + 2,
        "hist_item_id": hist, "hist_cate_id": hist_cate, "hist_len": hist_len.astype(np.int64),
        "dense": (20 + user % 40).astype(np.float32)[:, None], "label": label, "group": user.astype(np.int64),
    }


def raw_requests(rows: dict[str, np.ndarray]) -> list[dict]:
    """The rows as raw requests (docs/design.md "Request format")."""
    out = []
    for r in range(len(rows["label"])):
        n = rows["hist_len"][r]
        out.append({
            "user_id": f"u{rows['user_id'][r] - 2}", "gender": f"g{rows['gender'][r] - 2}",
            "age": float(rows["dense"][r, 0]), "item_id": f"i{rows['item_id'][r] - 2}",
            "cate_id": f"c{rows['cate_id'][r] - 2}",
            "hist_item_id": [f"i{v - 2}" for v in rows["hist_item_id"][r, :n]],
            "hist_cate_id": [f"c{v - 2}" for v in rows["hist_cate_id"][r, :n]],
            "label": int(rows["label"][r]), "request_id": f"req-{r}",
        })
    return out


def make_dataset(root: Path, n_train: int = 1200, n_valid: int = 300, n_test: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = make_rows(n_train + n_valid + n_test, rng)
    root.mkdir(parents=True, exist_ok=True)
    (root / "schema.json").write_text(json.dumps(schema_dict()))
    vocabs = {"user_id": _vocab("u", N_USERS), "gender": _vocab("g", 2), "item_id": _vocab("i", N_ITEMS),
              "cate_id": _vocab("c", N_CATES)}
    (root / "vocab").mkdir(exist_ok=True)
    for name, ids in vocabs.items():
        (root / "vocab" / f"{name}.json").write_text(json.dumps(ids))
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid),
              "test": (n_train + n_valid, n_train + n_valid + n_test)}
    parts = {split: {k: v[a:b] for k, v in rows.items()} for split, (a, b) in bounds.items()}
    write_splits(root, Schema.from_dict(schema_dict()), parts)
    for split, part in parts.items():
        if split != "train":
            lines = "".join(json.dumps(r) + "\n" for r in raw_requests(part))
            (root / f"{split}_requests.jsonl").write_text(lines)
    train = {k: v[: n_train] for k, v in rows.items()}
    (root / "freq").mkdir(exist_ok=True)
    sizes = schema_dict()["vocab_sizes"]
    mask = np.arange(MAX_LEN)[None, :] < train["hist_len"][:, None]
    for vocab, parts in {"user_id": [train["user_id"]], "gender": [train["gender"]],
                         "item_id": [train["item_id"], train["hist_item_id"][mask]],
                         "cate_id": [train["cate_id"], train["hist_cate_id"][mask]]}.items():
        np.save(root / "freq" / f"{vocab}.npy", np.bincount(np.concatenate(parts), minlength=sizes[vocab]))
    (root / "stats.json").write_text(json.dumps({"samples": {s: b - a for s, (a, b) in bounds.items()}}))
    return root
