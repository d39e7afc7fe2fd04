"""Static int8 quantisation of an exported graph, calibrated on rows of the run's dataset.

What is quantised: the Linears of the attention's activation unit after its first layer (see
PER_POSITION), which run once per history position (B x L rows) and have constant weights, except its
one-column output Linear (see `quantized_nodes`), and the unit's first-layer product with a computed
weight (PRODUCT): `k A(q)^T` per row in the optimised graph, `[k, q * k] W^T` in the plain one. Each
gets an int8 input whose scale and zero point were measured once, on calibration rows, and stored in
the file (QDQ format: QuantizeLinear / DequantizeLinear pairs), per-output-channel int8 weights, and a
float output: no QuantizeLinear after the node, so onnxruntime fuses each Gemm into one QGemm (u8 x s8,
bias added in int32, float out) and the product into MatMulIntegerToFloat, with no requantisation pass
and no error from an int8 output. Nothing about a scale depends on the batch being scored, so a row's score is
bitwise the same alone or in any batch; dynamic quantisation, which takes each run's own min and max,
scored one request 0.02 differently alone than inside a batch (docs/export.md, "int8").

Why Gemms and not MatMul + Add: onnxruntime's MatMulAddFusion (a level-1 rewrite) turns DQ -> MatMul ->
Add into a float Gemm on the dequantised weight before its QDQ fusions run, so the int8 kernel is never
used; a quantised Gemm is fused into QGemm as it is. Why a float output: the previous recipe (QDQ on the
output as well -> QLinearMatMul + DequantizeLinear + Add) cost two extra passes over the B x L rows and
was slower than fp32 (0.83x at B=256).

The rest stays fp32: the MLP runs once per row (1-2% of the time at B=256, L=100) and, quantised too,
took the synthetic paper run's worst validation difference from 0.022 to 0.031 for no speed; the
query's projection runs once per row too, and quantising its input would also quantise the query that
builds A(q); elementwise work (Dice, sigmoid, the adds) has no int8 kernel.

The calibration rows are a seeded sample of the TRAINING split, not the validation rows that
verification judges the AUC on: calibrating on the rows that judge the result would flatter it (a
dataset directory without a training split calibrates on its validation rows; the manifest's
"calibration" says which).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from din_export.data import has_split, load_split
from din_export.schema import Schema

CALIBRATION_ROWS = 2048
CALIBRATION_BATCH = 256
CANDIDATE_USERS = 8  # users whose history scores CALIBRATION_BATCH candidates each, for candidates.onnx
# The activation unit's Linears after its first layer, by module scope (recorded by the exporter in each
# node's metadata): `unit.tail` in the optimised and candidate graphs, `unit.mlp` in the plain one.
PER_POSITION = re.compile(r"\bunit\.(tail|mlp)\.")
# The unit's first-layer product: the MatMul whose innermost scope is the unit itself, whose second input
# is computed and whose first is per position, (B, L, .) (FactoredActivationUnit.forward: k A(q)^T;
# model.ActivationUnit.forward in the plain graph: [k, q * k] times the regrouped weight, computed there
# from the parameters). Not the query's projection (B, D): quantising it also rounded the query that
# builds A(q). The candidate graph's product runs over one shared history (L, D): it stays fp32.
PRODUCT = re.compile(r"\bunit', '[^']*'\]$")
PER_CHANNEL = True
SCOPES = "pkg.torch.onnx.name_scopes"

Feeds = dict[str, np.ndarray]


def calibration_rows(data_dir: Path, schema: Schema, rows: int = CALIBRATION_ROWS,
                     seed: int = 0) -> tuple[str, Feeds]:
    """(split, a seeded sample of `rows` of its rows in their stored order): the training split, or the
    validation split for a dataset directory that holds no training split."""
    name = "train" if has_split(data_dir, "train") else "valid"
    split = load_split(data_dir, name, schema)
    n = split.n
    keep = np.sort(np.random.default_rng(seed).choice(n, rows, replace=False)) if n > rows else np.arange(n)
    return name, split.take(keep, width=schema.max_len)


def batch_feeds(rows: Feeds, schema: Schema, batch: int = CALIBRATION_BATCH) -> list[Feeds]:
    """The model's inputs in batches, each history cut to the batch's longest (as served)."""
    names = schema.input_names()
    n = len(rows["label"])
    feeds = []
    for start in range(0, n, batch):
        part = slice(start, min(start + batch, n))
        width = max(1, int(rows["hist_len"][part].max()))
        feeds.append({k: rows[k][part][:, :width] if k in schema.histories else rows[k][part] for k in names})
    return feeds


def candidate_feeds(rows: Feeds, schema: Schema, users: int = CANDIDATE_USERS,
                    batch: int = CALIBRATION_BATCH) -> list[Feeds]:
    """Inputs of the candidate graph: one user's history (1, L) with the first rows' targets as candidates,
    for `users` users spread over the history lengths (the shortest to the longest: users with short
    histories only would leave the long ones' ranges outside the calibration)."""
    n = min(batch, len(rows["label"]))
    by_length = np.argsort(rows["hist_len"], kind="stable")
    picks = by_length[np.linspace(0, len(by_length) - 1, min(users, len(by_length))).round().astype(int)]
    feeds = []
    for u in picks:
        width = max(1, int(rows["hist_len"][u]))
        feed = {k: rows[k][:n] for k in schema.input_names()}
        feed.update({k: rows[k][u:u + 1, :width] for k in schema.histories})
        feed["hist_len"] = rows["hist_len"][u:u + 1]
        feeds.append(feed)
    return feeds


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._feeds: Iterator[Feeds] = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes int8 quantises: the activation unit's constant-weight Gemms and MatMuls after its
    first layer (PER_POSITION) with more than one output column, and the first layer's product (PRODUCT,
    with a per-position input).

    Not the unit's output Linear (one column, the attention score): onnxruntime's integer kernel for a
    one-column product is slower than its fp32 one (0.73x at 2,000 rows) and the quantise pass over its
    input comes on top. Left fp32, the MovieLens paper export ran 1-2% faster at B=1 and within noise of
    the same at B=256, and its worst validation difference halved, as on the synthetic paper run
    (results/export.md, "int8 speed and size")."""
    constants = {i.name: list(i.dims) for i in model.graph.initializer}
    constants |= {n.output[0]: next((list(a.t.dims) for a in n.attribute if a.name == "value"), [])
                  for n in model.graph.node if n.op_type == "Constant"}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.input, *inferred.value_info)}
    chosen = []
    for n in model.graph.node:
        scopes = next((p.value for p in n.metadata_props if p.key == SCOPES), "")
        if n.op_type not in ("Gemm", "MatMul"):
            continue
        if n.input[1] in constants:
            if PER_POSITION.search(scopes) and _output_columns(n, constants[n.input[1]]) > 1:
                chosen.append(n.name)
        elif n.op_type == "MatMul" and PRODUCT.search(scopes) and ranks.get(n.input[0]) == 3:
            chosen.append(n.name)
    return chosen


def _output_columns(node: onnx.NodeProto, weight: list[int]) -> int:
    """Output columns of a Gemm or MatMul with a constant weight of shape `weight`."""
    if len(weight) < 2:
        return 0
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return weight[0] if node.op_type == "Gemm" and trans_b else weight[-1]


def quantize_int8(model: onnx.ModelProto, calibration: Sequence[Feeds],
                  per_channel: bool = PER_CHANNEL) -> onnx.ModelProto:
    """`model` with the nodes of `quantized_nodes` in static QDQ int8: u8 inputs with MinMax ranges over
    `calibration` (the graph's inputs by name), s8 weights, float outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"node_{i}"  # the quantiser selects nodes by name
    nodes = quantized_nodes(model)
    if not nodes:  # the quantiser would take an empty selection as "everything"
        raise ValueError("int8 quantises the attention's activation unit, and this graph has none "
                         "(a base model?): export it in fp32")
    if not calibration:
        raise ValueError("int8 needs calibration rows; the dataset gave none")
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="din-int8-") as tmp:
        source, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, source)
        # the quantiser logs a hint about pre-processing meant for conv nets through the root logger
        root.setLevel(logging.ERROR)
        try:
            quantize_static(source, out, _Reader(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Gemm", "MatMul"], nodes_to_quantize=nodes,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            calibration_providers=["CPUExecutionProvider"],
                            extra_options={
                                # float outputs: QGemm / MatMulIntegerToFloat (module docstring)
                                "OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"],
                                # the product's second input is computed, not a weight
                                "MatMulConstBOnly": False,
                            })
        finally:
            root.setLevel(level)
        quantized = onnx.load(out)
    float_readers(quantized, set(nodes))
    return quantized


def float_readers(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Give every node outside `quantized` the float tensor a QuantizeLinear -> DequantizeLinear pair was
    made from, in place, and drop the pairs' DequantizeLinears nothing reads any more; returns how many
    inputs were rewired. The quantiser puts one pair on a tensor for all its readers: the keys that the
    product reads quantised would reach the attention pooling, and so the MLP, rounded as well, through
    one more pass over the B x L x D keys."""
    quantize_input = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    source = {n.output[0]: quantize_input[n.input[0]] for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in quantize_input}
    rewired = 0
    for n in model.graph.node:
        if n.name in quantized or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(n.input):
            if name in source:
                n.input[i] = source[name]
                rewired += 1
    read = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    kept = [n for n in model.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] not in read)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return rewired
