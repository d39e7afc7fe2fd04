"""`din-export portable`: add portable.onnx (raw ids in) to a model directory (din_export.portable)."""

from __future__ import annotations

from pathlib import Path

import click

from din_export.cli.common import CONTEXT_SETTINGS, library_errors
from din_export.portable import PORTABLE_FILE, add_portable


@click.command("portable", context_settings=CONTEXT_SETTINGS)
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Rebuild portable.onnx if the directory already has one.")
def portable_command(model_dir: Path, force: bool) -> None:
    """Add portable.onnx (raw ids in, probability out) to an exported MODEL_DIR, checked against Scorer.score."""
    with library_errors():
        entry = add_portable(model_dir, force=force)
    check = entry["check"]
    click.echo(f"portable.onnx vs Scorer.score: {check['rows']} raw rows in {len(check['cases'])} batches, "
               f"max abs diff prob {check['max_abs_diff_prob']:.2e}, oov counts equal")
    click.echo(f"wrote {model_dir / PORTABLE_FILE} ({(model_dir / PORTABLE_FILE).stat().st_size:,} bytes, "
               f"sha256 {entry['sha256'][:16]}...) and its manifest entry")
