"""Raw requests -> portable.onnx, next to the same requests through `Scorer.score` (no torch here).

`raw_feeds` is what any caller of portable.onnx does (Node.js, a browser, C++): read the manifest's
"portable" entry and turn request rows into its input tensors, with no vocabulary and no encoder.
`raw_requests` builds rows from the vocabularies: known ids, unseen ids (for an int64 vocabulary also
ids that are no canonical integer, which the caller maps to the sentinel), ids given as JSON numbers,
empty histories and histories longer than max_len. `check_against_scorer` scores a grid of such batches
both ways and measures the differences; `din-export portable` and `din-export verify` judge them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from din_runtime import Scorer
from din_runtime.features import OOV_INDEX, id_key

UNKNOWN_RATE = 0.1
CHECK_BATCHES = (1, 3, 257)
CHECK_SEED = 0


class PortableRunError(RuntimeError):
    """onnxruntime failed to run portable.onnx on one of the checked batches."""


def _id_array(values: Sequence[Any], entry: Mapping[str, Any]) -> np.ndarray:
    keys = [id_key(v) for v in values]  # the key din_runtime looks each id up by
    if entry["dtype"] == "string":
        return np.array(keys, dtype=object)
    sentinel = entry["oov_int64_sentinel"]
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        try:
            value = int(key)
        except ValueError:
            value = sentinel
        # "007", "+7" or "7 " are looked up as strings by the runtime and are no key: the sentinel
        out[i] = value if str(value) == key and -(2**63) <= value < 2**63 else sentinel
    return out


def raw_feeds(entry: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], width: int | None = None
              ) -> dict[str, np.ndarray]:
    """portable.onnx's input tensors for `rows`, from the manifest's "portable" `entry` only.

    Histories are right-padded with the entry's "pad" to `width` (default: the longest history);
    hist_len is the RAW length, which the graph cuts to max_len itself.
    """
    feeds: dict[str, np.ndarray] = {}
    lengths = None
    for e in entry["inputs"]:
        if e["kind"] == "length":
            lengths = np.array([len(r[e["field"]]) for r in rows], dtype=np.int64)
    longest = int(lengths.max()) if lengths is not None and len(lengths) else 0
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is narrower than the longest history ({longest})")
    for e in entry["inputs"]:
        name, kind = e["name"], e["kind"]
        if kind == "id":
            feeds[name] = _id_array([r[e["field"]] for r in rows], e)
        elif kind == "history":
            flat = _id_array([v for r in rows for v in r[e["field"]]], e)
            out = np.full((len(rows), width), e["pad"], dtype=flat.dtype)
            row_of = np.repeat(np.arange(len(rows)), lengths)
            col_of = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            out[row_of, col_of] = flat
            feeds[name] = out
        elif kind == "length":
            feeds[name] = lengths
        else:
            feeds[name] = np.array([r[e["field"]] for r in rows], dtype=np.float32)
    return feeds


def raw_requests(manifest: Mapping[str, Any], vocabs: Mapping[str, Sequence[str]], lengths: Sequence[int],
                 rng: np.random.Generator, unknown_rate: float = UNKNOWN_RATE) -> list[dict[str, Any]]:
    """One raw request row per history length, ids drawn from the vocabularies with `unknown_rate` unseen."""
    schema = manifest["schema"]
    dtypes = {e["vocab"]: e["dtype"] for e in manifest["portable"]["inputs"] if "vocab" in e} \
        if "portable" in manifest else {}
    serial = iter(range(10**9))

    def draw(vocab: str) -> Any:
        ids = vocabs[vocab]
        if not ids or rng.random() < unknown_rate:
            n = next(serial)
            if dtypes.get(vocab) == "int64":
                # an integer the vocabulary lacks, or a string that is no canonical integer ("0" + a known id)
                return str(max(int(k) for k in ids) + 1 + n) if n % 2 else "0" + ids[n % len(ids)]
            return f"unseen-{n}"
        known = ids[int(rng.integers(len(ids)))]
        # some known integer ids come as JSON numbers, which the runtime and the caller both accept
        return int(known) if dtypes.get(vocab) == "int64" and rng.random() < 0.3 else known

    rows = []
    for length in lengths:
        row: dict[str, Any] = {s["name"]: draw(s["vocab"]) for s in schema.get("sparse", [])}
        for b in schema["behaviour"]:
            row[b["target"]] = draw(b["vocab"])
            row[b["history"]] = [draw(b["vocab"]) for _ in range(length)]
        for d in schema.get("dense", []):
            row[d["name"]] = float(d["mean"] + (d["std"] or 1.0) * rng.standard_normal())
        rows.append(row)
    return rows


def check_cases(max_len: int) -> list[tuple[str, list[int], int]]:
    """(name, history lengths, extra width) of each batch checked: batch 1 at each kind of history, then
    ragged batches (an empty row first) up to 257 rows, one padded wider than its longest history, and a
    batch whose histories are all empty (width 0)."""
    long = 2 * max_len + 3
    rng = np.random.default_rng(CHECK_SEED)
    cases = [(f"batch 1, history {n}", [n], 0) for n in dict.fromkeys((0, 1, max_len, long))]
    for batch in CHECK_BATCHES[1:]:
        lengths = [0, long, *rng.integers(0, long + 1, batch - 2).tolist()]
        cases.append((f"batch {batch}, histories 0-{long}", lengths, 0))
    cases.append(("batch 3, padded 5 wider than its longest history", [2, 0, max_len + 1], 5))
    cases.append(("batch 4, every history empty (width 0)", [0, 0, 0, 0], 0))
    return cases


def expected_oov(scorer: Scorer, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Per row, the ids the runtime maps to the OOV index (targets, profile fields, kept history items)."""
    arrays = scorer.encode(rows).arrays
    m = scorer.manifest
    counts = np.zeros(len(rows), dtype=np.int64)
    for name in [s.name for s in m.sparse] + list(m.targets):
        counts += arrays[name] == OOV_INDEX
    for name in m.histories:
        counts += (arrays[name] == OOV_INDEX).sum(axis=1)
    return counts


