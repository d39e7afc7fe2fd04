"""A small model directory built with onnx.helper, with the inputs and outputs of docs/design.md.

It lets the runtime be tested without torch or the exporter. The graph is not a DIN, but it depends on
every input the way a DIN must: each id through an embedding table, each history position masked by
`hist_len` and weighted by its position (so left- instead of right-padding changes the score), dense
features standardised inside the graph. `reference_prob` computes the same function in numpy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_LEN = 4
VOCABS: dict[str, list[str]] = {
    "user_id": [f"u{i}" for i in range(1, 7)],
    "gender": ["F", "M"],
    "item_id": [str(i) for i in range(100, 120)],
    "cate_id": ["Comedy", "Drama", "Action", "Horror"],
}
SCHEMA = {
    "version": 1, "source": "fixture", "protocol": "test", "max_len": MAX_LEN, "group": "user_id",
    "sparse": [{"name": "user_id", "vocab": "user_id"}, {"name": "gender", "vocab": "gender"}],
    "dense": [{"name": "age", "mean": 30.0, "std": 10.0}, {"name": "price", "mean": 5.0, "std": 2.0}],
    "behaviour": [{"target": "item_id", "history": "hist_item_id", "vocab": "item_id"},
                  {"target": "cate_id", "history": "hist_cate_id", "vocab": "cate_id"}],
    "vocab_sizes": {name: len(ids) + 2 for name, ids in VOCABS.items()},
}
INPUTS = ["user_id", "gender", "item_id", "cate_id", "hist_item_id", "hist_cate_id", "hist_len", "dense"]
SPARSE_VOCAB = {"user_id": "user_id", "gender": "gender", "item_id": "item_id", "cate_id": "cate_id",
                "hist_item_id": "item_id", "hist_cate_id": "cate_id"}


def weights(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {f"W_{name}": rng.normal(0, 0.5, size).astype(np.float32) for name, size in SCHEMA["vocab_sizes"].items()}
    w["w_dense"] = np.array([0.3, -0.2], dtype=np.float32)
    w["mean"] = np.array([d["mean"] for d in SCHEMA["dense"]], dtype=np.float32)
    w["std"] = np.array([d["std"] for d in SCHEMA["dense"]], dtype=np.float32)
    return w


def reference_prob(arrays: dict[str, np.ndarray], seed: int = 7) -> np.ndarray:
    """The fixture graph's function in numpy (float64), from encoded arrays."""
    w = {k: v.astype(np.float64) for k, v in weights(seed).items()}
    hist_item, hist_cate = arrays["hist_item_id"], arrays["hist_cate_id"]
    positions = np.arange(hist_item.shape[1])
    mask = positions[None, :] < arrays["hist_len"][:, None]
    target = w["W_item_id"][arrays["item_id"]]
    attention = (w["W_item_id"][hist_item] * target[:, None] + w["W_cate_id"][hist_cate] * (1 + 0.1 * positions)) * mask
    logit = (w["W_user_id"][arrays["user_id"]] + w["W_gender"][arrays["gender"]] + target
             + w["W_cate_id"][arrays["cate_id"]] + attention.sum(axis=1)
             + ((arrays["dense"] - w["mean"]) / w["std"]) @ w["w_dense"] + 0.25)
    return 1 / (1 + np.exp(-logit))


