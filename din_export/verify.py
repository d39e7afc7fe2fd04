"""`din-export verify`: prove an exported model directory scores like the torch model it came from.

Probabilities go through `din_runtime.Scorer.score_arrays`, the path users score with (hash check,
range checks, casts). The logit and attention outputs, which the Scorer does not return, come from a
plain onnxruntime session over the same verified bytes. The torch side is always the ORIGINAL model in
eval mode, never the inference rewrite that was exported.

Shapes checked: batch {1, 3, 64, 257} x history {0, 1, 7, max_len, 2 max_len} with random ids (padded
positions hold random ids too, so masking is exercised), ragged lengths and an all-padded row, then
the validation split in batches trimmed to their longest history. A candidate graph (manifest
"candidates": one user's history, many candidates) is compared with the torch model on that user's row
repeated, at candidates {1, 3, 64, 257} x the same histories, and for validation users x candidates.
A short-history graph (manifest "short_history": model.onnx's twin, which the Scorer runs for narrow
batches) is compared with the torch model on every shape of the grid and the validation split, through
its own session, so that both graphs are judged at every width whichever one the Scorer picks.
Failures raise one named error: ShapeError (an output has the wrong shape), DynamicAxisError (an
interface dim is fixed, or the model fails at some size), ToleranceError (a difference above the
variant's tolerance, see POLICY), AUCError (the validation AUC falls by more than the variant allows).

A portable graph (manifest "portable": raw ids in) is scored on raw requests against Scorer.score and
torch (`verify_portable`); its own failures are PortableGraphError (hash, IR version, domains,
interface) and PortableScorerError (scores or OOV counts differ from the runtime's).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from din_runtime import Scorer
from din_runtime.errors import DinRuntimeError
from din_runtime.manifest import read_portable
from din_runtime.metrics import auc
from torch import nn

from din_export.data import DataError, load_split
from din_export.errors import DinExportError, OptionError
from din_export.portable import PortableError, check_portable, scorer_tolerance
from din_export.portable_check import PortableRunError, check_against_scorer
from din_export.schema import Schema

GRID_BATCHES = (1, 3, 64, 257)
CANDIDATE_USERS = 8  # validation rows whose history scores VALID_CANDIDATES validation targets each
VALID_CANDIDATES = 256
VALID_BATCH = 1024
DEFAULT_VALID_ROWS = 20000
# Per variant: the max abs probability difference, the max relative logit (and attention) difference
# |a - ref| / (1 + |ref|), which catches saturated probabilities, and the most the validation AUC may
# drop against the fp32 torch model. None: not judged. int8 is lossy by design, so it is judged mostly
# by its effect on ranking, with a loose probability bound that only a broken graph exceeds; see
# docs/export.md, "Tolerance policy". `--tolerance NAME=VALUE` overrides any of them.
POLICY: dict[str, dict[str, float | None]] = {
    "fp32": {"prob": 1e-5, "logit_rel": 1e-5, "auc_drop": 1e-4},
    "fp16": {"prob": 1e-3, "logit_rel": 1e-2, "auc_drop": 1e-3},
    "int8": {"prob": 5e-2, "logit_rel": None, "auc_drop": 2e-3},
}
TOLERANCE_NAMES = ("prob", "logit_rel", "auc_drop")
# Judged only where scores are served: histories up to max_len, as din-score and the encoder keep the
# last max_len. Longer histories are still scored and must be finite; fp32 is judged at every length.
SERVED_LENGTHS_ONLY = frozenset({"fp16", "int8"})


class VerifyError(DinExportError):
    """The model directory does not score like the torch model. `report` holds what was measured."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(f"{type(self).__name__}: {message}")
        self.report = report


class ShapeError(VerifyError):
    """An output of the exported model has the wrong shape at some (batch, seq)."""


class DynamicAxisError(VerifyError):
    """A dim that must be dynamic is fixed in the graph, or the model fails to run at some size."""


