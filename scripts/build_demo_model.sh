#!/usr/bin/env bash
# `make demo-model`: rebuild models/demo (+ MODEL_CARD.md) and examples/requests.jsonl from the synthetic
# shoppers. The commands are the ones printed on models/demo/MODEL_CARD.md; keep the two in step.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PWD/.venv/bin:$PATH"
OUT=out/demo-model

rm -rf "$OUT"
set -x
din-export prepare --source synthetic --out out/demo-model/data
din-export train out/demo-model/data --out out/demo-model/run --config edge --threads 1
din-export export out/demo-model/run --out models/demo --with-attention --force
python scripts/make_examples.py out/demo-model/data examples/requests.jsonl
python scripts/model_card.py models/demo out/demo-model/data
