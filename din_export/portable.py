"""portable.onnx: the exported model with the runtime's encoder inside it, for callers that are not Python.

    raw ids, raw histories [batch, width], raw hist_len, raw dense values
      --LabelEncoder (unknown -> OOV 1)--> keep the last max_len --mask--> model.onnx --> prob, logit, oov

Built by wrapping an exported model.onnx (no torch needed), so `din-export portable MODEL_DIR` adds it
to an existing model directory and `din-export export` writes it beside model.onnx. The prefix computes
exactly the arrays din_runtime.encode builds (same indices, same padding, same width), so the wrapped
graph sees the same tensors and scores like `Scorer.score` bit for bit. The interface is declared in the
manifest's "portable" entry (docs/design.md) so that Node.js, a browser or a C++ app needs nothing else.

Standard ops only (ai.onnx + ai.onnx.ml, no contrib ops) and the lowest IR version the opsets allow:
onnxruntime 1.17 and onnxruntime-web/-node 1.30 refuse the IR version `onnx.helper.make_model` writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from din_runtime import Scorer
from din_runtime.errors import DinRuntimeError
from din_runtime.features import FIRST_KNOWN_INDEX, OOV_INDEX, PAD_INDEX, FeatureSpec
from onnx import TensorProto, helper, numpy_helper

from din_export.errors import DinExportError
from din_export.portable_check import PortableRunError, check_against_scorer
from din_export.schema import write_bytes_atomic, write_json_atomic

PORTABLE_FILE = "portable.onnx"
ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 2  # LabelEncoder-2, the version every onnxruntime since 1.0 and onnxruntime-web implement
MAX_IR_VERSION = 9  # onnxruntime 1.17 reads up to IR 9
# The graph feeds the wrapped model the very arrays din_runtime.encode builds, so the two agree to the
# bit on one machine; the bound leaves room for float rounding only (the Scorer runs a CPU batch in
# slices, docs/runtime.md "Chunking"). int8 graphs quantise each run's activations with that run's own
# scale, so there the slices change scores within the quantisation error: the int8 probability bound.
SCORER_TOLERANCE = 1e-6
INT8_SCORER_TOLERANCE = 5e-2
# Each vocabulary's ids in index order from FIRST_KNOWN_INDEX: a list, or a din_runtime lookup (raw id -> index)
Vocabs = Mapping[str, Collection[str]]


def scorer_tolerance(manifest: Mapping[str, Any]) -> float:
    """How far portable.onnx may score from `Scorer.score` for this model directory's variant."""
    return INT8_SCORER_TOLERANCE if manifest.get("quantize") == "int8" else SCORER_TOLERANCE
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MODEL = "model/"  # prefix of every name of the wrapped model.onnx, so request field names are free for inputs
_ENC = "encode/"


class PortableError(DinExportError):
    """portable.onnx cannot be built from this model (or model directory); the message says why."""


# --- The interface ----------------------------------------------------------------------------------


def is_int64_vocab(ids: Collection[str]) -> bool:
    """True when every id is a canonical decimal integer in int64 range (str(int(k)) == k): then the
    field takes int64 ids, and a caller can parse ids instead of passing strings."""
    for key in ids:
        try:
            value = int(key)
        except ValueError:
            return False
        if str(value) != key or not _INT64_MIN <= value <= _INT64_MAX:
            return False
    return bool(ids)


def oov_sentinel(ids: Collection[str]) -> int:
    """An int64 that is no key of an int64 vocabulary: what a caller passes for an id that cannot be one
    (a string like "007" or "x", which the runtime looks up as a string and never finds)."""
    keys = {int(k) for k in ids}
    value = -1
    while value in keys:
        value -= 1
    return value


def portable_interface(schema: FeatureSpec, vocabs: Vocabs) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as the manifest's "portable" entry declares them (docs/design.md)."""
    def id_entry(name: str, vocab: str, dims: list[str], kind: str) -> dict[str, Any]:
        ids = vocabs[vocab]
        entry: dict[str, Any] = {"name": name, "dtype": "int64" if is_int64_vocab(ids) else "string", "dims": dims,
                                 "kind": kind, "field": name, "vocab": vocab}
        if entry["dtype"] == "int64":
            entry["oov_int64_sentinel"] = oov_sentinel(ids)
        if kind == "history":
            entry["pad"] = 0 if entry["dtype"] == "int64" else ""
        return entry

    inputs = [id_entry(name, vocab, ["batch"], "id") for name, vocab in schema.id_fields]
    inputs += [id_entry(b.history, b.vocab, ["batch", "width"], "history") for b in schema.behaviour]
    inputs.append({"name": "hist_len", "dtype": "int64", "dims": ["batch"], "kind": "length",
                   "field": schema.histories[0]})
    inputs += [{"name": d.name, "dtype": "float32", "dims": ["batch"], "kind": "dense", "field": d.name}
               for d in schema.dense]
    outputs = [{"name": "prob", "dtype": "float32", "dims": ["batch"]},
               {"name": "logit", "dtype": "float32", "dims": ["batch"]},
               {"name": "oov", "dtype": "int64", "dims": ["batch"]}]
    return inputs, outputs