class ToleranceError(VerifyError):
    """The exported model's outputs differ from torch's by more than the tolerance (or are not finite)."""


class AUCError(ToleranceError):
    """The exported model's validation AUC falls further below the torch model's than the variant allows."""


def parse_tolerance(values: tuple[str, ...] | list[str]) -> dict[str, float]:
    """`--tolerance` values (NAME=VALUE, or a bare number for prob) -> {name: bound}; OptionError if bad."""
    bounds: dict[str, float] = {}
    for text in values:
        name, eq, raw = text.partition("=")
        name, raw = (name.strip(), raw) if eq else ("prob", name)
        if name not in TOLERANCE_NAMES:
            raise OptionError(f"{text!r}: unknown bound {name!r}; expected one of {', '.join(TOLERANCE_NAMES)}",
                              option="--tolerance")
        try:
            value = float(raw)
        except ValueError:
            raise OptionError(f"{text!r}: {raw!r} is not a number", option="--tolerance") from None
        if not value > 0 or not math.isfinite(value):
            raise OptionError(f"{text!r}: a bound must be a finite number > 0", option="--tolerance")
        bounds[name] = value
    return bounds


def resolve_policy(variant: str, tolerance: float | Mapping[str, float] | None) -> dict[str, float | None]:
    """The variant's POLICY with `tolerance` applied (a float: the probability bound)."""
    policy = dict(POLICY[variant])
    given = {"prob": tolerance} if isinstance(tolerance, int | float) else dict(tolerance or {})
    unknown = set(given) - set(TOLERANCE_NAMES)
    if unknown:
        raise OptionError(f"unknown tolerance bounds {sorted(unknown)}; expected {list(TOLERANCE_NAMES)}",
                          option="--tolerance")
    policy.update({k: float(v) for k, v in given.items()})
    return policy


class PortableGraphError(VerifyError):
    """portable.onnx is not the file the manifest declares (hash, IR version, domains, inputs, outputs)."""


class PortableScorerError(VerifyError):
    """portable.onnx scores raw requests differently from Scorer.score, or counts other OOV ids."""


def resolve_data_dir(run_dir: Path, config: dict) -> Path:
    """The run's dataset directory (config.json "data_dir"; a relative path is tried from the run dir too)."""
    raw = config.get("data_dir")
    if not raw:
        raise DataError(f"{run_dir / 'config.json'} has no data_dir: cannot find the dataset")
    for candidate in (Path(raw), run_dir / raw):
        if (candidate / "schema.json").is_file():
            return candidate
    raise DataError(f"dataset directory {raw!r} named by {run_dir / 'config.json'} is not there "
                    "(no schema.json); its vocabularies and validation split are needed")


def variant_of(manifest: dict) -> str:
    return "int8" if manifest.get("quantize") == "int8" else manifest.get("precision", "fp32")


def grid_seqs(max_len: int) -> list[int]:
    return list(dict.fromkeys((0, 1, 7, max_len, 2 * max_len)))


def random_inputs(inputs: list[dict], schema: Schema, batch: int, seq: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Valid random arrays for the manifest's `inputs`; row 0 all-padded when batch > 1, others ragged."""
    sizes = {"batch": batch, "seq": seq}
    arrays: dict[str, np.ndarray] = {}
    for entry in inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in entry["dims"])
        if "vocab" in entry:
            arrays[entry["name"]] = rng.integers(0, schema.vocab_sizes[entry["vocab"]], shape, dtype=np.int64)
        elif entry["name"] == "hist_len":
            lengths = rng.integers(0, seq + 1, shape, dtype=np.int64) if batch > 1 else np.full(shape, seq)
            if batch > 1:
                lengths[0] = 0
            arrays["hist_len"] = lengths
        else:
            mean = np.array([d.mean for d in schema.dense], dtype=np.float32)
            std = np.array([d.scale for d in schema.dense], dtype=np.float32)
            arrays[entry["name"]] = (mean + std * rng.standard_normal(shape)).astype(np.float32)
    return arrays