def run_portable(session: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def check_against_scorer(data: bytes, entry: Mapping[str, Any], scorer: Scorer, seed: int = CHECK_SEED,
                         reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
                         ) -> dict[str, Any]:
    """Score every case of `check_cases` through portable.onnx (bytes `data`) and `scorer.score`.

    Per case: rows, max |prob diff| to the Scorer, whether the OOV counts are equal, the OOV ids seen, and
    with `reference` (encoded arrays -> {"prob", "logit"}, e.g. the torch model on `scorer.encode(rows)`)
    the differences to it. A NaN diff (a non-finite probability) is a failure for whoever judges it.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    manifest = {**scorer.manifest.raw, "portable": entry}
    vocabs = {name: list(v) for name, v in scorer.manifest.vocabs.items()}
    rng = np.random.default_rng(seed)
    cases = []
    for name, lengths, extra in check_cases(scorer.manifest.max_len):
        rows = raw_requests(manifest, vocabs, lengths, rng)
        feeds = raw_feeds(entry, rows, width=max(lengths) + extra)
        try:
            out = run_portable(session, feeds)
        except Exception as e:  # onnxruntime's pybind errors have no common public base class
            raise PortableRunError(f"portable.onnx fails at {name}: {e}") from e
        oov = expected_oov(scorer, rows)
        case = {"case": name, "rows": len(rows), "prob": _max_abs(out["prob"], scorer.score(rows)),
                "oov_equal": bool(np.array_equal(out["oov"], oov)), "oov_ids": int(oov.sum()),
                "shape_ok": all(out[k].shape == (len(rows),) for k in ("prob", "logit", "oov"))}
        if reference is not None:
            ref = reference(scorer.encode(rows).arrays)
            case["prob_ref"] = _max_abs(out["prob"], ref["prob"])
            case["logit_ref"] = _max_abs(out["logit"], ref["logit"])
            case["logit_rel_ref"] = _max_rel(out["logit"], ref["logit"])
        cases.append(case)
    report = {"rows": sum(c["rows"] for c in cases), "cases": cases, "oov_ids": sum(c["oov_ids"] for c in cases),
              "max_abs_diff_prob": _worst(c["prob"] for c in cases)}
    if reference is not None:
        report["max_abs_diff_prob_ref"] = _worst(c["prob_ref"] for c in cases)
        report["max_abs_diff_logit_ref"] = _worst(c["logit_ref"] for c in cases)
    return report


def _worst(values: Any) -> float:
    return max(values, key=lambda x: math.inf if math.isnan(x) else x)


def _max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    if a.shape != ref.shape or not (np.isfinite(a).all() and np.isfinite(ref).all()):
        return math.nan
    r = ref.astype(np.float64)
    return float((np.abs(a.astype(np.float64) - r) / (1.0 + np.abs(r))).max()) if a.size else 0.0


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
