"""`din-export predict`: score a file of raw requests with a run's torch model, written as din-score writes."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from itertools import islice
from pathlib import Path

import click
from din_runtime.errors import DinRuntimeError
from din_runtime.features import Features
from din_runtime.io import OUTPUT_FORMATS, AtomicText, ScoreWriter, format_of, read_jsonl

from din_export.checkpoints import load_run
from din_export.cli.common import CONTEXT_SETTINGS
from din_export.data import DataError
from din_export.predict import score_records


@click.command("predict", context_settings=CONTEXT_SETTINGS)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("requests", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-o", "--out", "--output", "output", required=True,
              help="Scores file (.jsonl or .csv; - is stdout), as din-score writes.")
@click.option("--output-format", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True,
              help="Output format; auto goes by extension (stdout: jsonl), as in din-score.")
@click.option("--id-field", help="Request field copied to each output row beside its score.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Requests encoded and scored per forward pass.")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset directory whose vocabularies encode the requests (default: the run's).")
def predict_command(run_dir: Path, requests: str, output: str, output_format: str, id_field: str | None,
                    batch_size: int, data_dir: Path | None) -> None:
    """Score the raw requests of REQUESTS (JSONL, docs/design.md "Request format") with RUN_DIR's torch model.

    Same encoder and output format as `din-score`, so its output can be compared line by line with it.
    """
    try:
        model, schema, config = load_run(run_dir)
        features = Features.of_dataset(Path(data_dir or config["data_dir"]), schema)
        out_fmt = format_of(output, output_format, OUTPUT_FORMATS, "jsonl", "--output-format")
        with ExitStack() as stack:
            stream = sys.stdin.buffer if requests == "-" else stack.enter_context(open(requests, "rb"))
            writer = ScoreWriter(stack.enter_context(AtomicText(output)), out_fmt, id_field)
            records = read_jsonl(stream)
            while batch := list(islice(records, batch_size)):
                writer.write(*score_records(model, features, batch, id_field))
    except (DataError, FileNotFoundError, DinRuntimeError) as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:
        raise click.ClickException(f"{e.filename or 'I/O'}: {e.strerror or e}") from e
