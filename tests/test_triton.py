"""Triton layout: config.pbtxt names the same inputs, outputs, dtypes and dims as the ONNX model beside it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import onnx
import pytest
from export_helpers import exported, exported_int64_ids, triton_portable_repo, triton_repo

from din_export.export import MODEL_FILE
from din_export.portable import PORTABLE_FILE
from din_export.triton import TritonError, triton_config, write_triton_model

TOKEN = re.compile(r'\s*(?:(?P<str>"[^"]*")|(?P<punct>[{}\[\]:,])|(?P<word>[^\s{}\[\]:,"]+))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Protobuf text format, the subset Triton configs use: `key: value`, `key { ... }`, `key: [ ... ]`,
    `key [ {...}, ... ]`. Repeated keys collect into lists."""
    tokens = [m.group(m.lastgroup) for m in TOKEN.finditer(text) if m.group(m.lastgroup)]
    pos = 0

    def value() -> Any:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        if tok.startswith('"'):
            return tok[1:-1]
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end: str | None) -> dict[str, Any]:
        nonlocal pos
        fields: dict[str, Any] = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            fields.setdefault(key, []).append(value())
        pos += 1
        return {k: v[0] if len(v) == 1 else v for k, v in fields.items()}

    return message(None)


ONNX_TO_TRITON = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT: "TYPE_FP32",
                  onnx.TensorProto.STRING: "TYPE_STRING"}


def triton_view(value: onnx.ValueInfoProto) -> dict[str, Any]:
    """How Triton must see an ONNX graph tensor: batch dropped, symbolic dims -1, rank-1 as [1] reshaped to []."""
    dims = value.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    rest = [-1 if d.dim_param else d.dim_value for d in dims[1:]]
    view = {"name": value.name, "data_type": ONNX_TO_TRITON[value.type.tensor_type.elem_type], "dims": rest or [1]}
    if not rest:
        view["reshape"] = {"shape": []}
    return view


def test_config_matches_the_model_it_serves() -> None:
    folder = triton_repo() / "din"
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    graph = onnx.load(folder / "1" / MODEL_FILE)
    assert config["name"] == "din" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] > 0 and "dynamic_batching" in config
    assert config["input"] == [triton_view(v) for v in graph.graph.input]
    assert config["output"] == [triton_view(v) for v in graph.graph.output]
    assert [o["name"] for o in config["output"]] == ["logit", "prob", "attention"]
    model_dir_bytes = (exported("fp32") / MODEL_FILE).read_bytes()
    assert (folder / "1" / MODEL_FILE).read_bytes() == model_dir_bytes
    assert sorted(p.name for p in triton_repo().iterdir()) == ["din"]


def test_triton_portable_serves_raw_ids() -> None:
    """--triton-portable: the portable graph, raw string ids as TYPE_STRING, int64 ids as TYPE_INT64, no encoder."""
    folder = triton_portable_repo() / "din"
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    graph = onnx.load(folder / "1" / MODEL_FILE)
    assert config["input"] == [triton_view(v) for v in graph.graph.input]
    assert config["output"] == [triton_view(v) for v in graph.graph.output]
    types = {i["name"]: i["data_type"] for i in config["input"]}
    assert types == {"user_id": "TYPE_STRING", "item_id": "TYPE_INT64", "cate_id": "TYPE_STRING",
                     "hist_item_id": "TYPE_INT64", "hist_cate_id": "TYPE_STRING", "hist_len": "TYPE_INT64",
                     "age": "TYPE_FP32"}
    assert [i["dims"] for i in config["input"] if i["name"] == "hist_cate_id"] == [[-1]]
    assert [o["name"] for o in config["output"]] == ["prob", "logit", "oov"]
    assert (folder / "1" / MODEL_FILE).read_bytes() == (exported_int64_ids() / PORTABLE_FILE).read_bytes()


def test_the_parser_reads_what_triton_writes() -> None:
    text = """name: "m"
max_batch_size: 8
input [
  {
    name: "a"
    dims: [ 1 ]
    reshape: { shape: [ ] }
  },
  { name: "b" dims: [ -1, 3 ] }
]
dynamic_batching { }
"""
    assert parse_pbtxt(text) == {"name": "m", "max_batch_size": 8, "dynamic_batching": {},
                                 "input": [{"name": "a", "dims": [1], "reshape": {"shape": []}},
                                           {"name": "b", "dims": [-1, 3]}]}


def test_config_rejects_what_triton_cannot_serve() -> None:
    ok = [{"name": "x", "dtype": "int64", "dims": ["batch"]}]
    with pytest.raises(TritonError, match="must match"):
        triton_config("../escape", ok, ok)
    with pytest.raises(TritonError, match="'batch' first"):
        triton_config("m", [{"name": "x", "dtype": "int64", "dims": ["seq"]}], ok)
    with pytest.raises(TritonError, match="dtype 'float64'"):
        triton_config("m", [{"name": "x", "dtype": "float64", "dims": ["batch"]}], ok)
    dense = parse_pbtxt(triton_config("m", [{"name": "dense", "dtype": "float32", "dims": ["batch", 4]}], ok))
    assert dense["input"] == [{"name": "dense", "data_type": "TYPE_FP32", "dims": [4]}]


def test_write_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    tensors = [{"name": "x", "dtype": "int64", "dims": ["batch"]}]
    target = write_triton_model(tmp_path, "m", b"first", tensors, tensors)
    with pytest.raises(TritonError, match="already exists"):
        write_triton_model(tmp_path, "m", b"second", tensors, tensors)
    assert (target / "1" / MODEL_FILE).read_bytes() == b"first"
    write_triton_model(tmp_path, "m", b"second", tensors, tensors, force=True)
    assert hashlib.sha256((target / "1" / MODEL_FILE).read_bytes()).digest() == hashlib.sha256(b"second").digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
