"""`din-score MODEL_DIR INPUT`: score request rows from JSONL, CSV or Parquet with an exported model.

Streams the input in batches. A bad row stops the run (default) with the file, line and field, leaving no
output file; with `--on-error skip --errors FILE` it is written to FILE instead, so rows read = scored +
rejected. Summary, OOV counts and (with `--label-field`) AUC, GAUC and logloss go to stderr.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import islice
from pathlib import Path
from typing import Any

import click
import numpy as np
from din_runtime import __version__
from din_runtime.arrow import ArrowEncoder, oov_per_field, valid_text
from din_runtime.encode import Encoded
from din_runtime.errors import DinRuntimeError, InputError
from din_runtime.fs import write_json_atomic
from din_runtime.io import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    AtomicText,
    InputFileError,
    Record,
    ScoreWriter,
    format_of,
    id_problem,
    parquet_records,
    read_csv,
    read_jsonl,
    read_parquet_batches,
    write_error,
)
from din_runtime.metrics import auc, gauc, logloss
from din_runtime.scorer import Scorer


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-o", "--out", "--output", "output", default="-", show_default=True,
              help="Scores file (.jsonl or .csv); - is stdout.")
@click.option("--format", "input_format", type=click.Choice(["auto", "jsonl", "csv", "parquet"]), default="auto",
              show_default=True, help="Input format; auto goes by extension (stdin: jsonl).")
@click.option("--output-format", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True,
              help="Output format; auto goes by extension (stdout: jsonl).")
@click.option("--list-sep", default="|", show_default=True, help="Separator of history items in CSV cells.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Rows encoded and scored per onnxruntime call; memory stays bounded by it.")
@click.option("--id-field", help="Input field copied to each output row beside its score.")
@click.option("--label-field", help="0/1 field: report AUC, GAUC (by the schema's group) and logloss.")
@click.option("--metrics-out", type=click.Path(dir_okay=False), help="Also write the metrics as JSON here.")
@click.option("--on-error", type=click.Choice(["stop", "skip"]), default="stop", show_default=True,
              help="stop at the first bad row, or skip bad rows (needs --errors).")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False),
              help="JSONL file receiving each rejected row (line, field, error, raw).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="cuda needs onnxruntime-gpu (the gpu extra); auto takes cuda when it is available.")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads (default: all cores).")
@click.option("--no-short-graph", is_flag=True,
              help="With --threads 1, do not load the model directory's short-history graph (docs/runtime.md).")
@click.version_option(__version__, prog_name="din-score")
def main(model_dir: Path, input_path: str, output: str, input_format: str, output_format: str, list_sep: str,
         batch_size: int, id_field: str | None, label_field: str | None, metrics_out: str | None, on_error: str,
         errors_path: str | None, device: str, threads: int | None, no_short_graph: bool) -> None:
    """Score the request rows of INPUT (JSONL, CSV or Parquet; - is stdin) with the model in MODEL_DIR."""
    if (on_error == "skip") != (errors_path is not None):
        raise click.UsageError("--on-error skip and --errors FILE go together: skipped rows must be kept somewhere")
    if metrics_out and not label_field:
        raise click.UsageError("--metrics-out needs --label-field")
    if not list_sep:
        raise click.UsageError("--list-sep must not be empty")
    named = [p for p in (output, errors_path, metrics_out) if p and p != "-"]
    if len({Path(p).resolve() for p in named}) != len(named) or (
            input_path != "-" and Path(input_path).resolve() in {Path(p).resolve() for p in named}):
        raise click.UsageError("INPUT, --output, --errors and --metrics-out must be different files")
    if errors_path == "-" or metrics_out == "-":
        raise click.UsageError("--errors and --metrics-out need file paths (stdout carries the scores)")
    # `kill` (SIGTERM) should unwind like an error, so the temporary output files are removed.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        in_fmt = format_of(input_path, input_format, INPUT_FORMATS, "jsonl", "--format")
        out_fmt = format_of(output, output_format, OUTPUT_FORMATS, "jsonl", "--output-format")
        scorer = Scorer.load(model_dir, device=device, threads=threads, short_history=not no_short_graph)
        _Run(scorer, in_fmt, out_fmt, list_sep, batch_size, id_field, label_field, on_error).run(
            input_path, output, errors_path, metrics_out)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except DinRuntimeError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.filename or 'I/O'}: {e.strerror or e}") from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class _BadRow(DinRuntimeError):
    """A bad row in stop mode: the message names its line and field; `run` adds the input file."""


class _Run:
    """One din-score run: its options and its counters."""

    def __init__(self, scorer: Scorer, in_fmt: str, out_fmt: str, list_sep: str, batch_size: int,
                 id_field: str | None, label_field: str | None, on_error: str) -> None:
        self.scorer, self.in_fmt, self.out_fmt, self.list_sep = scorer, in_fmt, out_fmt, list_sep
        self.batch_size, self.id_field, self.label_field = batch_size, id_field, label_field
        self.skip = on_error == "skip"
        self.where = "row" if in_fmt == "parquet" else "line"
        self.read = self.scored = self.rejected = 0
        self.oov: Counter[str] = Counter()
        self.labels: list[float] = []
        self.groups: list[str] = []
        self.scores: list[np.ndarray] = []
        self._encoder: ArrowEncoder | None = None  # built at the first Parquet batch

    def run(self, input_path: str, output: str, errors_path: str | None, metrics_out: str | None) -> None:
        start = time.perf_counter()
        progress = sys.stderr.isatty()
        with ExitStack() as stack:
            stream = sys.stdin.buffer if input_path == "-" else stack.enter_context(open(input_path, "rb"))
            out = stack.enter_context(AtomicText(output))
            errors = stack.enter_context(AtomicText(errors_path)) if errors_path else None
            writer = ScoreWriter(out, self.out_fmt, self.id_field)
            try:
                for batch in self._batches(stream):
                    if isinstance(batch, list):
                        self._score_records(batch, writer, errors)
                    elif not self._score_columns(batch[1], writer):  # Parquet: (first row number, Arrow batch)
                        self._score_records(parquet_records(*batch), writer, errors)
                    if progress:
                        rate = self.read / max(time.perf_counter() - start, 1e-9)
                        click.echo(f"\r{self.read} rows, {rate:,.0f} rows/s", nl=False, err=True)
            except (InputFileError, _BadRow) as e:
                # The line alone is ambiguous in a pipeline scoring many files; model and output errors name
                # their own files, so only input problems get the input's name.
                raise type(e)(f"{'<stdin>' if input_path == '-' else input_path}: {e}") from None
            if progress:
                click.echo(err=True)
        seconds = time.perf_counter() - start
        oov = ", ".join(f"{k} {v}" for k, v in self.oov.items() if v) or "none"
        click.echo(f"din-score: {self.read} rows read, {self.scored} scored, {self.rejected} rejected in "
                   f"{seconds:.2f} s ({self.read / max(seconds, 1e-9):,.0f} rows/s); OOV ids: {oov}", err=True)
        if self.label_field:
            self._report_metrics(metrics_out)

    def _batches(self, stream: Any) -> Iterator[list[Record] | tuple[int, Any]]:
        """Lists of `batch_size` Records (JSONL, CSV), or (first row number, Arrow batch) for Parquet."""
        m = self.scorer.manifest
        if self.in_fmt == "parquet":
            source = io.BytesIO(stream.read()) if stream is sys.stdin.buffer else stream
            yield from read_parquet_batches(source, self.batch_size)
            return
        if self.in_fmt == "jsonl":
            records = read_jsonl(stream)
        else:
            numbers = list(m.dense) + ([self.label_field] if self.label_field else [])
            records = read_csv(stream, m.histories, numbers, self.list_sep)
        while batch := list(islice(records, self.batch_size)):
            yield batch

    def _score_records(self, batch: list[Record], writer: ScoreWriter, errors: AtomicText | None) -> None:
        good, encoded, bad = self._split(batch)
        for record, field, reason in bad:
            write_error(errors, record, field, reason)
        self.rejected += len(bad)
        self.read += len(batch)
        if good:
            self._score(good, encoded, writer)

    def _score_columns(self, batch: Any, writer: ScoreWriter) -> bool:
        """Score a Parquet batch on its Arrow columns (din_runtime.arrow) and return True, or return False,
        scoring nothing, when a value needs the row path's checks: every row then gets its verdict there."""
        if self._encoder is None:
            self._encoder = ArrowEncoder(self.scorer.manifest)
        arrays = self._encoder.inputs(batch)
        if arrays is None:
            return False
        ids = labels = groups = None
        if self.id_field:
            column = _column(batch, self.id_field)
            if column is None or not _plain_ids(column) or not valid_text(batch, [self.id_field]):
                return False
            ids = column.to_pylist()
        if self.label_field:
            label, group = _column(batch, self.label_field), _column(batch, self.scorer.manifest.group)
            if label is None or group is None or not _zero_one(label):
                return False
            labels = [float(v) for v in label.to_pylist()]
            groups = [str(v) for v in group.to_pylist()]
        probs = self.scorer.score_arrays(arrays)
        self.oov.update(oov_per_field(self.scorer.manifest, arrays))
        self.read += batch.num_rows
        self.scored += batch.num_rows
        writer.write(ids, probs)
        if self.label_field:
            self.labels.extend(labels)
            self.groups.extend(groups)
            self.scores.append(probs)
        return True

    def _split(self, batch: list[Record]) -> tuple[list[Record], Encoded | None, list[tuple[Record, Any, str]]]:
        """Rows that encode and their encoding, and (record, field, reason) of the others (stop mode raises)."""
        bad = [(r, r.field, r.error) for r in batch if r.error is not None]
        good = []
        for r in batch:
            if r.error is None:
                problem = self._passthrough_problem(r.row)
                if problem:
                    bad.append((r, *problem))
                else:
                    good.append(r)
        encoded = None
        try:
            encoded = self.scorer.encode([r.row for r in good])
        except InputError as e:
            if not self.skip:
                bad.append((good[e.row], e.field, e.reason))
            else:
                # Rare path: find every bad row of the batch, then encode the rest together.
                still_good = []
                for r in good:
                    try:
                        self.scorer.encode([r.row])
                        still_good.append(r)
                    except InputError as one:
                        bad.append((r, one.field, one.reason))
                good = still_good
                encoded = self.scorer.encode([r.row for r in good])
        if bad and not self.skip:
            record, field, reason = min(bad, key=lambda b: b[0].line)
            where = f"{self.where} {record.line}" + (f", field {field!r}" if field else "")
            raise _BadRow(f"{where}: {reason} (use --on-error skip --errors FILE to set bad rows aside)")
        bad.sort(key=lambda b: b[0].line)
        return good, encoded, bad

    def _passthrough_problem(self, row: dict[str, Any]) -> tuple[str, str] | None:
        if self.id_field:
            if self.id_field not in row:
                return self.id_field, "missing (named by --id-field)"
            problem = id_problem(row[self.id_field])
            if problem:
                return self.id_field, problem
        if self.label_field:
            label = row.get(self.label_field)
            if label is None:
                return self.label_field, "missing (named by --label-field)"
            if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (0, 1):
                return self.label_field, f"label must be 0 or 1, got {label!r:.40}"
            if self.scorer.manifest.group not in row:
                return self.scorer.manifest.group, "missing (the group field for GAUC)"
        return None

    def _score(self, good: list[Record], encoded: Encoded, writer: ScoreWriter) -> None:
        rows = [r.row for r in good]
        probs = self.scorer.score_arrays(encoded.arrays)
        self.oov.update(encoded.oov)
        self.scored += len(rows)
        writer.write([row[self.id_field] for row in rows] if self.id_field else None, probs)
        if self.label_field:
            group = self.scorer.manifest.group
            self.labels.extend(float(row[self.label_field]) for row in rows)
            self.groups.extend(str(row[group]) for row in rows)
            self.scores.append(probs)

    def _report_metrics(self, metrics_out: str | None) -> None:
        report: dict[str, Any] = {"rows": len(self.labels), "positives": int(sum(self.labels)),
                                  "auc": None, "gauc": None, "logloss": None}
        if self.labels:
            scores = np.concatenate(self.scores).astype(np.float64)
            values = {"auc": auc(self.labels, scores), "gauc": gauc(self.labels, scores, np.array(self.groups)),
                      "logloss": logloss(self.labels, scores)}
            report.update({k: None if np.isnan(v) else v for k, v in values.items()})
        shown = "  ".join(f"{name} " + ("n/a" if report[k] is None else f"{report[k]:.4f}")
                          for k, name in (("auc", "AUC"), ("gauc", "GAUC"), ("logloss", "logloss")))
        click.echo(f"din-score: {shown} over {report['rows']} labelled rows", err=True)
        if metrics_out:
            write_json_atomic(metrics_out, report)


def _column(batch: Any, name: str) -> Any:
    """`name`'s column of an Arrow batch, or None if it has none."""
    return batch.column(name) if name in batch.schema.names else None


def _plain_ids(column: Any) -> bool:
    """Ids `id_problem` passes whatever their value: strings or integers, no nulls (a float id may be NaN,
    which the row path rejects)."""
    import pyarrow as pa

    return not column.null_count and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                                      or pa.types.is_integer(column.type))


def _zero_one(column: Any) -> bool:
    """Labels the row path would take: integers or floats (not booleans), no nulls, each 0 or 1."""
    import pyarrow as pa

    if column.null_count or not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return False
    return bool(np.isin(column.to_numpy(zero_copy_only=False), (0, 1)).all())
