"""Triton Inference Server layout for an exported model: REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx.

The config is written from the manifest's "inputs"/"outputs" entries, the same declaration the graph
was exported from. Batch is implicit in Triton when max_batch_size > 0, so each tensor's leading
"batch" dim is dropped; other named dims become -1. A per-example scalar (dims ["batch"]) is declared
`dims: [ 1 ]` with `reshape: { shape: [ ] }`, because Triton has no rank-0 per-example tensors.
Dynamic batching only merges requests whose non-batch shapes match, so clients should pad histories
to a common length (e.g. max_len) to benefit from it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from din_runtime.fs import publish_dir, temp_dir_beside, write_bytes_atomic

TRITON_DTYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "string": "TYPE_STRING"}
MAX_BATCH_SIZE = 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


class TritonError(ValueError):
    """The Triton model cannot be described or written (bad name, unsupported tensor)."""


def tensor_block(entry: dict[str, Any]) -> str:
    dims = list(entry["dims"])
    if not dims or dims[0] != "batch":
        raise TritonError(f"tensor {entry['name']!r} has dims {dims}; Triton's implicit batch needs 'batch' first")
    if entry["dtype"] not in TRITON_DTYPES:
        raise TritonError(f"tensor {entry['name']!r} has dtype {entry['dtype']!r}, not one of {list(TRITON_DTYPES)}")
    rest = dims[1:]
    lines = [f'    name: "{entry["name"]}"', f"    data_type: {TRITON_DTYPES[entry['dtype']]}"]
    if rest:
        lines.append(f"    dims: [ {', '.join('-1' if isinstance(d, str) else str(d) for d in rest)} ]")
    else:
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                  max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """config.pbtxt text for an onnxruntime_onnx model with the given manifest-style tensors."""
    if not NAME_PATTERN.fullmatch(name):
        raise TritonError(f"Triton model name {name!r} must match {NAME_PATTERN.pattern}")
    return "\n".join([
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(tensor_block(e) for e in inputs) + "\n]",
        "output [\n" + ",\n".join(tensor_block(e) for e in outputs) + "\n]",
        "dynamic_batching { }",
        "",
    ])


def write_triton_model(repo: Path, name: str, model_bytes: bytes, inputs: list[dict[str, Any]],
                       outputs: list[dict[str, Any]], force: bool = False) -> Path:
    """Write REPO/NAME (config.pbtxt, 1/model.onnx) in a temporary sibling published with `publish_dir`:
    it appears whole or not at all, and a model it replaces stays servable until the new one is in place."""
    config = triton_config(name, inputs, outputs)
    target = repo / name
    if target.exists() and not force:
        raise TritonError(f"{target} already exists; pass --force to replace it")
    repo.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(target)
    try:
        write_bytes_atomic(tmp / "config.pbtxt", config.encode())
        write_bytes_atomic(tmp / "1" / "model.onnx", model_bytes)
        publish_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target
