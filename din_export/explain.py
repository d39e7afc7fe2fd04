"""`din-export explain`: how much DIN's attention weighs each history item of one request.

The request is encoded by din_runtime's encoder with the run's vocabularies, exactly as `din-score`
would encode it, and scored by the torch model with `return_attention=True`. The weights are therefore
the ones that produced the score: w_j = a(e_j, v_A), the paper's local activation (not normalised
unless the run uses the official code's softmax), with the most recent `max_len` items kept.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from din_runtime.encode import encode_rows
from din_runtime.features import Features

from din_export.data import DataError
from din_export.model import DIN
from din_export.schema import OOV_INDEX

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
