"""`din-export evaluate`: a run's metrics on a dataset's validation and test splits, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from din_export.cli.common import CONTEXT_SETTINGS
from din_export.data import DataError
from din_export.evaluate import evaluate_run, format_metrics
from din_export.schema import write_json_atomic


@click.command("evaluate", context_settings=CONTEXT_SETTINGS)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", "split_names", type=click.Choice(["valid", "test"]), multiple=True,
              help="Splits to score (default: valid and test).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Rows per forward pass; memory grows with it.")
@click.option("--metrics-out", "--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Also write the metrics as JSON to this file ('-': stdout instead of the table).")
def evaluate_command(run_dir: Path, data_dir: Path, split_names: tuple[str, ...], batch_size: int,
                     json_out: Path | None) -> None:
    """Score DATA_DIR's validation and test splits with RUN_DIR's best model: AUC, GAUC, logloss."""
    try:
        result = evaluate_run(run_dir, data_dir, split_names or ("valid", "test"), batch_size)
    except (DataError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    if json_out is not None and str(json_out) == "-":
        click.echo(json.dumps(result, indent=2))
        return
    for split in split_names or ("valid", "test"):
        click.echo(f"{split:5s}  {format_metrics(result[split])}  ({result[split]['rows']} rows)")
    if json_out is not None:
        write_json_atomic(json_out, result)
