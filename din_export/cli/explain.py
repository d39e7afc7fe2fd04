"""`din-export explain`: the attention over one request's history (din_export.explain), and reading that
request from the command line (inline JSON or a line of a JSONL file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from din_runtime.errors import DinRuntimeError, InputError
from din_runtime.features import Features
from din_runtime.fs import write_bytes_atomic
from din_runtime.io import read_jsonl

from din_export.cli.common import CONTEXT_SETTINGS, library_errors
from din_export.explain import explain_request, format_table, plot_attention


def read_request(source: str, line: int | None) -> tuple[dict[str, Any], str]:
    """(row, where) from an inline JSON object or a JSONL file ('-': stdin), at `line` or its first row."""
    if source.lstrip().startswith("{"):
        if line is not None:
            raise click.UsageError("--line applies to a requests file, not to an inline JSON request")
        try:
            row = json.loads(source)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not valid JSON: {e}", param_hint="REQUEST") from None
        if not isinstance(row, dict):
            raise click.BadParameter("expected a JSON object", param_hint="REQUEST")
        return row, "the request"
    path = Path(source)
    if source != "-" and not path.is_file():
        raise click.BadParameter(f"{source!r} is neither a JSON object nor a file", param_hint="REQUEST")
    with (sys.stdin.buffer if source == "-" else path.open("rb")) as stream:
        for record in read_jsonl(stream):
            if line is not None and record.line != line:
                if record.line > line:
                    break
                continue
            if record.error is not None:
                field = f", field {record.field!r}" if record.field else ""
                raise click.ClickException(f"{source} line {record.line}{field}: {record.error}")
            return record.row, f"{source} line {record.line}"
    raise click.ClickException(f"{source} has no request on line {line}" if line is not None
                               else f"{source} holds no request")


@click.command("explain", context_settings=CONTEXT_SETTINGS)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("request", metavar="REQUEST_JSON_OR_FILE")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw the weights as a PNG bar chart here.")
@click.option("--line", type=click.IntRange(min=1),
              help="Line of the requests file to explain (default: its first request).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset directory whose vocabularies encode the request (default: the run's).")
def explain_command(run_dir: Path, request: str, out: Path | None, line: int | None, data_dir: Path | None) -> None:
    """Print the attention weight of each history item of one request (docs/design.md "Request format").

    \b
    REQUEST_JSON_OR_FILE is a JSON object or a JSONL file ("-": stdin):
      din-export explain RUN requests.jsonl --line 3 --out attention.png
    """
    from din_export.checkpoints import load_run
    from din_export.verify import resolve_data_dir

    row, where = read_request(request, line)
    try:
        model, schema, config = load_run(run_dir)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise click.ClickException(f"cannot load the run {run_dir}: {e}") from e
    try:
        with library_errors():
            features = Features.of_dataset(data_dir or resolve_data_dir(run_dir, config), schema)
            explanation = explain_request(model, features, row)
    except InputError as e:
        field = f", field {e.field!r}" if e.field else ""
        raise click.ClickException(f"{where}{field}: {e.reason}") from None
    except DinRuntimeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(format_table(explanation))
    if out is not None:
        if not len(explanation.weights):
            raise click.ClickException(f"{where} has an empty history: there is no attention to draw")
        target = ", ".join(f"{k} {v}" for k, v in explanation.target.items())
        title = f"{where}: target {target}, p(click) {explanation.prob:.3f}"
        try:
            write_bytes_atomic(out, plot_attention(explanation, title))
        except OSError as e:
            raise click.ClickException(f"cannot write {out}: {e.strerror or e}") from None
        click.echo(f"wrote {out}")