def torch_outputs(model: nn.Module, arrays: dict[str, np.ndarray], with_attention: bool) -> dict[str, np.ndarray]:
    x = {k: torch.from_numpy(v) for k, v in arrays.items()}
    with torch.no_grad():
        if with_attention:
            logits, attention = model(x, return_attention=True)
        else:
            logits, attention = model(x), None
    out = {"logit": logits.numpy(), "prob": torch.sigmoid(logits).numpy()}
    if attention is not None:
        out["attention"] = attention.numpy()
    return out


class ExportedModel:
    """The model directory's two views: Scorer (probabilities) and a bare session (all outputs); with a
    short-history graph, the same two of it: a one-thread Scorer, which runs it for narrow batches, and its
    own bare session."""

    def __init__(self, model_dir: Path) -> None:
        try:
            self.scorer = Scorer.load(model_dir, short_history=False)  # model.onnx at every width
        except DinRuntimeError as e:
            raise VerifyError(f"din_runtime cannot load {model_dir}: {e}") from e
        self.manifest = dict(self.scorer.manifest.raw)
        data = (model_dir / self.scorer.manifest.model_file).read_bytes()
        self.graph = onnx.load_from_string(data)
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        entry = self.manifest.get("short_history")
        self.short = None if entry is None else verified_session(model_dir, entry["model_file"], entry["sha256"])
        try:
            # loads the short graph with every check the runtime makes (hash, interface equal to model.onnx's)
            self.short_scorer = None if entry is None else Scorer.load(model_dir, threads=1)
        except DinRuntimeError as e:
            raise VerifyError(f"din_runtime cannot load {model_dir} with its short-history graph: {e}") from e

    def check_dims(self) -> None:
        """Every dim the manifest names (batch, seq) must be symbolic in the graph, not a traced size."""
        graph_inputs = {v.name: v for v in self.graph.graph.input}
        for entry in self.manifest["inputs"]:
            value = graph_inputs.get(entry["name"])
            if value is None:
                raise DynamicAxisError(f"graph has no input {entry['name']!r}")
            dims = value.type.tensor_type.shape.dim
            for axis, want in enumerate(entry["dims"]):
                if isinstance(want, str) and dims[axis].HasField("dim_value"):
                    raise DynamicAxisError(f"input {entry['name']!r} axis {axis} ({want}) is fixed to "
                                           f"{dims[axis].dim_value} in the graph")

    def run(self, arrays: dict[str, np.ndarray], batch: int, seq: int) -> dict[str, np.ndarray]:
        """All outputs at one size: shapes from the bare session first (so a wrong shape is a ShapeError, not
        the Scorer's generic refusal), then the probabilities that count from the Scorer."""
        where = f"at batch {batch}, seq {seq}"
        try:
            out = dict(zip(self.outputs, self.session.run(self.outputs, arrays), strict=True))
        except Exception as e:  # onnxruntime's pybind errors have no common public base class
            raise DynamicAxisError(f"the model fails {where}: {e}") from e
        for name, want in (("prob", (batch,)), ("logit", (batch,)), ("attention", (batch, seq))):
            if name in out and out[name].shape != want:
                raise ShapeError(f"output {name!r} has shape {out[name].shape} {where}; expected {want}")
        try:
            out["prob"] = self.scorer.score_arrays(arrays)
        except DinRuntimeError as e:
            raise DynamicAxisError(f"din_runtime fails {where}: {e}") from e
        return out

    def run_short(self, arrays: dict[str, np.ndarray], batch: int, seq: int) -> dict[str, np.ndarray]:
        """All outputs of the short-history graph at one size from its own session, the probabilities from
        the one-thread Scorer where it runs that graph (histories up to max_width): the graph is judged at
        every width, and on the runtime's path where the runtime uses it."""
        where = f"the short-history graph at batch {batch}, seq {seq}"
        out = run_checked(self.short, arrays, {"prob": (batch,), "logit": (batch,), "attention": (batch, seq)}, where)
        if seq <= self.short_scorer.manifest.short_max_width:
            try:
                out["prob"] = self.short_scorer.score_arrays(arrays)
            except DinRuntimeError as e:
                raise DynamicAxisError(f"din_runtime fails on {where}: {e}") from e
        return out


