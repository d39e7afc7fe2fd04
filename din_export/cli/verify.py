"""`din-export verify`: check an exported model directory against its torch run (din_export.verify), and
the `--tolerance` option it shares with `export`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from din_runtime.fs import write_json_atomic

from din_export.checkpoints import load_run
from din_export.cli.common import CONTEXT_SETTINGS, library_errors
from din_export.verify import (
    DEFAULT_VALID_ROWS,
    VerifyError,
    format_report,
    parse_tolerance,
    resolve_data_dir,
    verify_model_dir,
)

TOLERANCE_HELP = ("A bound of the variant's tolerance policy, NAME=VALUE with NAME one of prob (max abs "
                  "probability difference), logit_rel (max relative logit difference), auc_drop (most the "
                  "validation AUC may fall); a bare number sets prob. Repeatable. Defaults per variant: "
                  "fp32 prob 1e-5, logit_rel 1e-5, auc_drop 1e-4 at every history length; fp16 1e-3, 1e-2, "
                  "1e-3 and int8 5e-2, none, 2e-3, judged at histories up to max_len (docs/export.md).")


def _tolerance(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, float] | None:
    if not values:
        return None
    with library_errors():
        return parse_tolerance(values)


def tolerance_option() -> Callable[[Any], Any]:
    """The `--tolerance NAME=VALUE` option, parsed into {name: bound} (None when not given)."""
    return click.option("--tolerance", metavar="[NAME=]VALUE", multiple=True, help=TOLERANCE_HELP,
                        callback=_tolerance)


@click.command("verify", context_settings=CONTEXT_SETTINGS)
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@tolerance_option()
@click.option("--valid-rows", type=click.IntRange(min=1), default=DEFAULT_VALID_ROWS, show_default=True,
              help="Validation rows to score (the first N).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as JSON here.")
def verify_command(model_dir: Path, run_dir: Path, tolerance: dict[str, float] | None, valid_rows: int,
                   report_path: Path | None) -> None:
    """Check MODEL_DIR against the torch model of RUN_DIR at many shapes and on the validation split.

    \b
    Tolerance policy (each bound replaceable with --tolerance NAME=VALUE):
      fp32  prob 1e-5, logit_rel 1e-5, auc_drop 1e-4   every history length
      fp16  prob 1e-3, logit_rel 1e-2, auc_drop 1e-3   histories up to max_len
      int8  prob 5e-2, logit_rel -,    auc_drop 2e-3   histories up to max_len
    Longer histories than judged are still scored and must be finite (din-score keeps the last max_len).
    """
    try:
        model, schema, config = load_run(run_dir)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise click.ClickException(f"cannot load the run {run_dir}: {e}") from e
    with library_errors():
        data_dir = resolve_data_dir(run_dir, config)
        try:
            report = verify_model_dir(model_dir, model, schema, data_dir, tolerance=tolerance,
                                      valid_rows=valid_rows)
        except VerifyError as e:
            if e.report is not None:
                click.echo(format_report(e.report))
                if report_path is not None:
                    write_json_atomic(report_path, e.report)
            raise
    click.echo(format_report(report))
    if report_path is not None:
        write_json_atomic(report_path, report)
    click.echo(json.dumps(report["variant"]))
