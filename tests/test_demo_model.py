"""The shipped models/demo: it loads (hash checked), din-score scores examples/requests.jsonl with it, its
card says what its manifest says, and the build commands on the card are the ones the script runs."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from din_runtime import Scorer

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "demo"
EXAMPLES = REPO / "examples" / "requests.jsonl"
CARD = MODEL_DIR / "MODEL_CARD.md"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((MODEL_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return [json.loads(line) for line in EXAMPLES.read_text().splitlines()]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load(MODEL_DIR)


def test_loads_with_its_hash(manifest: dict, scorer: Scorer) -> None:
    assert hashlib.sha256((MODEL_DIR / "model.onnx").read_bytes()).hexdigest() == manifest["sha256"]
    assert scorer.manifest.raw["sha256"] == manifest["sha256"]
    assert "attention" in [o["name"] for o in manifest["outputs"]]


def test_is_small() -> None:
    total = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert total < 1_000_000


def test_examples_are_synthetic_requests_the_model_knows(examples: list[dict], scorer: Scorer) -> None:
    assert 5 <= len(examples) <= 20
    assert [r["request_id"] for r in examples] == [f"example-{i}" for i in range(1, len(examples) + 1)]
    assert {r["label"] for r in examples} == {0, 1}
    assert len({len(r["hist_item_id"]) for r in examples}) == len(examples)  # one history length each
    assert all(r["cate_id"].startswith("c") for r in examples)  # the synthetic generator's categories
    assert not any(scorer.encode(examples).oov.values())


def test_din_score_cli_scores_the_examples(examples: list[dict], scorer: Scorer) -> None:
    done = subprocess.run([sys.executable, "-m", "din_runtime", str(MODEL_DIR), str(EXAMPLES),
                           "--id-field", "request_id"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["request_id"] for o in out] == [r["request_id"] for r in examples]
    np.testing.assert_array_equal(np.array([o["score"] for o in out], dtype=np.float32), scorer.score(examples))
    assert f"{len(examples)} rows read, {len(examples)} scored, 0 rejected" in done.stderr


def test_attention_favours_history_in_the_target_category(examples: list[dict], scorer: Scorer) -> None:
    """What docs/attention.png shows: the trained model weighs clicks in the target's category highest."""
    compared = 0
    for row, weights in zip(examples, scorer.explain(examples), strict=True):
        same = np.array([c == row["cate_id"] for c in row["hist_cate_id"]], dtype=bool)
        if same.any() and (~same).any():
            assert weights[same].mean() > weights[~same].mean(), row["request_id"]
            compared += 1
    assert compared >= 3


def card_table(text: str) -> dict[str, list[str]]:
    rows = re.findall(r"^\| (valid|test) \| (.+) \|$", text, flags=re.MULTILINE)
    return {split: [c.strip() for c in cells.split("|")] for split, cells in rows}


def test_card_matches_the_manifest(manifest: dict) -> None:
    text = CARD.read_text()
    metrics = manifest["metrics"]
    table = card_table(text)
    assert set(table) == {"valid", "test"}
    for split, cells in table.items():
        m = metrics[split]
        assert cells == [f"{m['auc']:.4f}", f"{m['gauc']:.4f}", f"{m['logloss']:.4f}", f"{m['rows']:,}"]
    assert f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}" in text
    assert f"sha256 `{manifest['sha256']}`" in text
    assert f"model.onnx {(MODEL_DIR / 'model.onnx').stat().st_size:,} bytes" in text
    assert f"probability {manifest['parity']['variant']['max_abs_diff_prob']:.2e}" in text
    assert "with the `edge` preset" in text
    preset = json.loads((REPO / "din_export" / "presets" / "edge.json").read_text())["model"]
    trained = {"model": manifest["model"]["name"], **manifest["model"]}
    assert {k: trained[k] for k in preset} == preset


def test_card_commands_are_the_build_script(manifest: dict) -> None:
    commands = re.search(r"runs, from the repository root:\n\n```\n(.+?)\n```", CARD.read_text(), re.DOTALL)
    assert commands is not None
    script = (REPO / "scripts" / "build_demo_model.sh").read_text().splitlines()
    for line in commands.group(1).splitlines():
        assert line in script
    assert "--config edge" in commands.group(1) and "--with-attention" in commands.group(1)


def test_readme_shows_the_scores_the_model_gives(examples: list[dict], scorer: Scorer) -> None:
    """The README's din-score excerpt is this model's output, so a rebuilt model cannot leave it stale."""
    readme = (REPO / "README.md").read_text()
    shown = {m["id"]: float(m["score"]) for m in re.finditer(
        r'\{"request_id": "(?P<id>example-\d+)", "score": (?P<score>[0-9.e-]+)\}', readme)}
    assert shown, "the README shows no din-score output lines for models/demo"
    scores = dict(zip([e["request_id"] for e in examples], scorer.score(examples), strict=True))
    for request_id, score in shown.items():
        assert abs(scores[request_id] - score) <= 1e-6, (request_id, score, scores[request_id])