_ONNX_TYPES = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT, "string": TensorProto.STRING}


# --- The graph ----------------------------------------------------------------------------------------


def _opset_imports(opset: int) -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid("", opset), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]


def supports_opset(opset: int) -> bool:
    """Whether a model.onnx at `opset` can be wrapped within MAX_IR_VERSION (opsets up to 20; 21 needs IR 10)."""
    return helper.find_min_ir_version_for(_opset_imports(opset)) <= MAX_IR_VERSION


class _Builder:
    """Collects the prefix's nodes and constants; names are unique by construction (the _ENC prefix)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: Any) -> str:
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), _ENC + name))
        return _ENC + name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, domain: str = "", **attrs: Any) -> str:
        self._count += 1
        out = output or f"{_ENC}{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{_ENC}{self._count}_{op_type}",
                                           domain=domain, **attrs))
        return out


def _lookup(b: _Builder, x: str, ids: Collection[str], int64: bool, vocab: str) -> str:
    """Indices of the raw ids in `x` (any shape): known ids from 2 in file order, anything else OOV 1."""
    if not ids:
        # LabelEncoder needs a key; "" stands for none (it is no id of this empty vocabulary, so OOV too).
        keys: dict[str, Any] = {"keys_strings": [""]}
        values = [OOV_INDEX]
    else:
        keys = {"keys_int64s": [int(k) for k in ids]} if int64 else {"keys_strings": list(ids)}
        values = list(range(FIRST_KNOWN_INDEX, FIRST_KNOWN_INDEX + len(ids)))
    return b.op("LabelEncoder", [x], f"{_ENC}{vocab}_index_{b._count + 1}", domain=ML_DOMAIN,
                values_int64s=values, default_int64=OOV_INDEX, **keys)


def _prefix_nodes(schema: FeatureSpec, vocabs: Vocabs, inputs: list[dict]) -> tuple[_Builder, str]:
    """The encoder: raw inputs -> the model's input names (prefixed) and the per-row OOV count."""
    b = _Builder()
    dtype = {e["name"]: e["dtype"] for e in inputs}
    zero, one = b.const("zero", 0), b.const("one", 1)
    oov_index, pad = b.const("oov", OOV_INDEX), b.const("pad", PAD_INDEX)
    axis1 = b.const("axis1", [1])
    axis0 = b.const("axis0", [0])

    # kept = min(max(hist_len, 0), max_len); the kept items are the last `kept` of each raw history.
    raw_len = b.op("Max", ["hist_len", zero])
    kept = b.op("Min", [raw_len, b.const("max_len", schema.max_len)], _MODEL + "hist_len")
    start = b.op("Sub", [raw_len, kept])
    # width = max(1, longest kept history), as din_runtime.encode pads to; gathered = min(width, input width),
    # which is less only for an input of width 0 (every history empty), padded back below.
    width = b.op("Max", [b.op("ReduceMax", [kept], keepdims=1), one])
    in_width = b.op("Shape", [schema.histories[0]], start=1, end=2)
    gathered = b.op("Min", [width, in_width])
    positions = b.op("Range", [zero, b.op("Squeeze", [width]), one])
    columns = b.op("Add", [b.op("Unsqueeze", [start, axis1]),
                           b.op("Unsqueeze", [b.op("Range", [zero, b.op("Squeeze", [gathered]), one]), axis0])])
    # Clipped so that a history narrower than its hist_len (against the contract) reads its last item
    # instead of failing; positions past hist_len are masked to padding below either way.
    columns = b.op("Min", [columns, b.op("Sub", [in_width, one])])
    real = b.op("Less", [b.op("Unsqueeze", [positions, axis0]), b.op("Unsqueeze", [kept, axis1])])
    pads = b.op("Concat", [b.const("pads_head", [0, 0, 0]), b.op("Sub", [width, gathered])], axis=0)

    counts: list[str] = []
    by_vocab: dict[str, list[tuple[str, str]]] = {}
    for name, vocab in schema.id_fields:
        by_vocab.setdefault(vocab, []).append(("id", name))
    for beh in schema.behaviour:
        by_vocab.setdefault(beh.vocab, []).append(("history", beh.history))
    for vocab, fields in by_vocab.items():
        int64 = dtype[fields[0][1]] == "int64"
        # Every field of one vocabulary goes through ONE lookup: the keys are stored once in the file and
        # hashed once when the session starts (a 100k-item vocabulary would otherwise be there twice).
        pieces = [b.op("Unsqueeze", [name, axis1]) if kind == "id"
                  else b.op("GatherElements", [name, columns], axis=1) for kind, name in fields]
        joined = pieces[0] if len(pieces) == 1 else b.op("Concat", pieces, axis=1)
        index = _lookup(b, joined, vocabs[vocab], int64, vocab)
        offset = zero
        for kind, name in fields:
            size = one if kind == "id" else gathered
            end = b.op("Add", [offset, size])
            part = index if len(fields) == 1 else b.op("Slice", [index, b.op("Reshape", [offset, axis1]),
                                                                 b.op("Reshape", [end, axis1]), axis1])
            offset = end
            if kind == "id":
                value = b.op("Squeeze", [part, axis1], _MODEL + name)
                counts.append(b.op("Cast", [b.op("Equal", [value, oov_index])], to=TensorProto.INT64))
            else:
                value = b.op("Where", [real, b.op("Pad", [part, pads, pad]), pad], _MODEL + name)
                is_oov = b.op("Cast", [b.op("Equal", [value, oov_index])], to=TensorProto.INT64)
                counts.append(b.op("ReduceSum", [is_oov, axis1], keepdims=0))
    if schema.dense:
        b.op("Concat", [b.op("Unsqueeze", [d.name, axis1]) for d in schema.dense], _MODEL + "dense", axis=1)
    total = counts[0]
    for count in counts[1:]:
        total = b.op("Add", [total, count])
    return b, total


