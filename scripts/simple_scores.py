"""Non-learned scores on a prepared dataset: how much of a split's GAUC needs no model at all.

    python scripts/simple_scores.py DATA_DIR [DATA_DIR ...] [--split valid --split test]

Scores, each computed from the train split only and applied to the held-out rows:
- item-rate:  the target item's smoothed training click rate, (clicks + 1) / (rows + 2)
- item-count: how often the target item occurs in train (targets and histories: freq/item_id.npy)
- oov:        1 if the target item is out of the training vocabulary (a leak detector: an honest split
              gives about 0.5)
- cate-match: how many of the row's history behaviours share the target's category

Prints one Markdown row per dataset, split and score: GAUC (din_runtime.metrics) and AUC.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from din_runtime.metrics import auc, gauc

from din_export.data import load_schema, load_split
from din_export.schema import OOV_INDEX, PAD_INDEX


def scores(data_dir: Path, split: str) -> dict[str, np.ndarray]:
    schema = load_schema(data_dir)
    train, held = load_split(data_dir, "train", schema), load_split(data_dir, split, schema)
    size = schema.vocab_sizes["item_id"]
    rows = np.bincount(train["item_id"], minlength=size)
    clicks = np.bincount(train["item_id"], weights=train["label"], minlength=size)
    item_freq = np.load(data_dir / "freq" / "item_id.npy")
    real = np.arange(held["hist_cate_id"].shape[1])[None, :] < held["hist_len"][:, None]
    same = (held["hist_cate_id"] == held["cate_id"][:, None]) & real & (held["cate_id"][:, None] != PAD_INDEX)
    return {
        "item-rate": (clicks[held["item_id"]] + 1) / (rows[held["item_id"]] + 2),
        "item-count": item_freq[held["item_id"]].astype(np.float64),
        "oov": (held["item_id"] == OOV_INDEX).astype(np.float64),
        "cate-match": same.sum(axis=1).astype(np.float64),
    }


@click.command()
@click.argument("data_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", "splits", multiple=True, default=("valid",), show_default=True,
              type=click.Choice(["valid", "test"]))
def main(data_dirs: tuple[Path, ...], splits: tuple[str, ...]) -> None:
    click.echo("| dataset | split | score | GAUC | AUC |\n|---|---|---|---|---|")
    for data_dir in data_dirs:
        for split in splits:
            held = load_split(data_dir, split, load_schema(data_dir))
            for name, s in scores(data_dir, split).items():
                click.echo(f"| {data_dir.name} | {split} | {name} | {gauc(held['label'], s, held['group']):.4f} "
                           f"| {auc(held['label'], s):.4f} |")


if __name__ == "__main__":
    main()
