"""`din-export export`: a trained run -> a verified, self-contained ONNX model directory.

    run dir --load_run--> torch DIN --inference_module--> ONNX (dynamo) --checks--> [fp16 | int8]
            --> temp model dir --verify (through din_runtime)--> renamed into place [--> Triton repo]

Everything about the graph's interface comes from one declaration, `graph_spec(schema)`: the wrapper's
argument order, the dynamic shapes, the manifest's "inputs"/"outputs", the graph checks and the Triton
config. The model directory only appears once verification passed, so a failed export leaves nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from din_runtime.errors import SchemaError
from din_runtime.features import Features
from din_runtime.fs import publish_dir, temp_dir_beside
from onnx import numpy_helper
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from torch import Tensor, nn

from din_export import __version__
from din_export.checkpoints import load_run
from din_export.errors import DinExportError, OptionError
from din_export.optimize import SHORT_HISTORY_WIDTH, candidate_module, inference_module
from din_export.portable import PORTABLE_FILE, build_portable, portable_entry, supports_opset
from din_export.quantize import Feeds, batch_feeds, calibration_rows, candidate_feeds, quantize_int8
from din_export.schema import OOV_INDEX, PAD_INDEX, Schema, write_bytes_atomic, write_json_atomic
from din_export.triton import NAME_PATTERN, TritonError, write_triton_model
from din_export.verify import (
    DEFAULT_VALID_ROWS,
    GRID_BATCHES,
    VerifyError,
    grid_seqs,
    resolve_data_dir,
    verify_model_dir,
)

DEFAULT_OPSET = 18
MIN_OPSET = 16  # lowest opset the exporter's down-conversion was checked at (docs/export.md)
MANIFEST_VERSION = 1
MODEL_FILE = "model.onnx"
CANDIDATE_FILE = "candidates.onnx"  # one user x many candidates (optimize.CandidateDIN), optional in a model dir
# model.onnx's twin for histories up to optimize.SHORT_HISTORY_WIDTH wide (the Scorer picks it by width on
# CPU), optional in a model dir
SHORT_FILE = "short.onnx"
# ONNX ops that would make the graph slow (per-row control flow) or unportable; see docs/export.md.
FORBIDDEN_OPS = frozenset({"Loop", "Scan", "If"})
FORBIDDEN_PREFIXES = ("Sequence", "ConcatFromSequence", "SplitToSequence")
# The graph is traced at batch 4 and a history of 5 or 6: sizes >= 3, so no axis index can be taken for
# them, different from each other, and outside the verification grid (din_export/verify.py).
EXAMPLE_BATCH = 4
EXAMPLE_SEQS = (5, 6)
# notes for whoever runs an export (the CLI shows them on stderr: logging's last-resort handler)
log = logging.getLogger("din_export")


class ExportError(DinExportError):
    """The export could not produce a model directory; the message says which step failed."""


class GraphCheckError(ExportError):
    """The exported graph breaks one of the checks of `check_graph` (ops, dims, constants, validity)."""


# --- The one declaration of the graph's interface ----------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. dims: a name for a dynamic axis ("batch", "seq"), an int for a fixed one."""

    name: str
    dtype: str
    dims: tuple[str | int, ...]
    vocab: str | None = None
    columns: tuple[str, ...] | None = None

    def to_manifest(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}
        if self.vocab is not None:
            entry["vocab"] = self.vocab
        if self.columns is not None:
            entry["columns"] = list(self.columns)
        return entry


@dataclass(frozen=True)
class GraphSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def with_attention(self) -> bool:
        return "attention" in self.output_names

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim], ...]:
        axes = {name: torch.export.Dim(name) for t in self.inputs for name in t.dims if isinstance(name, str)}
        return tuple({i: axes[d] for i, d in enumerate(t.dims) if isinstance(d, str)} for t in self.inputs)

    def example(self, schema: Schema, sizes: dict[str, int], seed: int = 0) -> tuple[Tensor, ...]:
        """Random valid inputs with the dynamic axes at `sizes`; every history position real or not."""
        g = torch.Generator().manual_seed(seed)
        args = []
        for t in self.inputs:
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in t.dims)
            if t.vocab is not None:
                args.append(torch.randint(0, schema.vocab_sizes[t.vocab], shape, generator=g))
            elif t.name == "hist_len":
                args.append(torch.randint(0, sizes["seq"] + 1, shape, generator=g))
            else:
                args.append(torch.randn(shape, generator=g))
        return tuple(args)


