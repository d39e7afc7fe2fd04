"""Every preset x every export variant on one real dataset: results/export.md's "Preset x variant" table.

    python scripts/variant_matrix.py --source movielens ../shared/data/movielens-100k --out /tmp/vm/ml
    python scripts/variant_matrix.py --source taobao ../shared/data/taobao-userbehavior-head --out /tmp/vm/tb

Prepares the dataset (max_len 50), trains each preset (models/*.json through `load_preset`) for
--epochs epochs, exports it in fp32, fp16 and int8, each optimised and plain (`--no-optimize`), with
the default verification (a variant that fails it is reported with its error, not left out), and prints
one markdown row per cell: the worst probability difference over the judged shapes and validation rows,
the validation AUC change against the fp32 torch model, the verdict. Everything goes to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from dataclasses import replace
from pathlib import Path

from din_export.config import load_preset
from din_export.export import export_run
from din_export.prepare import load_source, prepare
from din_export.train import train
from din_export.verify import VerifyError

PRESETS = ("paper", "official", "edge")
VARIANTS = {
    "fp32": {}, "fp32 plain": {"optimize": False},
    "fp16": {"precision": "fp16"}, "fp16 plain": {"precision": "fp16", "optimize": False},
    "int8": {"quantize": "int8"}, "int8 plain": {"quantize": "int8", "optimize": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("path", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, e.g. 'int8 plain'")
    args = parser.parse_args()
    data = args.out / "data"
    if not (data / "schema.json").is_file():
        with contextlib.redirect_stdout(io.StringIO()):
            prepare(load_source(args.source, args.path), data, max_len=50, seed=0)
    cells = []
    print("| preset | variant | max abs prob diff | valid AUC torch | AUC change | verdict | export s |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        model_cfg, train_cfg, _ = load_preset(preset)
        run = args.out / f"run-{preset}"
        if not (run / "model.safetensors").is_file():
            train(data, run, model_cfg, replace(train_cfg, epochs=args.epochs, threads=1), quiet=True)
        for name in args.variants.split(","):
            options = VARIANTS[name]
            out = args.out / f"{preset}-{name.replace(' ', '-')}"
            start = time.perf_counter()
            try:
                manifest = export_run(run, out, force=True, **options)
                report, error = manifest["parity"], None
            except VerifyError as e:
                report, error = e.report or {}, str(e)
            seconds = time.perf_counter() - start
            v = report.get("variant", {})
            validation = report.get("validation", {})
            judged = [r["prob"] for r in report.get("shapes", []) + [validation] if r and r.get("judged", True)]
            worst = v.get("max_abs_diff_prob", max((x for x in judged if x is not None), default=None))
            cell = {"preset": preset, "variant": name, "max_abs_diff_prob": worst,
                    "max_abs_diff_prob_candidates": v.get("max_abs_diff_prob_candidates"),
                    "auc_torch": validation.get("auc_torch"), "auc_change": validation.get("auc_change"),
                    "valid_rows": validation.get("rows"), "error": error, "seconds": seconds}
            cells.append(cell)
            verdict = "passed" if error is None else f"FAILED: {error}"
            print(f"| {preset} | {name} | {_num(worst, '.2e')} | {_num(cell['auc_torch'], '.5f')} | "
                  f"{_num(cell['auc_change'], '+.1e')} | {verdict} | {seconds:.0f} |", flush=True)
    (args.out / "matrix.json").write_text(json.dumps(cells, indent=1))


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


if __name__ == "__main__":
    main()
