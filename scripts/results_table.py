"""Markdown tables of finished `din-export train` runs (their metrics.json), as in results/training.md.

    python scripts/results_table.py "MovieLens-100K, seed 0/base=RUN_DIR" "MovieLens-100K, seed 0/din=RUN_DIR" ...
        [--mean "MovieLens-100K, seeds 0-2" --mean-of "MovieLens-100K, seed"]

Each argument is DATASET/MODEL=RUN_DIR. A row whose model is not `base` also gets RelaImpr against the
`base` row of the same dataset: ((X - 0.5) / (X_base - 0.5) - 1) x 100%, for test GAUC and test AUC.
With --mean-of PREFIX, a last table averages valid and test GAUC per model over the datasets whose
name starts with PREFIX, with each one's figure in brackets.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def rela_impr(x: float, base: float) -> str:
    value = ((x - 0.5) / (base - 0.5) - 1) * 100
    return f"{value:+.2f}%".replace("-", "−")


@click.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--mean-of", default=None, help="Average per model over the datasets starting with this prefix.")
@click.option("--mean", "mean_label", default="mean", show_default=True, help="Dataset name of the averaged rows.")
def main(runs: tuple[str, ...], mean_of: str | None, mean_label: str) -> None:
    rows: list[tuple[str, str, dict]] = []
    for arg in runs:
        label, sep, run_dir = arg.rpartition("=")
        dataset, _, model = label.rpartition("/")
        if not sep or not dataset or not model:
            raise click.BadParameter(f"expected DATASET/MODEL=RUN_DIR, got {arg!r}")
        rows.append((dataset, model, json.loads((Path(run_dir) / "metrics.json").read_text())))
    base = {d: m for d, model, m in rows if model == "base"}
    click.echo("| dataset | model | best epoch | valid GAUC | test AUC | test GAUC | test logloss "
               "| RelaImpr (GAUC) | RelaImpr (AUC) |\n|---|---|---|---|---|---|---|---|---|")
    for dataset, model, m in rows:
        t = m["test"]
        impr = ["", ""]
        if model != "base" and dataset in base:
            b = base[dataset]["test"]
            impr = [rela_impr(t["gauc"], b["gauc"]), rela_impr(t["auc"], b["auc"])]
        click.echo(f"| {dataset} | {model} | {m['best_epoch']} of {m['epochs_run']} | {m['valid']['gauc']:.4f} "
                   f"| {t['auc']:.4f} | {t['gauc']:.4f} | {t['logloss']:.4f} | {impr[0]} | {impr[1]} |")
    if mean_of is None:
        return
    click.echo("\n| dataset | model | valid GAUC | test GAUC |\n|---|---|---|---|")
    for model in dict.fromkeys(model for _, model, _ in rows):
        picked = [m for d, mo, m in rows if mo == model and d.startswith(mean_of)]
        if not picked:
            continue
        cells = []
        for key in ("valid", "test"):
            values = [m[key]["gauc"] for m in picked]
            each = ", ".join(f"{v:.4f}" for v in values)
            cells.append(f"{sum(values) / len(values):.4f} ({each})")
        click.echo(f"| {mean_label} | {model} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
