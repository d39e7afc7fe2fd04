"""`din-export explain`: how much DIN's attention weighs each history item of one request.

The request is encoded by din_runtime's encoder with the run's vocabularies, exactly as `din-score`
would encode it, and scored by the torch model with `return_attention=True`. The weights are therefore
the ones that produced the score: w_j = a(e_j, v_A), the paper's local activation (not normalised
unless the run uses the official code's softmax), with the most recent `max_len` items kept.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from din_runtime.encode import encode_rows
from din_runtime.errors import DinRuntimeError, InputError
from din_runtime.features import Features
from din_runtime.io import read_jsonl

from din_export.cli import CONTEXT_SETTINGS
from din_export.data import DataError
from din_export.model import DIN
from din_export.schema import OOV_INDEX, write_bytes_atomic

BAR_WIDTH = 30


@dataclass(frozen=True)
class Explanation:
    """One request's attention. `history` maps each history field to the raw ids the model saw."""

    prob: float
    attention_norm: str
    target: dict[str, str]
    history: dict[str, list[str]]
    weights: np.ndarray  # (n,), oldest first
    unseen: np.ndarray  # (n,) bool: the item id was not in the vocabulary (it got the OOV embedding)
    matches: dict[str, np.ndarray]  # history field -> (n,) bool: same known id as the target's
    dropped: int  # older history items beyond max_len, never seen by the model


def _shown(value: Any) -> str:
    # The encoder accepts integral floats as ids (242.0 is id "242"); show them the way they were looked up.
    return str(int(value)) if isinstance(value, float) else str(value)


@torch.no_grad()
def explain_request(model: DIN, features: Features, row: dict[str, Any]) -> Explanation:
    """Score one raw request and return its attention weights (InputError for a bad field)."""
    if model.attention is None:
        raise DataError("this run is the base model: sum pooling weighs every history item 1, there is no "
                        "attention to explain (train with --model din)")
    arrays = encode_rows(features, [row]).arrays
    behaviour = features.spec.behaviour
    n = int(arrays["hist_len"][0])
    logits, weights = model({k: torch.from_numpy(v) for k, v in arrays.items()}, return_attention=True)
    item = behaviour[0]
    total = len(row[item.history])
    return Explanation(
        prob=float(torch.sigmoid(logits)[0]),
        attention_norm=model.cfg.attention_norm,
        target={b.target: _shown(row[b.target]) for b in behaviour},
        history={b.history: [_shown(v) for v in list(row[b.history])[total - n:]] for b in behaviour},
        weights=weights[0, :n].numpy().astype(np.float64),
        unseen=arrays[item.history][0, :n] == OOV_INDEX,
        matches={b.history: (arrays[b.history][0, :n] == arrays[b.target][0]) & (arrays[b.target][0] != OOV_INDEX)
                 for b in behaviour},
        dropped=total - n,
    )


def _bar(weight: float, scale: float) -> str:
    # '#' for positive and '-' for negative weights: the paper's weights are not normalised and may be < 0.
    length = round(abs(weight) / scale * BAR_WIDTH) if scale > 0 else 0
    return ("#" if weight >= 0 else "-") * length


def format_table(e: Explanation) -> str:
    """A text table, oldest item first; '*' marks a history id equal to the target's."""
    target = "  ".join(f"{k}={v}" for k, v in e.target.items())
    lines = [f"target {target}  p(click) {e.prob:.4f}  attention: {e.attention_norm}"]
    n = len(e.weights)
    if n == 0:
        lines.append("empty history: the attention-pooled interest vector is zero")
        return "\n".join(lines)
    fields = list(e.history)
    cells = [[f"{ids[i]}{'*' if e.matches[f][i] else ''}{' (unseen)' if f == fields[0] and e.unseen[i] else ''}"
              for f, ids in e.history.items()] for i in range(n)]
    widths = [max(len(f), *(len(c[j]) for c in cells)) for j, f in enumerate(fields)]
    scale = float(np.abs(e.weights).max())
    header = ["#".rjust(3), *(f.ljust(w) for f, w in zip(fields, widths, strict=True)), "weight".rjust(9)]
    lines.append("  ".join(header))
    for i in range(n):
        row = [str(i + 1).rjust(3), *(c.ljust(w) for c, w in zip(cells[i], widths, strict=True)),
               f"{e.weights[i]:9.4f}", _bar(e.weights[i], scale)]
        lines.append("  ".join(row))
    kept = f"{n} history items, oldest first"
    if e.dropped:
        kept += f" (the {e.dropped} older ones are beyond max_len and were not seen)"
    lines.append(f"{kept}; sum of weights {e.weights.sum():.4f}; * = same id as the target")
    return "\n".join(lines)


def plot_attention(e: Explanation, title: str) -> bytes:
    """A horizontal bar chart (PNG bytes), oldest item at the top, bars coloured where the item's category
    (the second behaviour field, or the item itself when there is only one) equals the target's."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    fields = list(e.history)
    key = fields[1] if len(fields) > 1 else fields[0]
    name = list(e.target)[fields.index(key)]
    n = len(e.weights)
    labels = [" · ".join(e.history[f][i] for f in fields) for i in range(n)]
    colours = np.where(e.matches[key], "tab:orange", "tab:blue")
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.26 * n))
    ax.barh(np.arange(n), e.weights, color=colours)
    ax.set_yticks(np.arange(n), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("attention weight" + (" (softmax)" if e.attention_norm == "softmax" else " (paper: not normalised)"))
    ax.set_ylabel("history, oldest at the top")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Patch(color="tab:orange", label=f"same {name} as the target"),
                       Patch(color="tab:blue", label=f"other {name}")], fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


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
    from din_export.train import load_run
    from din_export.verify import resolve_data_dir

    row, where = read_request(request, line)
    try:
        model, schema, config = load_run(run_dir)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise click.ClickException(f"cannot load the run {run_dir}: {e}") from e
    try:
        features = Features.of_dataset(data_dir or resolve_data_dir(run_dir, config), schema)
        explanation = explain_request(model, features, row)
    except InputError as e:
        field = f", field {e.field!r}" if e.field else ""
        raise click.ClickException(f"{where}{field}: {e.reason}") from None
    except (DataError, DinRuntimeError) as e:
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