def _live_nodes(nodes: Sequence[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes the outputs depend on, in their order (drops e.g. the attention output's branch)."""
    needed = set(outputs)
    live = []
    for node in reversed(nodes):
        if needed & set(node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]


def build_portable(model_bytes: bytes, schema: FeatureSpec, vocabs: Vocabs) -> tuple[bytes, dict]:
    """portable.onnx around the exported `model_bytes`; returns (bytes, manifest entry without sha256)."""
    model = onnx.load_from_string(model_bytes)
    opsets = {o.domain or "": o.version for o in model.opset_import}
    if set(opsets) - {"", "ai.onnx"}:
        raise PortableError(f"model.onnx uses operator domains {sorted(set(opsets) - {'', 'ai.onnx'})}; the "
                            "portable graph allows only the standard ones")
    if model.functions:
        raise PortableError("model.onnx defines local functions; the portable graph is built from flat graphs")
    expected = schema.input_names()
    got = [i.name for i in model.graph.input]
    if got != expected:
        raise PortableError(f"model.onnx has inputs {got}, the schema's are {expected}")
    missing = {"logit", "prob"} - {o.name for o in model.graph.output}
    if missing:
        raise PortableError(f"model.onnx has no output {sorted(missing)}")
    inputs, outputs = portable_interface(schema, vocabs)
    b, oov = _prefix_nodes(schema, vocabs, inputs)

    wrapped = onnx.compose.add_prefix(model, _MODEL, rename_inputs=True, rename_outputs=True)
    model_nodes = _live_nodes(wrapped.graph.node, {_MODEL + "prob", _MODEL + "logit"})
    nodes = b.nodes + model_nodes + [
        helper.make_node("Identity", [_MODEL + "prob"], ["prob"], name=_ENC + "prob"),
        helper.make_node("Identity", [_MODEL + "logit"], ["logit"], name=_ENC + "logit"),
        helper.make_node("Identity", [oov], ["oov"], name=_ENC + "oov"),
    ]
    used = {name for node in nodes for name in node.input}
    initializers = [i for i in wrapped.graph.initializer if i.name in used] + b.constants
    produced = {name for node in nodes for name in node.output}
    graph = helper.make_graph(
        nodes, "din_portable",
        [helper.make_tensor_value_info(e["name"], _ONNX_TYPES[e["dtype"]], e["dims"]) for e in inputs],
        [helper.make_tensor_value_info(e["name"], _ONNX_TYPES[e["dtype"]], e["dims"]) for e in outputs],
        initializer=initializers,
        value_info=[v for v in wrapped.graph.value_info if v.name in produced],
    )
    opset_imports = _opset_imports(opsets.get("", opsets.get("ai.onnx", 0)))
    ir_version = helper.find_min_ir_version_for(opset_imports)
    if ir_version > MAX_IR_VERSION:
        raise PortableError(f"opset {opsets} needs IR version {ir_version}; onnxruntime 1.17 reads up to "
                            f"{MAX_IR_VERSION}: export model.onnx at a lower --opset")
    portable = helper.make_model(graph, opset_imports=opset_imports, ir_version=ir_version,
                                 producer_name="din-toolkit", doc_string="DIN scoring raw ids (portable.onnx)")
    props = {p.key: p.value for p in model.metadata_props}
    helper.set_model_props(portable, {**props, "din.graph": "portable"})
    check_portable(portable, inputs, outputs)
    entry = {"file": PORTABLE_FILE, "opset": opset_imports[0].version, "ml_opset": ML_OPSET,
             "ir_version": ir_version, "inputs": inputs, "outputs": outputs}
    return portable.SerializeToString(), entry


def check_portable(model: onnx.ModelProto, inputs: list[dict], outputs: list[dict]) -> None:
    """Valid ONNX (strict shape inference), standard domains only, IR <= 9, the declared interface."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise PortableError(f"portable graph is not valid ONNX: {str(e).splitlines()[0]}") from e
    if model.ir_version > MAX_IR_VERSION:
        raise PortableError(f"portable graph has IR version {model.ir_version} > {MAX_IR_VERSION}")
    domains = {n.domain for n in model.graph.node} - {"", ML_DOMAIN}
    if domains:
        raise PortableError(f"portable graph uses non-standard operator domains {sorted(domains)}")
    for kind, declared, values in (("input", inputs, model.graph.input), ("output", outputs, model.graph.output)):
        got = [(v.name, v.type.tensor_type.elem_type) for v in values]
        want = [(e["name"], _ONNX_TYPES[e["dtype"]]) for e in declared]
        if got != want:
            raise PortableError(f"portable graph {kind}s {got} differ from the declared {want}")


# --- A model directory --------------------------------------------------------------------------------


def portable_entry(data: bytes, entry: dict) -> dict:
    """The manifest's "portable" entry: file, sha256, versions, interface."""
    return {"file": entry["file"], "sha256": hashlib.sha256(data).hexdigest(),
            **{k: v for k, v in entry.items() if k != "file"}}


def judge_scorer_check(check: dict, tolerance: float) -> dict:
    """`check` if portable.onnx scored every case like `Scorer.score`, else PortableError naming the case."""
    for case in check["cases"]:
        if not case["shape_ok"]:
            raise PortableError(f"portable.onnx returns the wrong shape at {case['case']}")
        if not case["prob"] <= tolerance:  # also catches NaN
            raise PortableError(f"portable.onnx differs from Scorer.score by {case['prob']:.3g} at {case['case']} "
                                f"(allowed {tolerance:g})")
        if not case["oov_equal"]:
            raise PortableError(f"portable.onnx counts other OOV ids than din_runtime at {case['case']}")
    return check


def add_portable(model_dir: str | Path, force: bool = False) -> dict:
    """Build MODEL_DIR/portable.onnx from its model.onnx and vocabularies, check it against `Scorer.score`
    on raw requests, then write it and its manifest entry; returns the entry."""
    model_dir = Path(model_dir)
    try:
        scorer = Scorer.load(model_dir)
    except DinRuntimeError as e:
        raise PortableError(f"cannot load {model_dir}: {e}") from e
    manifest = dict(scorer.manifest.raw)
    if "portable" in manifest and not force:
        raise PortableError(f"{model_dir} already has {manifest['portable'].get('file')}; pass --force to rebuild it")
    # the spec and vocabularies Scorer.load has read and checked
    data, entry = build_portable(scorer.manifest.model_path.read_bytes(), scorer.manifest.spec,
                                 scorer.manifest.vocabs)
    entry = portable_entry(data, entry)
    try:
        entry["check"] = judge_scorer_check(check_against_scorer(data, entry, scorer), scorer_tolerance(manifest))
    except PortableRunError as e:
        raise PortableError(str(e)) from e
    write_bytes_atomic(model_dir / PORTABLE_FILE, data)
    manifest["portable"] = entry
    write_json_atomic(model_dir / "manifest.json", manifest)
    return entry