def graph_spec(schema: Schema, with_attention: bool = False) -> GraphSpec:
    """The graph's inputs and outputs in docs/design.md's order ("Model inputs")."""
    inputs = [TensorSpec(s.name, "int64", ("batch",), vocab=s.vocab) for s in schema.sparse]
    inputs += [TensorSpec(b.target, "int64", ("batch",), vocab=b.vocab) for b in schema.behaviour]
    inputs += [TensorSpec(b.history, "int64", ("batch", "seq"), vocab=b.vocab) for b in schema.behaviour]
    inputs.append(TensorSpec("hist_len", "int64", ("batch",)))
    if schema.dense:
        inputs.append(TensorSpec("dense", "float32", ("batch", len(schema.dense)), columns=schema.dense_names))
    outputs = [TensorSpec("logit", "float32", ("batch",)), TensorSpec("prob", "float32", ("batch",))]
    if with_attention:
        outputs.append(TensorSpec("attention", "float32", ("batch", "seq")))
    spec = GraphSpec(tuple(inputs), tuple(outputs))
    if spec.input_names != schema.input_names():
        raise AssertionError(f"graph spec inputs {spec.input_names} differ from the schema's {schema.input_names()}")
    return spec


def candidate_spec(schema: Schema) -> GraphSpec:
    """The candidate graph's interface (optimize.CandidateDIN): the model's inputs in the same order, each
    history (1, seq) and hist_len (1,) for the one user, everything else per candidate."""
    main = graph_spec(schema)
    inputs = []
    for t in main.inputs:
        if t.name in schema.histories:
            dims: tuple[str | int, ...] = (1, "seq")
        elif t.name == "hist_len":
            dims = (1,)
        else:
            dims = ("candidates", *t.dims[1:])
        inputs.append(replace(t, dims=dims))
    outputs = tuple(replace(t, dims=("candidates",)) for t in main.outputs)
    return GraphSpec(tuple(inputs), outputs)


