"""`din-export export`: a trained run -> a verified ONNX model directory (din_export.export)."""

from __future__ import annotations

from pathlib import Path

import click
import onnx

from din_export.cli.common import CONTEXT_SETTINGS, library_errors
from din_export.cli.verify import tolerance_option
from din_export.export import (
    CANDIDATE_FILE,
    DEFAULT_OPSET,
    EXAMPLE_BATCH,
    EXAMPLE_SEQS,
    MIN_OPSET,
    SHORT_FILE,
    export_run,
)
from din_export.optimize import SHORT_HISTORY_WIDTH
from din_export.portable import PORTABLE_FILE
from din_export.verify import format_report


@click.command("export", context_settings=CONTEXT_SETTINGS)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--opset", default=DEFAULT_OPSET, show_default=True,
              type=click.IntRange(MIN_OPSET, onnx.defs.onnx_opset_version()),
              help="ONNX opset (why 18: docs/export.md).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: half-precision weights and arithmetic (for GPUs), fp32 inputs and outputs.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Static int8 quantisation of the constant weight matrices and their inputs, calibrated "
                   "on training rows (CPU; docs/export.md).")
@click.option("--with-attention", is_flag=True, help="Add the attention weights output (batch, seq).")
@click.option("--triton", "triton_repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write REPO/NAME/1/model.onnx and REPO/NAME/config.pbtxt for Triton.")
@click.option("--triton-name", default="din", show_default=True, help="Model name in the Triton repository.")
@click.option("--triton-portable", is_flag=True,
              help=f"With --triton: serve {PORTABLE_FILE} (raw ids, strings as TYPE_STRING) instead of model.onnx.")
@click.option("--no-optimize", is_flag=True, help="Export the plain model instead of the exact inference rewrite.")
@click.option("--no-candidate-graph", is_flag=True,
              help=f"Do not write {CANDIDATE_FILE}, the one-user x many-candidates graph (optimised exports only).")
@click.option("--short-graph", is_flag=True,
              help=f"Also write {SHORT_FILE}, a second copy of the model that the Scorer runs on CPU for batches up "
                   f"to {SHORT_HISTORY_WIDTH} positions wide: faster there, twice the memory (optimised fp32 "
                   "exports only; docs/runtime.md).")
@click.option("--no-portable-graph", is_flag=True,
              help=f"Do not write {PORTABLE_FILE}, the graph that takes raw ids (docs/export.md).")
@tolerance_option()
@click.option("--example-batch", type=int, default=None,
              help=f"Batch size to trace at (default {EXAMPLE_BATCH}; docs/export.md, step 4).")
@click.option("--example-seq", type=int, default=None,
              help=f"History length to trace at (default {EXAMPLE_SEQS[0]}, or {EXAMPLE_SEQS[1]} if that is max_len "
                   "or 2 max_len).")
@click.option("--force", is_flag=True, help="Replace an existing model directory / Triton model.")
def export_command(run_dir: Path, out: Path, opset: int, precision: str, quantize: str | None, with_attention: bool,
                   triton_repo: Path | None, triton_name: str, triton_portable: bool, no_optimize: bool,
                   no_candidate_graph: bool, short_graph: bool, no_portable_graph: bool,
                   tolerance: dict[str, float] | None,
                   example_batch: int | None, example_seq: int | None, force: bool) -> None:
    """Export RUN_DIR to an ONNX model directory, verified against torch before it is written.

    \b
    Verification's tolerance policy (each bound replaceable with --tolerance NAME=VALUE):
      fp32  prob 1e-5, logit_rel 1e-5, auc_drop 1e-4   every history length
      fp16  prob 1e-3, logit_rel 1e-2, auc_drop 1e-3   histories up to max_len
      int8  prob 5e-2, logit_rel -,    auc_drop 2e-3   histories up to max_len
    Longer histories than judged are still scored and must be finite (din-score keeps the last max_len).
    """
    example = None if example_batch is None and example_seq is None else (example_batch, example_seq)
    with library_errors():
        manifest = export_run(run_dir, out, opset=opset, precision=precision, quantize=quantize,
                              with_attention=with_attention, optimize=not no_optimize, tolerance=tolerance,
                              triton_repo=triton_repo, triton_name=triton_name, force=force,
                              candidates=not no_candidate_graph, portable=not no_portable_graph,
                              short_history=short_graph, triton_portable=triton_portable, example=example)
    click.echo(format_report(manifest["parity"]))
    click.echo(f"wrote {out} (sha256 {manifest['sha256'][:16]}...)")
    if triton_repo is not None:
        click.echo(f"wrote {Path(triton_repo) / triton_name}")
