"""The closing summary of `make demo`, read from the files the demo wrote (standard library only).

    python scripts/demo_summary.py OUT_DIR

Fails (exit 1) if din-score's test metrics in the torch-free venv disagree with the torch model's: both
score the same test requests, so they must match to float32 rounding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

AGREEMENT = 1e-4  # AUC / GAUC difference allowed between torch and din-score (float32 ties move ranks)


def relaimpr(model: float, base: float) -> float:
    """The paper's relative improvement, in percent: ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) x 100."""
    return ((model - 0.5) / (base - 0.5) - 1) * 100


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"demo summary: cannot read {path}: {e}")


def main(out: Path) -> None:
    din = load(out / "run-din" / "metrics.json")["test"]
    base = load(out / "run-base" / "metrics.json")["test"]
    manifest = load(out / "model" / "manifest.json")
    runtime = load(out / "runtime.json")
    parity = manifest["parity"]["variant"]
    tolerance = manifest["parity"]["tolerance"]["prob"]
    score, latency = runtime["din_score"], runtime["latency"]

    print(f"\n== demo summary ({out}, synthetic shoppers, test split of {din['rows']:,} requests)")
    print(f"  {'':12s}{'test AUC':>10s}{'test GAUC':>11s}{'logloss':>9s}")
    for name, m in (("DIN", din), ("base model", base)):
        print(f"  {name:12s}{m['auc']:10.4f}{m['gauc']:11.4f}{m['logloss']:9.4f}")
    print(f"  DIN vs base: RelaImpr {relaimpr(din['gauc'], base['gauc']):+.1f}% on GAUC (the paper's metric), "
          f"{relaimpr(din['auc'], base['auc']):+.1f}% on AUC")
    print(f"  export parity (ONNX vs torch, {parity['valid_rows']:,} validation rows and a batch x seq grid): "
          f"max |prob diff| {parity['max_abs_diff_prob']:.2e} (tolerance {tolerance:g})")
    print(f"  din-score, torch-free venv: {score['rows']:,} rows in {score['seconds']:.2f} s end to end "
          f"({score['rows_per_s']:,.0f} rows/s incl. start-up); test AUC {score['auc']:.4f} GAUC {score['gauc']:.4f}")
    print(f"  Scorer.score latency, 1 row: p50 {latency['p50_ms']:.3f} ms, p99 {latency['p99_ms']:.3f} ms "
          f"({latency['calls']} calls, {latency['threads']} thread, onnxruntime {runtime['onnxruntime']})")
    print(f"  files: {out}/run-din/curve.png, {out}/attention.png, {out}/model/, {out}/scores.jsonl")
    gaps = {k: abs(score[k] - din[k]) for k in ("auc", "gauc")}
    if max(gaps.values()) > AGREEMENT:
        sys.exit(f"demo summary: din-score's test metrics differ from torch's by {gaps} (> {AGREEMENT})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