class GraphWrapper(nn.Module):
    """Positional inputs in spec order -> (logit, prob[, attention]): the signature the ONNX graph gets."""

    def __init__(self, model: nn.Module, spec: GraphSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        x = dict(zip(self.spec.input_names, inputs, strict=True))
        if self.spec.with_attention:
            logits, attention = self.model(x, return_attention=True)
            return logits, torch.sigmoid(logits), attention
        logits = self.model(x)
        return logits, torch.sigmoid(logits)


# --- torch -> ONNX -----------------------------------------------------------------------------------


def example_sizes(schema: Schema) -> tuple[int, int]:
    """(batch, seq) to trace with; seq avoids max_len and 2 max_len, which verification checks."""
    return EXAMPLE_BATCH, next(s for s in EXAMPLE_SEQS if s not in (schema.max_len, 2 * schema.max_len))


def to_onnx(model: nn.Module, schema: Schema, spec: GraphSpec, opset: int, example: tuple[int, int]) -> onnx.ModelProto:
    """Trace `model` (eval mode) with torch's dynamo exporter; batch and seq stay symbolic."""
    wrapper = GraphWrapper(model, spec).eval()
    args = spec.example(schema, {"batch": example[0], "candidates": example[0], "seq": example[1]})
    # The exporter reports every skipped torchvision op and its own internal deprecations; none concern us.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used", category=UserWarning)
        try:
            program = torch.onnx.export(
                wrapper, args, dynamo=True, dynamic_shapes=(spec.dynamic_shapes(),),
                input_names=spec.input_names, output_names=spec.output_names, opset_version=opset,
                external_data=False, verbose=False,
            )
        except Exception as e:  # the exporter raises many unrelated types; all mean "no graph"
            raise ExportError(f"torch.onnx.export failed at opset {opset}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return program.model_proto


def check_example(schema: Schema, example: tuple[int, int]) -> None:
    """Sizes a user may trace at: torch.export specialises 0 and 1; batch == seq could mix the two axes
    up unseen; max_len and 2 max_len are where verification must run at sizes other than the traced ones."""
    batch, seq = example
    if batch < 2 or seq < 2:
        raise OptionError(f"example sizes must be >= 2 (torch.export fixes sizes 0 and 1), got {batch}, {seq}",
                          option="--example-batch/--example-seq")
    if batch == seq:
        raise OptionError(f"example batch and seq must differ (both {batch}): a graph that confused "
                          "the two axes would pass every check", option="--example-batch/--example-seq")
    if seq in (schema.max_len, 2 * schema.max_len):
        raise OptionError(f"example seq {seq} is max_len or 2 max_len ({schema.max_len}), which "
                          "verification checks; pick another", option="--example-seq")


def _small_ints(model: onnx.ModelProto) -> set[int]:
    """The values of every small int constant: where a frozen axis would show."""
    return {v for _, value in _constants(model) if value.dtype.kind == "i" and value.size <= 8
            for v in value.ravel().tolist()}


def trace_graph(module: nn.Module, schema: Schema, spec: GraphSpec, opset: int,
                example: tuple[int, int]) -> tuple[onnx.ModelProto, tuple[int, int]]:
    """`to_onnx` at `example`, or, where a shape constant of that graph equals a traced size, at sizes
    that none of its constants holds; returns the graph and the sizes it was traced at.

    A constant equal to a traced size is either a dynamic axis frozen during tracing or a model size
    that happens to match (embed_dim 2 with two behaviours makes D = 4 = the default batch). Traced
    again at sizes absent from the first graph, a model size cannot match, while a frozen axis follows
    the new sizes, so `check_graph` at those sizes catches exactly the frozen axes.
    """
    graph = to_onnx(module, schema, spec, opset, example)
    taken = _small_ints(graph)
    if not taken & {size for size in example if size >= 3}:
        return graph, example
    # off the verification grid too, so that verification still runs at sizes other than the traced ones
    taken |= {*GRID_BATCHES, *grid_seqs(schema.max_len)}
    free = (size for size in itertools.count(3) if size not in taken)
    retraced = (next(free), next(free))
    return to_onnx(module, schema, spec, opset, retraced), retraced


def build_graph(module: nn.Module, schema: Schema, spec: GraphSpec, *, opset: int, precision: str,
                quantize: str | None, example: tuple[int, int],
                calibration: list[Feeds] | None = None) -> tuple[bytes, tuple[int, int]]:
    """Trace, check, convert to the variant, stamp the metadata, check again: the serialized graph and
    the (batch, seq) it was traced at (`trace_graph`). `calibration`: the graph's inputs for int8's
    activation ranges (`din_export.quantize`)."""
    graph, example = trace_graph(module, schema, spec, opset, example)
    check_graph(graph, spec, example)
    if precision == "fp16":
        graph = to_fp16(graph)
    elif quantize == "int8":
        graph = to_int8(graph, calibration or [])
    set_metadata(graph, schema)
    lower_ir_version(graph)
    # Frozen axes are looked for in the traced graph above: conversion adds no shapes, but int8 adds
    # small integer zero points that the size check would misread.
    check_graph(graph, spec)
    return graph.SerializeToString(), example


def lower_ir_version(model: onnx.ModelProto) -> None:
    """Stamp the lowest IR version the graph's opsets need (8 for opset 18): the exporter writes the newest
    it knows (10), which onnxruntime before 1.18 refuses to load although it runs every op of the graph;
    `check_graph` then confirms the graph is valid at that IR version."""
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)


def set_metadata(model: onnx.ModelProto, schema: Schema) -> None:
    """The schema travels inside the graph too, so a bare model.onnx still says what it expects."""
    onnx.helper.set_model_props(model, {
        "din.schema": json.dumps(schema.to_dict(), sort_keys=True),
        "din.manifest_version": str(MANIFEST_VERSION),
    })


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and arithmetic, fp32 inputs/outputs, Softmax kept in fp32 (docs/export.md).

    The converter clamps constants to fp16's finite range, so the attention mask's float32 lowest
    becomes -65504 (checked by `check_graph`: no infinite fp16 constant may remain).
    """
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Softmax"])
    topological_sort(half.graph)
    return half


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its producers (the fp16 converter appends its Casts at the end,
    which onnxruntime tolerates but the ONNX checker rightly rejects). Stable: a sorted graph is unchanged."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise GraphCheckError(f"graph has a cycle or a missing input at node {waiting[0].name!r}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def to_int8(model: onnx.ModelProto, calibration: list[Feeds]) -> onnx.ModelProto:
    """Static int8 (QDQ) of the attention unit's per-position Linears and product, activation scales
    calibrated on `calibration` and fixed in the file (`din_export.quantize`)."""
    try:
        return quantize_int8(model, calibration)
    except Exception as e:  # the quantiser raises plain Exceptions and onnxruntime errors alike
        raise ExportError(f"int8 quantisation failed: {type(e).__name__}: {e}") from e


# --- Graph checks ------------------------------------------------------------------------------------


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                nodes.extend(_all_nodes(sub))
    return nodes


def _dims(value: onnx.ValueInfoProto) -> list[str | int | None]:
    dims: list[str | int | None] = []
    for d in value.type.tensor_type.shape.dim:
        dims.append(d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None)
    return dims


def _constants(model: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    found = [(i.name, numpy_helper.to_array(i)) for i in model.graph.initializer]
    for node in _all_nodes(model.graph):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    found.append((node.output[0], numpy_helper.to_array(attr.t)))
    return found


ONNX_DTYPES = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}


def check_graph(model: onnx.ModelProto, spec: GraphSpec, example: tuple[int, int] | None = None) -> None:
    """Validity, strict shape inference, op set, symbolic interface dims, no traced-in example size.

    `example`: the (batch, seq) the graph was traced with; an int64 shape-like constant equal to one of
    them (when >= 3, so not an axis index) means a dynamic size was frozen during tracing.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GraphCheckError(f"exported graph is not valid ONNX: {str(e).splitlines()[0]}") from e
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise GraphCheckError("exported graph refers to external data; it must be self-contained")
    nodes = _all_nodes(model.graph) + [n for f in model.functions for n in f.node]
    bad = sorted({n.op_type for n in nodes if n.op_type in FORBIDDEN_OPS or n.op_type.startswith(FORBIDDEN_PREFIXES)})
    if bad:
        raise GraphCheckError(f"exported graph contains control-flow/sequence ops {bad}; DIN needs none")
    interface = (("input", spec.inputs, model.graph.input), ("output", spec.outputs, model.graph.output))
    for kind, declared, values in interface:
        got = {v.name: v for v in values}
        if list(got) != [t.name for t in declared]:
            raise GraphCheckError(f"graph {kind}s are {list(got)}, expected {[t.name for t in declared]}")
        for t in declared:
            dims = _dims(got[t.name])
            if dims != list(t.dims):
                raise GraphCheckError(f"graph {kind} {t.name!r} has dims {dims}, expected {list(t.dims)} "
                                      "(a dynamic axis was frozen or renamed)")
            if got[t.name].type.tensor_type.elem_type != ONNX_DTYPES[t.dtype]:
                raise GraphCheckError(f"graph {kind} {t.name!r} has element type "
                                      f"{onnx.TensorProto.DataType.Name(got[t.name].type.tensor_type.elem_type)}, "
                                      f"expected {t.dtype}")
    suspicious = {size for size in (example or ()) if size >= 3}
    for name, value in _constants(model):
        if value.dtype == np.float16 and not np.isfinite(value).all():
            raise GraphCheckError(f"fp16 constant {name!r} is not finite: a mask or bias overflowed fp16")
        if value.dtype.kind == "i" and value.size <= 8 and suspicious & set(value.ravel().tolist()):
            raise GraphCheckError(f"constant {name!r} = {value.tolist()} holds the traced example size "
                                  f"{sorted(suspicious & set(value.ravel().tolist()))}: a dynamic axis was frozen")


def has_external_data(model_dir: Path) -> list[str]:
    """Files beside model.onnx that external data would use, plus initializers that point outside."""
    stray = [p.name for p in model_dir.iterdir() if p.name.startswith(MODEL_FILE) and p.name != MODEL_FILE]
    model = onnx.load(model_dir / MODEL_FILE, load_external_data=False)
    return stray + [i.name for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]


# --- The model directory -----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    return {"din_toolkit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def build_manifest(model_bytes: bytes, schema: Schema, spec: GraphSpec, config: dict, metrics: dict, *,
                   opset: int, precision: str, quantize: str | None, optimized: bool,
                   example: tuple[int, int]) -> dict[str, Any]:
    model_cfg = dict(config.get("model", {}))
    return {
        "format": "din-model", "format_version": MANIFEST_VERSION,
        "model_file": MODEL_FILE, "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "schema": schema.to_dict(),
        "vocab_files": {v: f"vocab/{v}.json" for v in schema.vocab_names},
        "padding_index": PAD_INDEX, "oov_index": OOV_INDEX,
        "inputs": [t.to_manifest() for t in spec.inputs],
        "outputs": [t.to_manifest() for t in spec.outputs],
        "model": {"name": model_cfg.pop("model", "din"), **model_cfg},
        "opset": opset, "precision": precision, "quantize": quantize, "optimized": optimized,
        "example_sizes": {"batch": example[0], "seq": example[1]},
        "versions": versions(),
        "metrics": metrics,
    }