def verified_session(model_dir: Path, file: str, sha256: str) -> Any:
    """A CPU session over MODEL_DIR/file, whose bytes must hash to the manifest's `sha256`."""
    data = (model_dir / file).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise VerifyError(f"{file} does not match the SHA-256 in the manifest")
    try:
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's pybind errors have no common public base class
        raise VerifyError(f"onnxruntime cannot load {file}: {e}") from e


def run_checked(session: Any, feeds: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                where: str) -> dict[str, np.ndarray]:
    """Every output of `session`; DynamicAxisError if it fails, ShapeError if an output of `shapes` differs."""
    names = [o.name for o in session.get_outputs()]
    try:
        out = dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as e:  # onnxruntime's pybind errors have no common public base class
        raise DynamicAxisError(f"{where} fails: {e}") from e
    for name, want in shapes.items():
        if name in out and out[name].shape != want:
            raise ShapeError(f"output {name!r} of {where} has shape {out[name].shape}; expected {want}")
    return out


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """NaN if either side has a non-finite value: such a difference must never pass a tolerance."""
    if a.size == 0:
        return 0.0
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def max_rel(a: np.ndarray, reference: np.ndarray) -> float:
    """max |a - ref| / (1 + |ref|): logits and raw attention scores are unbounded, so the gate is relative."""
    if a.size == 0:
        return 0.0
    if not (np.isfinite(a).all() and np.isfinite(reference).all()):
        return math.nan
    ref = reference.astype(np.float64)
    return float((np.abs(a.astype(np.float64) - ref) / (1.0 + np.abs(ref))).max())


def compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    row = {"prob": max_abs(ours["prob"], ref["prob"]), "logit": max_abs(ours["logit"], ref["logit"]),
           "logit_rel": max_rel(ours["logit"], ref["logit"])}
    if "attention" in ours:
        row["attention"] = max_abs(ours["attention"], ref["attention"])
        row["attention_rel"] = max_rel(ours["attention"], ref["attention"])
    return row


def within(row: dict[str, float], policy: dict[str, float | None]) -> bool:
    limits = {"prob": policy["prob"], "logit_rel": policy["logit_rel"], "attention_rel": policy["logit_rel"]}
    # `<=` is False for NaN, so a non-finite output fails even where the difference is not judged
    return all(row[k] <= limit if limit is not None else not math.isnan(row[k])
               for k, limit in limits.items() if k in row)


def validation_rows(data_dir: Path, schema: Schema, limit: int) -> dict[str, np.ndarray]:
    try:
        split = load_split(data_dir, "valid", schema)
    except DataError as e:
        raise DataError(f"cannot read the validation split: {e}") from e
    return {k: v[:limit] for k, v in split.items()}


