"""Write MODEL_CARD.md into a model directory from its manifest and its dataset's stats.json.

    python scripts/model_card.py MODEL_DIR DATA_DIR

Every figure on the card is read from those two files, so the card cannot drift from the model it
describes; tests/test_demo_model.py checks the shipped card against the shipped manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

BUILD_COMMANDS = """\
din-export prepare --source synthetic --out out/demo-model/data
din-export train out/demo-model/data --out out/demo-model/run --config edge --threads 1
din-export export out/demo-model/run --out models/demo --with-attention --force
python scripts/make_examples.py out/demo-model/data examples/requests.jsonl
python scripts/model_card.py models/demo out/demo-model/data"""

NORMS = {"none": "the paper's unnormalised weights", "softmax": "softmax, as the official code"}


def metric_row(split: str, m: dict) -> str:
    return f"| {split} | {m['auc']:.4f} | {m['gauc']:.4f} | {m['logloss']:.4f} | {m['rows']:,} |"


def candidate_parity(manifest: dict) -> str:
    """The candidate graph's line of the parity section, or nothing for a directory without one."""
    if "candidates" not in manifest:
        return ""
    cases = manifest["parity"]["candidates"]
    worst = max(c["prob"] for c in cases)
    return (f"\nThe candidate graph ({manifest['candidates']['model_file']}, one user against many candidates, "
            f"used by `Scorer.score_candidates`):\nmax absolute difference in probability {worst:.2e} over "
            f"{len(cases)} (user, candidates, history) cases.\n")


def portable_section(model_dir: Path, manifest: dict) -> str:
    """The portable graph's section (raw ids in; parity and size), or nothing for a directory without one."""
    entry = manifest.get("portable")
    if entry is None:
        return ""
    # `din-export export` verifies it against torch and the runtime (parity "portable"); `din-export portable`
    # added to an existing directory checks it against the runtime only ("check" in its entry).
    check = manifest.get("parity", {}).get("portable") or entry["check"]
    size = (model_dir / entry["file"]).stat().st_size
    model_size = (model_dir / manifest["model_file"]).stat().st_size
    dtypes = ", ".join(f"{i['name']} {i['dtype']}" for i in entry["inputs"])
    torch_line = (f"max absolute difference {check['max_abs_diff_prob_ref']:.2e} to the torch model"
                  if "max_abs_diff_prob_ref" in check else
                  "not compared with torch directly:\nit was added to this directory by `din-export portable "
                  "models/demo`, and model.onnx itself is within the parity above")
    return f"""
## Portable graph (raw ids in)

{entry['file']} is the same model with the encoder inside, for callers outside Python (Node.js, a browser,
C++/Java/C#): raw ids in; `prob`, `logit` and `oov` (unseen ids per row) out. IR version {entry['ir_version']},
opset {entry['opset']} + ai.onnx.ml {entry['ml_opset']}; inputs (manifest "portable"):
{dtypes}.

On {check['rows']:,} raw request rows in {len(check['cases'])} batches (batch 1 to 257, empty histories,
histories longer than {manifest['schema']['max_len']}, {check['oov_ids']:,} unseen ids) its probabilities differ from
`Scorer.score` by at most {check['max_abs_diff_prob']:.2e}, and it counts the same unseen ids; {torch_line}.

Size {size:,} bytes ({size / model_size:.2f}x model.onnx), sha256 `{entry['sha256']}`.
"""


def card(model_dir: Path, data_dir: Path) -> str:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    stats = json.loads((data_dir / "stats.json").read_text())
    metrics, parity, model = manifest["metrics"], manifest["parity"], manifest["model"]
    variant = parity["variant"]
    onnx_bytes = (model_dir / manifest["model_file"]).read_bytes()
    files = [p for p in model_dir.rglob("*") if p.is_file() and p.name != "MODEL_CARD.md"]
    total = sum(p.stat().st_size for p in files)
    schema = manifest["schema"]
    fields = ", ".join([s["name"] for s in schema["sparse"]] + [d["name"] for d in schema["dense"]]
                       + [b["target"] for b in schema["behaviour"]] + [b["history"] for b in schema["behaviour"]])
    outputs = ", ".join(o["name"] for o in manifest["outputs"])
    return f"""# models/demo: a small DIN for trying the runtime

A DIN trained on the **synthetic shoppers** that `din_export.synthetic` generates (seeded, no real data),
with the `edge` preset. It exists so that `din-score` and `din_runtime` can be tried right after
`pip install 'din-toolkit[cpu]'`, without training anything. It knows only the synthetic ids; do not
use it for real traffic.

```
din-score models/demo examples/requests.jsonl --id-field request_id
```

## How it was built

`make demo-model` (scripts/build_demo_model.sh) runs, from the repository root:

```
{BUILD_COMMANDS}
```

## Data

Synthetic shoppers, default generator settings, seed {stats['seed']}: {stats['users']['total']:,} users,
{stats['events']['events_used']:,} impressions; protocol `{stats['protocol']}` (users split at random,
clicks are the history), histories up to {schema['max_len']} items.
Samples: train {stats['samples']['train']:,}, valid {stats['samples']['valid']:,}, test {stats['samples']['test']:,}
(positive rate {stats['positive_rate']['test']:.3f} in test).

## Model

`{model['name']}`, attention `{model['attention_norm']}` ({NORMS[model['attention_norm']]}),
embeddings {model['embed_dim']} per field, attention MLP {model['attention_hidden']}
({model['attention_activation']}), MLP {model['mlp_hidden']} ({model['mlp_activation']}).
Inputs: {fields}. Outputs: {outputs} (`attention` is what `Scorer.explain` returns).
Opset {manifest['opset']}, {manifest['precision']}.

## Metrics

Selected on validation GAUC: best epoch {metrics['best_epoch']} of {metrics['epochs_run']}
(stopped early: {'yes' if metrics['stopped_early'] else 'no'}).

| split | AUC | GAUC | logloss | rows |
|---|---|---|---|---|
{metric_row('valid', metrics['valid'])}
{metric_row('test', metrics['test'])}

## Parity (ONNX Runtime vs torch, checked by the export)

Max absolute difference in probability {variant['max_abs_diff_prob']:.2e}, in logit
{variant['max_abs_diff_logit']:.2e}, over {variant['valid_rows']:,} validation rows and a grid of
{len(parity['shapes'])} batch x history sizes; tolerance {parity['tolerance']['prob']:g}.
{candidate_parity(manifest)}{portable_section(model_dir, manifest)}
## Size

model.onnx {len(onnx_bytes):,} bytes, sha256 `{hashlib.sha256(onnx_bytes).hexdigest()}`;
the whole directory (model, {'candidate graph, ' if 'candidates' in manifest else ''}\
{'short-history graph, ' if 'short_history' in manifest else ''}\
{'portable graph, ' if 'portable' in manifest else ''}manifest, vocabularies) \
{total:,} bytes.

## Versions

{', '.join(f'{k} {v}' for k, v in manifest['versions'].items())}.
"""


def main(model_dir: Path, data_dir: Path) -> None:
    text = card(model_dir, data_dir)
    fd, tmp = tempfile.mkstemp(prefix=".MODEL_CARD.md.", suffix=".tmp", dir=model_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, model_dir / "MODEL_CARD.md")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