def write_model_dir(model_dir: Path, model_bytes: bytes, manifest: dict, data_dir: Path, schema: Schema) -> None:
    write_bytes_atomic(model_dir / MODEL_FILE, model_bytes)
    for vocab in schema.vocab_names:
        source = data_dir / "vocab" / f"{vocab}.json"
        if not source.is_file():
            raise ExportError(f"vocabulary {vocab!r} is missing from the dataset directory: {source}")
        (model_dir / "vocab").mkdir(exist_ok=True)
        shutil.copyfile(source, model_dir / "vocab" / f"{vocab}.json")
    write_json_atomic(model_dir / "manifest.json", manifest)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"cannot read {path}: {e}") from e


def export_run(run_dir: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, precision: str = "fp32",
               quantize: str | None = None, with_attention: bool = False, optimize: bool = True,
               tolerance: float | Mapping[str, float] | None = None, triton_repo: str | Path | None = None,
               triton_name: str = "din", force: bool = False, example: tuple[int | None, int | None] | None = None,
               candidates: bool = True, portable: bool = True, triton_portable: bool = False,
               short_history: bool = False, valid_rows: int = DEFAULT_VALID_ROWS) -> dict[str, Any]:
    """Export, check, write to a temporary sibling of `out`, verify there, then rename; returns the manifest.

    `example`: the (batch, seq) to trace with (either may be None), default `example_sizes(schema)`; the
    export traces elsewhere only where a model size equals one of them (`trace_graph`). `candidates`: also write
    the candidate graph (CANDIDATE_FILE, declared in the manifest's "candidates"); optimised exports only.
    `portable`: also write PORTABLE_FILE, the model with its encoder inside (raw ids in, manifest "portable").
    `triton_portable`: the Triton model serves the portable graph (raw ids, TYPE_STRING) instead of model.onnx.
    `short_history`: also write SHORT_FILE, model.onnx's twin for short histories (manifest "short_history"),
    which the Scorer loads beside model.onnx; optimised fp32 exports only, the variant its speed-up was
    measured on (docs/runtime.md, "The short-history graph": when it pays and what it costs).
    `tolerance`: bounds replacing the variant's verification policy (verify.POLICY: "prob", "logit_rel",
    "auc_drop"), or a float for the probability bound. `valid_rows`: validation rows verification scores.
    """
    run_dir, out = Path(run_dir), Path(out)
    if precision == "fp16" and quantize:
        raise OptionError("--precision fp16 and --quantize int8 are alternatives; pick one")
    if short_history and (not optimize or precision != "fp32" or quantize):
        raise OptionError("the short-history graph is written for optimised fp32 exports only (its speed-up was "
                          "measured there); drop --short-graph, or --no-optimize / --precision / --quantize",
                          option="--short-graph")
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if triton_portable and (triton_repo is None or not portable):
        raise OptionError("--triton-portable needs --triton REPO and the portable graph")
    if portable and not supports_opset(opset):
        why = (f"opset {opset} needs an ONNX IR version that onnxruntime 1.17 and onnxruntime-web/-node 1.30 "
               f"refuse; export at --opset 20 or lower for it")
        if triton_portable:
            raise OptionError(f"--triton-portable: {why}")
        log.warning(f"note: {PORTABLE_FILE} is not written: {why}")
        portable = False
    if triton_repo is not None:
        if not NAME_PATTERN.fullmatch(triton_name):
            raise OptionError(f"{triton_name!r} must match {NAME_PATTERN.pattern}", option="--triton-name")
        if (Path(triton_repo) / triton_name).exists() and not force:
            raise ExportError(f"{Path(triton_repo) / triton_name} already exists; pass --force to replace it")
    try:
        model, schema, config = load_run(run_dir)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ExportError(f"cannot load the run {run_dir}: {e}") from e
    data_dir = resolve_data_dir(run_dir, config)
    metrics_path = run_dir / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}

    spec = graph_spec(schema, with_attention)
    if example is not None:
        default = example_sizes(schema)
        example = tuple(d if e is None else e for e, d in zip(example, default, strict=True))
        check_example(schema, example)
    variant = {"opset": opset, "precision": precision, "quantize": quantize,
               "example": example or example_sizes(schema)}
    calibrated_on, rows = calibration_rows(data_dir, schema) if quantize == "int8" else (None, None)
    # int8 takes the fp32 graph as it is: the Dice fold spreads a Linear's rows 3-5x, which int8's
    # per-channel weight scales hold, and the MLP it would keep the input affine map for stays fp32
    # (din_export.quantize; docs/export.md, "int8")
    module = inference_module(model) if optimize else model
    model_bytes, traced = build_graph(module, schema, spec, **variant,
                                      calibration=batch_feeds(rows, schema) if rows is not None else None)
    manifest = build_manifest(model_bytes, schema, spec, config, metrics, opset=opset, precision=precision,
                              quantize=quantize, optimized=optimize, example=traced)
    if rows is not None:
        manifest["calibration"] = {"split": calibrated_on, "rows": len(rows["label"])}
    extra_files = {}
    if optimize and candidates:
        cspec = candidate_spec(schema)
        extra_files[CANDIDATE_FILE], traced = build_graph(
            candidate_module(model), schema, cspec, **variant,
            calibration=candidate_feeds(rows, schema) if rows is not None else None)
        manifest["candidates"] = {"model_file": CANDIDATE_FILE,
                                  "sha256": hashlib.sha256(extra_files[CANDIDATE_FILE]).hexdigest(),
                                  "inputs": [t.to_manifest() for t in cspec.inputs],
                                  "outputs": [t.to_manifest() for t in cspec.outputs],
                                  "example_sizes": {"candidates": traced[0], "seq": traced[1]}}
    if short_history:
        extra_files[SHORT_FILE], traced = build_graph(inference_module(model, short_history=True), schema, spec,
                                                      **variant)
        manifest["short_history"] = {"model_file": SHORT_FILE,
                                     "sha256": hashlib.sha256(extra_files[SHORT_FILE]).hexdigest(),
                                     "max_width": SHORT_HISTORY_WIDTH,
                                     "example_sizes": {"batch": traced[0], "seq": traced[1]}}
    if portable:
        try:
            vocabs = Features.of_dataset(data_dir, schema).vocabs
        except SchemaError as e:
            raise ExportError(f"cannot build {PORTABLE_FILE}: {e}") from e
        extra_files[PORTABLE_FILE], entry = build_portable(model_bytes, schema, vocabs)
        manifest["portable"] = portable_entry(extra_files[PORTABLE_FILE], entry)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        write_model_dir(tmp, model_bytes, manifest, data_dir, schema)
        for name, data in extra_files.items():
            write_bytes_atomic(tmp / name, data)
        stray = has_external_data(tmp)
        if stray:
            raise GraphCheckError(f"model.onnx is not self-contained: {stray}")
        try:
            report = verify_model_dir(tmp, model, schema, data_dir, tolerance=tolerance, valid_rows=valid_rows)
        except VerifyError as e:
            if quantize == "int8" and optimize:
                e.args = (f"{e}; this was int8 of the optimised graph: `--no-optimize` quantises the plain "
                          "graph instead (slower, sometimes closer, docs/export.md)",)
            raise
        manifest["parity"] = report
        manifest["variant"] = report["variant"]
        write_json_atomic(tmp / "manifest.json", manifest)
        if out.exists() and not force:  # it may have appeared while the export ran
            raise ExportError(f"{out} already exists; pass --force to replace it")
        publish_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if triton_repo is not None:
        served = manifest["portable"] if triton_portable else manifest
        try:
            write_triton_model(Path(triton_repo), triton_name,
                               extra_files[PORTABLE_FILE] if triton_portable else model_bytes,
                               served["inputs"], served["outputs"], force=force)
        except (TritonError, OSError) as e:
            raise ExportError(f"wrote {out}, but not the Triton model: {e}") from e
    return manifest