def verify_model_dir(model_dir: str | Path, model: nn.Module, schema: Schema, data_dir: str | Path,
                     tolerance: float | Mapping[str, float] | None = None, valid_rows: int = DEFAULT_VALID_ROWS,
                     seed: int = 0) -> dict[str, Any]:
    """Compare MODEL_DIR with the torch `model` (eval mode); returns the report or raises a VerifyError.

    `tolerance`: bounds that replace the variant's POLICY ({"prob", "logit_rel", "auc_drop"}), or a
    float for the probability bound. Every shape is scored before any tolerance is judged, so a failing
    report still shows them all.
    """
    model_dir = Path(model_dir)
    exported = ExportedModel(model_dir)
    manifest = exported.manifest
    if Schema.from_dict(manifest["schema"]) != schema:
        raise VerifyError(f"{model_dir} was exported with a different schema than this run's")
    variant = variant_of(manifest)
    policy: dict[str, Any] = dict(resolve_policy(variant, tolerance))
    policy["judged_max_seq"] = schema.max_len if variant in SERVED_LENGTHS_ONLY else None
    with_attention = "attention" in exported.outputs
    report: dict[str, Any] = {"variant": {"name": variant}, "tolerance": policy,
                              "shapes": [], "passed": False}
    model = model.eval()
    try:
        exported.check_dims()
        rng = np.random.default_rng(seed)
        short_shapes: list[dict[str, Any]] = []
        for batch in GRID_BATCHES:
            for seq in grid_seqs(schema.max_len):
                arrays = random_inputs(manifest["inputs"], schema, batch, seq, rng)
                outputs = exported.run(arrays, batch, seq)
                ref = torch_outputs(model, arrays, with_attention)
                report["shapes"].append({"batch": batch, "seq": seq, **compare(outputs, ref)})
                if exported.short is not None:
                    short_shapes.append({"batch": batch, "seq": seq,
                                         **compare(exported.run_short(arrays, batch, seq), ref)})
        valid = validation_rows(Path(data_dir), schema, valid_rows)
        v, short_v = validate(exported, model, schema, valid, with_attention)
        report["validation"] = v
        if short_v is not None:
            report["short_history"] = {"shapes": short_shapes, "validation": short_v}
        if "candidates" in manifest:
            report["candidates"] = verify_candidates(model_dir, manifest, model, schema, valid, rng)
        if "portable" in manifest:
            report["portable"] = verify_portable(exported, model)
        for row in report["shapes"] + report.get("candidates", []) + [v] + short_rows(report):
            row["judged"] = judged(row, policy)
        # the summary's maxima are over the judged rows: what the policy holds the variant to
        rows = [r for r in report["shapes"] + [v] if r["judged"]]
        report["max_abs_diff"] = {k: max((r[k] for r in rows), key=_nan_high) for k in ("prob", "logit")}
        report["variant"] = {"name": variant, "precision": manifest.get("precision", "fp32"),
                             "quantize": manifest.get("quantize"),
                             "max_abs_diff_prob": report["max_abs_diff"]["prob"],
                             "max_abs_diff_logit": report["max_abs_diff"]["logit"],
                             "judged_max_seq": policy["judged_max_seq"], "valid_rows": v["rows"],
                             "valid_auc_torch_fp32": v["auc_torch"], "valid_auc": v["auc_model"],
                             "auc_change": v["auc_change"]}
        if "candidates" in report:
            report["variant"]["max_abs_diff_prob_candidates"] = max(
                (r["prob"] for r in report["candidates"] if r["judged"]), key=_nan_high)
        if "short_history" in report:
            report["variant"]["max_abs_diff_prob_short_history"] = max(
                (r["prob"] for r in short_rows(report) if r["judged"]), key=_nan_high)
        judge(report, policy)
        if "portable" in report:
            judge_portable(report["portable"], policy, scorer_tolerance(manifest))
            report["variant"]["max_abs_diff_prob_portable"] = report["portable"]["max_abs_diff_prob_ref"]
    except VerifyError as e:
        report["error"] = str(e)
        e.report = json_safe(report)
        raise
    report["passed"] = True
    return json_safe(report)


def json_safe(obj: Any) -> Any:
    """NaN/inf (a non-finite output, an AUC undefined on one class) as null: the report goes into JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


FINITE_ONLY: dict[str, float | None] = {"prob": None, "logit_rel": None}


def short_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The short-history graph's grid rows, then its validation row (none without that graph)."""
    short = report.get("short_history")
    return [] if short is None else [*short["shapes"], short["validation"]]


