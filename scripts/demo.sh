#!/usr/bin/env bash
# `make demo`: the whole flow on the synthetic shoppers, from raw events to torch-free scores.
# Training, export and explain run in .venv (torch); din-score and the latency check run in
# .venv-runtime, which has no torch. Everything goes to out/demo (replaced on every run).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=out/demo
TRAIN_BIN=.venv/bin
RUNTIME_BIN=.venv-runtime/bin
# Epochs are capped so the demo stays around a minute or two of training on a laptop; the edge preset
# otherwise runs 10 with early stopping (models/demo is trained that way).
EPOCHS=4
# One torch thread: this model is tiny, and on a busy machine several threads spin-wait far more than
# they compute (measured 10x slower with 2 threads on 2 shared cores).
THREADS=1
EXAMPLE_LINE=4  # examples/requests.jsonl line 4: a click on a category the shopper clicked before

step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

rm -rf "$OUT"
mkdir -p "$OUT"
started=$(date +%s)

step "1/6 prepare: generate synthetic shoppers and build the dataset directory"
run "$TRAIN_BIN/din-export" prepare --source synthetic --out "$OUT/data"

step "2/6 train DIN (edge preset: 8-wide embeddings, attention over the click history)"
run "$TRAIN_BIN/din-export" train "$OUT/data" --out "$OUT/run-din" --config edge --epochs "$EPOCHS" \
    --threads "$THREADS"

step "3/6 train the base model (same network, sum pooling instead of attention)"
run "$TRAIN_BIN/din-export" train "$OUT/data" --out "$OUT/run-base" --config edge --model base \
    --epochs "$EPOCHS" --threads "$THREADS"

step "4/6 export DIN to ONNX; the export verifies parity with torch before writing the model directory"
printf '$ %s\n' "$TRAIN_BIN/din-export export $OUT/run-din --out $OUT/model  (full report: $OUT/export.log)"
"$TRAIN_BIN/din-export" export "$OUT/run-din" --out "$OUT/model" > "$OUT/export.log"
tail -n 3 "$OUT/export.log"

step "5/6 explain: DIN's attention over one request's history"
run "$TRAIN_BIN/din-export" explain "$OUT/run-din" examples/requests.jsonl --line "$EXAMPLE_LINE" \
    --out "$OUT/attention.png"

step "6/6 score the test requests with din-score in the torch-free venv"
run "$RUNTIME_BIN/python" scripts/demo_runtime.py "$OUT/model" "$OUT/data/test_requests.jsonl" "$OUT"

"$TRAIN_BIN/python" scripts/demo_summary.py "$OUT"
echo "  demo took $(( $(date +%s) - started )) s (after setup)"
