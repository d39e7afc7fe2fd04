"""What the Node.js and browser tests share: the tools they need, and request rows that probe the row rules.

Off CI a missing tool (node, an npm package, chromium) skips the test with the reason; on CI (CI=true)
it fails it, since .ci/run installs them all.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
NODE_DIR = ROOT / "examples" / "node"
WEB_DIR = ROOT / "examples" / "web"
ON_CI = os.environ.get("CI", "").lower() == "true"


def require(ok: bool, missing: str, install: str) -> None:
    """Skip (off CI) or fail (CI=true) unless `ok`."""
    if ok:
        return
    if ON_CI:
        pytest.fail(f"{missing} (CI=true, and .ci/run should have installed it: {install})")
    pytest.skip(f"{missing}; install it with: {install}")


def node() -> str:
    path = shutil.which("node")
    require(path is not None, "node (Node.js 18+) is not on PATH", "Node.js 18+ from your distribution or nodejs.org")
    return str(path)


def npm_package(folder: Path, package: str) -> None:
    require((folder / "node_modules" / package / "package.json").is_file(),
            f"npm package {package} is not installed in {folder.relative_to(ROOT)}",
            f"cd {folder.relative_to(ROOT)} && npm ci --ignore-scripts")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require(path is not None, "chromium is not on PATH", "apt-get update && apt-get install -y chromium")
    return str(path)


def demo_vocabs() -> dict[str, list[str]]:
    manifest = json.loads((DEMO / "manifest.json").read_text())
    return {name: json.loads((DEMO / rel).read_text()) for name, rel in manifest["vocab_files"].items()}


def probe_rows(n: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """Rows for models/demo that walk the row rules: empty histories and histories up to 4x max_len, unseen
    ids of every kind (an unknown decimal id, "007" beside a known 7, ids that are not decimal, unknown
    categories and genders), ids written as JSON integers and integral floats, and bad items older than
    the last max_len (never read, so not errors)."""
    rng = random.Random(seed)
    vocabs = demo_vocabs()
    items, cates, genders = vocabs["item_id"], vocabs["cate_id"], vocabs["gender"]
    assert "7" in items, "the probe relies on item 7 being known, to send '007' beside it"
    unseen_items: list[Any] = ["999999", "007", "new-item", "-5", "9" * 30, 1_000_001, "", " 42"]
    lengths = [0, 0, 1, 5, 49, 50, 51, 80, 200]

    def item() -> Any:
        r = rng.random()
        if r < 0.1:
            return rng.choice(unseen_items)
        known = rng.choice(items)
        # The same id as a JSON integer or an integral float: din_runtime looks both up as the decimal string.
        return int(known) if r < 0.25 else float(known) if r < 0.3 else known

    def cate() -> str:
        return rng.choice(["c99", "C1", "c01"]) if rng.random() < 0.05 else rng.choice(cates)

    rows = []
    for i in range(n):
        length = lengths[i] if i < len(lengths) else rng.choice(lengths + [rng.randrange(0, 120)])
        hist_items = [item() for _ in range(length)]
        hist_cates = [cate() for _ in range(length)]
        if length > 50 and rng.random() < 0.5:
            # Older than the kept 50: din_runtime never reads it, so it is no error there either.
            hist_items[rng.randrange(0, length - 50)] = rng.choice([None, True, 2.5, ["x"]])
        gender = rng.choice(genders + ["X", ""]) if rng.random() < 0.1 else rng.choice(genders)
        rows.append({
            "request_id": rng.choice([f"probe-{i}", i, f"probe-{i} \"é\"\t"]),
            "user_id": str(rng.randrange(1, 3000)),
            "gender": gender,
            "age": rng.choice([rng.randrange(18, 71), rng.uniform(0, 120), -3, 0]),
            "price": rng.choice([round(rng.uniform(1, 80), 2), rng.uniform(0, 1e6), 0, 1e30]),
            "item_id": item(),
            "cate_id": cate(),
            "hist_item_id": hist_items,
            "hist_cate_id": hist_cates,
        })
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