def build_graph(with_attention: bool = False, seed: int = 7) -> onnx.ModelProto:
    w = weights(seed)
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.array(v, dtype=dt), k) for k, v, dt in
              [("zero", 0, np.int64), ("one", 1, np.int64), ("axis1", [1], np.int64), ("tenth", 0.1, np.float32),
               ("onef", 1.0, np.float32)]]
    n = helper.make_node
    nodes = [
        n("Constant", [], ["bias"], value=numpy_helper.from_array(np.array(0.25, dtype=np.float32), "bias_value")),
        n("Gather", ["W_user_id", "user_id"], ["e_user"]),
        n("Gather", ["W_gender", "gender"], ["e_gender"]),
        n("Gather", ["W_item_id", "item_id"], ["e_item"]),
        n("Gather", ["W_cate_id", "cate_id"], ["e_cate"]),
        n("Gather", ["W_item_id", "hist_item_id"], ["e_hist_item"]),
        n("Gather", ["W_cate_id", "hist_cate_id"], ["e_hist_cate"]),
        n("Shape", ["hist_item_id"], ["seq_1"], start=1, end=2),
        n("Squeeze", ["seq_1"], ["seq"]),
        n("Range", ["zero", "seq", "one"], ["positions"]),
        n("Unsqueeze", ["hist_len", "axis1"], ["hist_len_col"]),
        n("Less", ["positions", "hist_len_col"], ["mask_bool"]),
        n("Cast", ["mask_bool"], ["mask"], to=TensorProto.FLOAT),
        n("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
        n("Mul", ["positions_f", "tenth"], ["pos_scaled"]),
        n("Add", ["pos_scaled", "onef"], ["pos_weight"]),
        n("Unsqueeze", ["e_item", "axis1"], ["e_item_col"]),
        n("Mul", ["e_hist_item", "e_item_col"], ["item_term"]),
        n("Mul", ["e_hist_cate", "pos_weight"], ["cate_term"]),
        n("Add", ["item_term", "cate_term"], ["unmasked"]),
        n("Mul", ["unmasked", "mask"], ["attention"]),
        n("ReduceSum", ["attention", "axis1"], ["pooled"], keepdims=0),
        n("Sub", ["dense", "mean"], ["centred"]),
        n("Div", ["centred", "std"], ["standard"]),
        n("MatMul", ["standard", "w_dense"], ["dense_term"]),
        n("Sum", ["e_user", "e_gender", "e_item", "e_cate", "pooled", "dense_term", "bias"], ["logit"]),
        n("Sigmoid", ["logit"], ["prob"]),
    ]
    int_in = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch"])
              for name in ["user_id", "gender", "item_id", "cate_id"]]
    hist_in = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
               for name in ["hist_item_id", "hist_cate_id"]]
    inputs = int_in + hist_in + [helper.make_tensor_value_info("hist_len", TensorProto.INT64, ["batch"]),
                                 helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", 2])]
    outputs = [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch"])]
    if with_attention:
        outputs.append(helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", "seq"]))
    graph = helper.make_graph(nodes, "fixture_din", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def graph_with_renamed_input(seed: int = 7) -> onnx.ModelProto:
    """The fixture graph with its first input (user_id) renamed: a graph another exporter might write."""
    model = build_graph(seed=seed)
    model.graph.input[0].name = "renamed"
    for node in model.graph.node:
        node.input[:] = ["renamed" if i == "user_id" else i for i in node.input]
    return model


def manifest_for(model_bytes: bytes, with_attention: bool = False) -> dict:
    inputs = []
    for name in INPUTS:
        if name == "dense":
            inputs.append({"name": name, "dtype": "float32", "dims": ["batch", 2], "columns": ["age", "price"]})
        elif name == "hist_len":
            inputs.append({"name": name, "dtype": "int64", "dims": ["batch"]})
        else:
            dims = ["batch", "seq"] if name.startswith("hist_") else ["batch"]
            inputs.append({"name": name, "dtype": "int64", "dims": dims, "vocab": SPARSE_VOCAB[name]})
    outputs = [{"name": "logit", "dims": ["batch"]}, {"name": "prob", "dims": ["batch"]}]
    if with_attention:
        outputs.append({"name": "attention", "dims": ["batch", "seq"]})
    return {
        "format": "din-model", "format_version": 1, "model_file": "model.onnx",
        "sha256": hashlib.sha256(model_bytes).hexdigest(), "schema": SCHEMA,
        "vocab_files": {name: f"vocab/{name}.json" for name in VOCABS},
        "padding_index": 0, "oov_index": 1, "inputs": inputs, "outputs": outputs,
        "model": {"name": "fixture"}, "opset": 18, "precision": "fp32", "quantize": None,
    }


def build_model_dir(path: Path, with_attention: bool = False, external_data: bool = False) -> Path:
    """Write a model directory at `path` (created) and return it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab").mkdir(exist_ok=True)
    for name, ids in VOCABS.items():
        (path / "vocab" / f"{name}.json").write_text(json.dumps(ids))
    model = build_graph(with_attention)
    if external_data:
        onnx.save_model(model, path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0)
    else:
        onnx.save_model(model, path / "model.onnx")
    manifest = manifest_for((path / "model.onnx").read_bytes(), with_attention)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def request(i: int = 0, hist: int = 3, **overrides: object) -> dict:
    """A valid raw request row; `i` varies the ids, `hist` is the history length."""
    items = VOCABS["item_id"]
    cates = VOCABS["cate_id"]
    row = {
        "user_id": VOCABS["user_id"][i % 6], "gender": "FM"[i % 2], "age": 20 + i, "price": 1.5 * (i % 5),
        "item_id": items[(3 * i) % 20], "cate_id": cates[i % 4],
        "hist_item_id": [items[(i + k) % 20] for k in range(hist)],
        "hist_cate_id": [cates[(i + k) % 4] for k in range(hist)],
        "label": i % 2,
    }
    row.update(overrides)
    return row