def judged(row: dict[str, Any], policy: dict[str, Any]) -> bool:
    """Whether `row`'s differences count: its history is one that is served (see SERVED_LENGTHS_ONLY)."""
    return policy.get("judged_max_seq") is None or "seq" not in row or row["seq"] <= policy["judged_max_seq"]


def judge(report: dict[str, Any], policy: dict[str, Any]) -> None:
    """Raise ToleranceError for the first row over the policy's limits (the short-history graph's shapes and
    validation split, then the grid's shapes, the validation split, the candidate graph), AUCError if a
    validation AUC falls too far. Rows not judged must still be finite."""
    bounds = f"(probability {policy['prob']:g}, relative logit {policy['logit_rel']})"
    for row in short_rows(report):
        if not within(row, policy if judged(row, policy) else FINITE_ONLY):
            where = "on the validation split" if "rows" in row else f"at batch {row['batch']}, seq {row['seq']}"
            raise ToleranceError(f"short-history graph {where}: {describe(row)} exceeds the tolerance {bounds}")
    for row in report["shapes"] + [report["validation"]]:
        if not within(row, policy if judged(row, policy) else FINITE_ONLY):
            where = "on the validation split" if "rows" in row else f"at batch {row['batch']}, seq {row['seq']}"
            raise ToleranceError(f"{where}: {describe(row)} exceeds the tolerance {bounds}")
    for row in report.get("candidates", []):
        if not within(row, policy if judged(row, policy) else FINITE_ONLY):
            raise ToleranceError(f"candidate graph, {row['user']} user x {row['candidates']} candidates, seq "
                                 f"{row['seq']}: {describe(row)} exceeds the tolerance {bounds}")
    short = report.get("short_history")
    for graph, v in (("", report["validation"]), ("the short-history graph's ", short and short["validation"])):
        if v and policy["auc_drop"] is not None and not math.isnan(v["auc_torch"]) \
                and not v["auc_change"] >= -policy["auc_drop"]:
            raise AUCError(f"{graph}validation AUC drops by {-v['auc_change']:.3g} ({v['auc_torch']:.5f} -> "
                           f"{v['auc_model']:.5f}) > allowed {policy['auc_drop']:g}")


def describe_policy(policy: dict[str, Any]) -> str:
    """'prob 1e-05, logit_rel 1e-05, auc_drop 0.0001 at every history length' (None: not judged)."""
    text = ", ".join(f"{k} {'-' if policy.get(k) is None else format(policy[k], 'g')}" for k in TOLERANCE_NAMES)
    limit = policy.get("judged_max_seq")
    return text + (" at every history length" if limit is None else f" at histories up to {limit}")


def _nan_high(x: float) -> float:
    return math.inf if math.isnan(x) else x


def describe(row: dict[str, float]) -> str:
    text = f"max abs diff prob {row['prob']:.3g}, logit {row['logit']:.3g} (relative {row['logit_rel']:.3g})"
    if "attention" in row:
        text += f", attention {row['attention']:.3g} (relative {row['attention_rel']:.3g})"
    return text


