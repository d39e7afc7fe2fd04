"""What int8 quantises (din_export/quantize.py): the activation unit's per-position Linears with more than
one output column and its first-layer product; the unit's one-column output Linear stays fp32."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_helpers import exported
from onnx import helper, numpy_helper

from din_export.export import MODEL_FILE
from din_export.quantize import PER_POSITION, SCOPES, quantized_nodes


def scope(node: onnx.NodeProto) -> str:
    return next((p.value for p in node.metadata_props if p.key == SCOPES), "")


def session_graph(path: Path) -> onnx.GraphProto:
    """The graph onnxruntime's CPU session runs, after its own fusions."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # it warns that the dump is specific to this machine
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


@pytest.mark.parametrize("name", ["fp32", "plain"])
def test_the_one_column_output_linear_is_not_chosen(name: str) -> None:
    graph = onnx.load(exported(name) / MODEL_FILE)
    weights = {i.name: list(i.dims) for i in graph.graph.initializer}
    weights |= {n.output[0]: list(n.attribute[0].t.dims) for n in graph.graph.node if n.op_type == "Constant"}
    unit = {n.name: n for n in graph.graph.node if n.op_type in ("Gemm", "MatMul") and "unit" in scope(n)}
    with_weight = {k: n for k, n in unit.items() if n.input[1] in weights}
    # the tiny model's unit is 8 -> 4 -> 1 after its product: one Linear of each width
    one_column = [k for k, n in with_weight.items() if 1 in weights[n.input[1]]]
    wider = [k for k, n in with_weight.items() if k not in one_column and PER_POSITION.search(scope(n))]
    assert len(one_column) == 1 and wider, (name, with_weight)
    chosen = quantized_nodes(graph)
    assert one_column[0] not in chosen and set(wider) <= set(chosen)
    # and the product, whose second input is computed
    assert any(unit[k].input[1] not in weights for k in chosen)


def test_a_one_column_gemm_is_told_by_its_transposed_weight() -> None:
    """Gemm with transB = 1 keeps its weight as (columns, inputs), MatMul as (inputs, columns)."""
    tail = "['', 'model', 'model.unit', 'model.unit.tail', 'model.unit.tail.1', 'linear']"
    cases = [("Gemm", (1, 4), 1), ("Gemm", (4, 1), 0), ("MatMul", (4, 1), None), ("Gemm", (3, 4), 1),
             ("MatMul", (4, 3), None)]
    nodes, inits = [], []
    for i, (op, shape, trans_b) in enumerate(cases):
        inits.append(numpy_helper.from_array(np.full(shape, 0.5, dtype=np.float32), f"w{i}"))
        node = helper.make_node(op, ["x", f"w{i}"], [f"y{i}"], name=f"n{i}",
                                **({"transB": trans_b} if trans_b is not None else {}))
        node.metadata_props.add(key=SCOPES, value=tail)
        nodes.append(node)
    outputs = [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, None) for i in range(len(nodes))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
                              outputs, inits)
    assert quantized_nodes(helper.make_model(graph)) == ["n3", "n4"]


def test_int8_runs_the_wide_linear_and_the_product_as_integer_kernels_and_the_score_in_fp32() -> None:
    graph = session_graph(exported("int8") / MODEL_FILE)
    ops = [n.op_type for n in graph.node]
    assert ops.count("QGemm") == 1 and ops.count("MatMulIntegerToFloat") == 1, ops
    assert "DequantizeLinear" not in ops and "QLinearMatMul" not in ops
    # the keys, A(q) and the wide Linear's input: nothing quantised for the one-column Linear
    assert ops.count("QuantizeLinear") == 3, ops
    # which runs as a float Gemm on its fp32 weight
    weights = {i.name: (i.data_type, list(i.dims)) for i in graph.initializer}
    output_linear = [n for n in graph.node if n.op_type == "Gemm" and ".unit.tail." in n.input[1]]
    assert [weights[n.input[1]] for n in output_linear] == [(onnx.TensorProto.FLOAT, [1, 4])]
