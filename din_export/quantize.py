"""Static int8 quantisation of an exported graph, calibrated on rows of the run's dataset.

Every MatMul of the attention's activation unit with a constant weight (see IN_SCOPE) gets int8
weights and an int8 input whose scale and zero point were measured once, on calibration rows, and are
stored in the file (QDQ format: QuantizeLinear / DequantizeLinear pairs that onnxruntime fuses into
integer kernels). Nothing about the scale depends on the batch being scored, so a row's score is
bitwise the same alone or in any batch; dynamic quantisation, which takes each run's own min and max,
scored one request 0.02 differently alone than inside a batch (docs/export.md, "int8").

Products of two activations (the attention's per-row `k A(q)^T` and the pooling) stay fp32: their
ranges depend on the query, and a per-tensor scale calibrated on one data set moved probabilities of
random inputs by up to 0.9 when they were quantised too.

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
# Only the activation unit's MatMuls (its module scope, recorded by the exporter in each node's
# metadata, in the plain, optimised and candidate graphs): it runs once per history position, the MLP
# once per row, so the MLP's MatMuls are a small part of the time but were most of the error: on the
# synthetic shoppers' paper-preset run, quantising the MLP too took the worst validation probability
# difference from 0.013 to 0.036 and the AUC loss from 3e-5 to 1.7e-4 (its first layer alone 0.033),
# for no measurable speed (docs/export.md, "int8"). One weight scale per tensor: per output channel was
# no better there (0.017, 3e-5).
PER_CHANNEL = False
IN_SCOPE = re.compile(r"\bunit[.']")
# Not the plain graph's first layer of the unit (`--no-optimize`): its input concatenates q, k, q - k and
# q * k, whose ranges differ by orders of magnitude; one int8 scale for all four moved a MovieLens
# validation probability of the official preset by 0.057 (logit 1.7).
OUT_OF_SCOPE = re.compile(r"unit\.mlp\.linears\.0'")
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


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes of the activation unit (IN_SCOPE, not OUT_OF_SCOPE) whose second input
    is a constant (initializer or Constant node)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    chosen = []
    for n in model.graph.node:
        scopes = next((p.value for p in n.metadata_props if p.key == SCOPES), "")
        if (n.op_type == "MatMul" and n.input[1] in constants and IN_SCOPE.search(scopes)
                and not OUT_OF_SCOPE.search(scopes)):
            chosen.append(n.name)
    return chosen


def quantize_int8(model: onnx.ModelProto, calibration: Sequence[Feeds],
                  per_channel: bool = PER_CHANNEL) -> onnx.ModelProto:
    """`model` with the activation unit's constant-weight MatMuls (`weight_matmuls`) in static QDQ int8
    (weights and their inputs, MinMax ranges over `calibration`, the graph's inputs by name). Gemms must
    already be MatMul + Add."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"node_{i}"  # the quantiser selects nodes by name
    nodes = weight_matmuls(model)
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
                            op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            calibration_providers=["CPUExecutionProvider"])
        finally:
            root.setLevel(level)
        return onnx.load(out)