def validate(exported: ExportedModel, model: nn.Module, schema: Schema, valid: dict[str, np.ndarray],
             with_attention: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Score the validation rows in batches cut to their longest history: diffs and AUC of both sides, for
    model.onnx and (None without one) the short-history graph, against one torch pass."""
    names = schema.input_names()
    n = len(valid["label"])
    ours, shorts, refs = [], [], []
    for start in range(0, n, VALID_BATCH):
        rows = slice(start, min(start + VALID_BATCH, n))
        width = int(valid["hist_len"][rows].max())
        arrays = {k: valid[k][rows][:, :width] if k in schema.histories else valid[k][rows] for k in names}
        batch = len(arrays["hist_len"])
        ours.append(exported.run(arrays, batch, width))
        if exported.short is not None:
            shorts.append(exported.run_short(arrays, batch, width))
        refs.append(torch_outputs(model, arrays, with_attention))
    ref = {k: np.concatenate([r[k] for r in refs]) for k in ("prob", "logit")}
    labels = valid["label"]
    return _validation_row(ours, ref, labels), _validation_row(shorts, ref, labels) if shorts else None


def _validation_row(ours: list[dict[str, np.ndarray]], ref: dict[str, np.ndarray],
                    labels: np.ndarray) -> dict[str, Any]:
    cat = {k: np.concatenate([o[k] for o in ours]) for k in ("prob", "logit")}
    row = compare(cat, ref)
    row.pop("attention", None)
    both = 0 < labels.sum() < len(labels)
    auc_torch = auc(labels, ref["prob"]) if both else math.nan
    auc_model = auc(labels, cat["prob"]) if both and np.isfinite(cat["prob"]).all() else math.nan
    return {"rows": len(labels), **row, "auc_torch": auc_torch, "auc_model": auc_model,
            "auc_change": auc_model - auc_torch}


def verify_candidates(model_dir: Path, manifest: dict, model: nn.Module, schema: Schema,
                      valid: dict[str, np.ndarray], rng: np.random.Generator) -> list[dict[str, Any]]:
    """The candidate graph against the torch model on the user's row repeated for every candidate: random
    users at the grid's sizes (ragged and empty histories included), then validation users x targets."""
    entry = manifest["candidates"]
    session = verified_session(model_dir, entry["model_file"], entry["sha256"])
    user_fields = (*schema.histories, "hist_len")
    cases = []
    for n in GRID_BATCHES:
        for seq in grid_seqs(schema.max_len):
            arrays = random_inputs(manifest["inputs"], schema, n, seq, rng)
            arrays["hist_len"] = rng.integers(0, seq + 1, n)
            cases.append(("random", arrays))
    n = min(VALID_CANDIDATES, len(valid["label"]))
    for u in range(min(CANDIDATE_USERS, len(valid["label"]))):
        width = int(valid["hist_len"][u])
        arrays = {k: valid[k][:n] for k in schema.input_names()}
        arrays.update({k: np.repeat(valid[k][u:u + 1, :width], n, axis=0) for k in schema.histories})
        arrays["hist_len"] = np.repeat(valid["hist_len"][u:u + 1], n)
        cases.append((f"validation row {u}", arrays))
    rows = []
    for user, arrays in cases:
        n, seq = len(arrays["hist_len"]), arrays[schema.histories[0]].shape[1]
        # the user: row 0's history for every candidate
        arrays.update({k: np.repeat(arrays[k][:1], n, axis=0) for k in user_fields})
        feeds = {k: arrays[k][:1] if k in user_fields else arrays[k] for k in arrays}
        out = run_checked(session, feeds, {"prob": (n,), "logit": (n,)},
                          f"the candidate graph at {n} candidates, seq {seq}")
        rows.append({"user": user, "candidates": n, "seq": seq,
                     **compare(out, torch_outputs(model, arrays, with_attention=False))})
    return rows


def verify_portable(exported: ExportedModel, model: nn.Module) -> dict[str, Any]:
    """portable.onnx on raw requests built from the vocabularies (portable_check.check_cases: known and
    unseen ids, empty and longer-than-max_len histories, batch 1 to 257): its hash and interface, then its
    scores against Scorer.score on the same rows and against the torch model on the rows the runtime encodes."""
    scorer = exported.scorer
    entry = exported.manifest["portable"]
    try:
        data = read_portable(scorer.manifest)
        check_portable(onnx.load_from_string(data), entry["inputs"], entry["outputs"])
    except (DinRuntimeError, PortableError) as e:
        raise PortableGraphError(str(e)) from e
    try:
        return check_against_scorer(data, entry, scorer,
                                    reference=lambda arrays: torch_outputs(model, arrays, with_attention=False))
    except PortableRunError as e:
        raise DynamicAxisError(str(e)) from e


def judge_portable(portable: dict[str, Any], policy: dict[str, float | None], scorer_limit: float) -> None:
    """Every case: the shape, the OOV counts and the scores of Scorer.score (to `scorer_limit`: the same
    arrays go into the same model, portable.scorer_tolerance), then the torch model within the variant's
    tolerance."""
    for case in portable["cases"]:
        where = f"portable.onnx at {case['case']}"
        if not case["shape_ok"]:
            raise ShapeError(f"{where}: an output does not have shape ({case['rows']},)")
        if not case["oov_equal"]:
            raise PortableScorerError(f"{where}: the 'oov' output differs from the ids din_runtime maps to OOV")
        if not case["prob"] <= scorer_limit:  # also NaN
            raise PortableScorerError(f"{where}: max abs diff prob {case['prob']:.3g} to Scorer.score exceeds "
                                      f"{scorer_limit:g}")
        row = {"prob": case["prob_ref"], "logit": case["logit_ref"], "logit_rel": case["logit_rel_ref"]}
        if not within(row, policy):
            raise ToleranceError(f"{where}: {describe(row)} to torch exceeds the tolerance (probability "
                                 f"{policy['prob']:g}, relative logit {policy['logit_rel']})")


def format_report(report: dict[str, Any]) -> str:
    """The per-shape differences as a table, then the validation line. null (non-finite) shows as nan."""
    def num(x: float | None, spec: str) -> str:
        return format(math.nan if x is None else x, spec)

    has_attention = any("attention" in r for r in report["shapes"])
    head = f"{'batch':>6} {'seq':>5} {'prob':>10} {'logit':>10}" + (f" {'attention':>10}" if has_attention else "")
    lines = [f"variant {report['variant']['name']}, tolerance {describe_policy(report['tolerance'])}", head]
    for r in report["shapes"]:
        line = f"{r['batch']:>6} {r['seq']:>5} {num(r['prob'], '>10.2e')} {num(r['logit'], '>10.2e')}"
        line += f" {num(r['attention'], '>10.2e')}" if has_attention else ""
        lines.append(line + ("" if r.get("judged", True) else "  (not judged: longer than served)"))
    short = short_rows(report)
    if short:
        worst = max(short, key=lambda r: _nan_high(math.nan if r["prob"] is None else r["prob"]))
        lines.append(f"short-history graph: {len(short) - 1} shapes and the validation split, max abs diff prob "
                     f"{num(worst['prob'], '.2e')}, logit {num(worst['logit'], '.2e')}; validation AUC "
                     f"{num(short[-1]['auc_model'], '.5f')} ({num(short[-1]['auc_change'], '+.2e')})")
    cand = report.get("candidates")
    if cand:
        worst = max(cand, key=lambda r: _nan_high(math.nan if r["prob"] is None else r["prob"]))
        lines.append(f"candidate graph: {len(cand)} (user, candidates, seq) cases, max abs diff prob "
                     f"{num(worst['prob'], '.2e')}, logit {num(worst['logit'], '.2e')}")
    portable = report.get("portable")
    if portable:
        lines.append(f"portable graph: {portable['rows']} raw rows in {len(portable['cases'])} batches "
                     f"({portable['oov_ids']} unseen ids), max abs diff prob "
                     f"{num(portable['max_abs_diff_prob'], '.2e')} to Scorer.score, "
                     f"{num(portable.get('max_abs_diff_prob_ref'), '.2e')} to torch")
    v = report.get("validation")
    if v:
        lines.append(f"validation: {v['rows']} rows, max abs diff prob {num(v['prob'], '.2e')}, logit "
                     f"{num(v['logit'], '.2e')}; AUC torch {num(v['auc_torch'], '.5f')}, exported "
                     f"{num(v['auc_model'], '.5f')} ({num(v['auc_change'], '+.2e')})")
    lines.append("PASSED" if report.get("passed") else f"FAILED: {report.get('error', '')}")
    return "\n".join(lines)
