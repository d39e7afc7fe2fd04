"""DeepCTR-Torch's DIN as a peer: built with our dimensions, fed our arrays, given our weights where the
architectures coincide, and trained with its own `fit`."""

from __future__ import annotations

import contextlib
import copy
import io
import time
from typing import Any

import numpy as np
import torch

from din_export.bench.plan import Plan
from din_export.errors import DinExportError
from din_export.evaluate import split_metrics
from din_export.model import DIN, Dice, ModelConfig
from din_export.schema import Schema


def import_deepctr() -> Any:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import deepctr_torch.inputs
            import deepctr_torch.models
    except ImportError as e:
        raise DinExportError("the bench compares with DeepCTR-Torch: pip install 'din-toolkit[bench]'") from e
    return deepctr_torch


def deepctr_din(schema: Schema, cfg: ModelConfig, seq: int, device: str) -> torch.nn.Module:
    """DeepCTR-Torch's DIN with our dimensions: embed_dim per table, the same activation unit widths, the
    same MLP widths, attention normalised iff ours uses softmax. Its MLP cannot use Dice on 2-D inputs
    (Dice(dim=3) asserts), so it uses PReLU there, the function Dice generalises. `seq` fixes the
    column layout of its one float input matrix, so build one per history length measured."""
    dc = import_deepctr()
    Sparse, VarLen, Dense = dc.inputs.SparseFeat, dc.inputs.VarLenSparseFeat, dc.inputs.DenseFeat
    e = cfg.embed_dim
    columns = [Sparse(s.name, schema.vocab_sizes[s.vocab], e, embedding_name=s.vocab) for s in schema.sparse]
    columns += [Sparse(b.target, schema.vocab_sizes[b.vocab], e, embedding_name=b.vocab) for b in schema.behaviour]
    columns += [Dense(d.name, 1) for d in schema.dense]
    columns += [VarLen(Sparse(f"hist_{b.target}", schema.vocab_sizes[b.vocab], e, embedding_name=b.vocab),
                       maxlen=seq, length_name="seq_length") for b in schema.behaviour]
    torch.manual_seed(0)
    return dc.models.DIN(columns, list(schema.targets), att_hidden_size=cfg.attention_hidden,
                         att_activation="Dice", att_weight_normalization=cfg.attention_norm == "softmax",
                         dnn_hidden_units=cfg.mlp_hidden, dnn_activation="prelu", device=device)


def deepctr_inputs(arrays: dict[str, np.ndarray], schema: Schema) -> dict[str, np.ndarray]:
    """Our encoded arrays under DeepCTR's names; dense standardised as our graph does internally."""
    x = {s.name: arrays[s.name] for s in schema.sparse}
    x.update({b.target: arrays[b.target] for b in schema.behaviour})
    x.update({f"hist_{b.target}": arrays[b.history] for b in schema.behaviour})
    x["seq_length"] = arrays["hist_len"]
    for i, d in enumerate(schema.dense):
        x[d.name] = ((arrays["dense"][:, i] - d.mean) / d.scale).astype(np.float32)
    return x


def deepctr_matrix(model: torch.nn.Module, x: dict[str, np.ndarray]) -> torch.Tensor:
    """DeepCTR's single float32 input matrix, columns in its feature_index order."""
    cols = [np.asarray(x[name], dtype=np.float32).reshape(len(x["seq_length"]), -1) for name in model.feature_index]
    return torch.from_numpy(np.concatenate(cols, axis=1))


def copy_weights_into_deepctr(ours: DIN, theirs: torch.nn.Module) -> dict[str, list[str]]:
    """Our weights wherever the two architectures coincide; says which parts kept their random weights."""
    copied, random_kept = [], []
    with torch.no_grad():
        for vocab, table in ours.embeddings.tables.items():
            theirs.embedding_dict[vocab].weight.copy_(table.weight)
        copied.append("embeddings")
        if ours.attention is not None:
            mlp, unit = ours.attention.unit.mlp, theirs.attention.local_att
            for src, dst in zip(mlp.linears, unit.dnn.linears, strict=True):
                dst.load_state_dict(src.state_dict())
            unit.dense.load_state_dict(mlp.out.state_dict())
            for src, dst in zip(mlp.activations, unit.dnn.activation_layers, strict=True):
                if isinstance(src, Dice):  # DeepCTR's Dice: a BatchNorm (affine 1, 0) and alpha (H, 1)
                    if src.mode != "paper":
                        raise ValueError("DeepCTR-Torch's Dice is the paper's: the bench needs dice_mode 'paper'")
                    dst.bn.running_mean.copy_(src.running_mean)
                    dst.bn.running_var.copy_(src.running_var)
                    dst.alpha.copy_(src.alpha.view_as(dst.alpha))
            copied.append("activation unit (Linears and Dice statistics)")
        for src, dst in zip(ours.mlp.linears[1:], theirs.dnn.linears[1:], strict=True):
            dst.load_state_dict(src.state_dict())
        theirs.dnn_linear.weight.copy_(ours.mlp.out.weight)
        theirs.out.bias.copy_(ours.mlp.out.bias)
        copied.append("MLP layers after the first, output layer")
    random_kept.append(f"MLP first layer ({theirs.dnn.linears[0].in_features} inputs vs our "
                       f"{ours.mlp.linears[0].in_features}: no sum-pooled history, no input BatchNorm)")
    random_kept.append("MLP activations (PReLU, one shared slope, vs our Dice)")
    return {"copied": copied, "random": random_kept}


class DeepCTRRun:
    """DeepCTR-Torch's DIN trained with its own `fit`, one epoch per call, selected on validation GAUC
    like ours, on the same splits, batch size, optimiser and learning rate."""

    def __init__(self, schema: Schema, cfg: ModelConfig, splits: dict[str, dict[str, np.ndarray]], plan: Plan) -> None:
        self.schema, self.plan = schema, plan
        self.model = deepctr_din(schema, cfg, schema.max_len, "cuda:0" if plan.device == "cuda" else "cpu")
        self.model.compile(torch.optim.Adam(self.model.parameters(), lr=plan.lr), "binary_crossentropy")
        self.splits = splits
        self.x = {s: deepctr_inputs(a, schema) for s, a in splits.items()}
        self.seconds: list[float] = []
        self.best: tuple[float, int, dict] | None = None

    def epoch(self) -> None:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and a summary line
            self.model.fit(self.x["train"], self.splits["train"]["label"], batch_size=self.plan.train_batch,
                           epochs=1, verbose=0, shuffle=True)
        self.seconds.append(time.perf_counter() - start)
        valid = split_metrics(self.splits["valid"]["label"], self.predict("valid"), self.splits["valid"]["group"])
        if self.best is None or (valid["gauc"] or 0.0) > self.best[0]:
            self.best = (valid["gauc"] or 0.0, len(self.seconds), copy.deepcopy(self.model.state_dict()))

    def predict(self, split: str) -> np.ndarray:
        return self.model.predict(self.x[split], batch_size=4096).reshape(-1)

    def result(self) -> dict[str, Any]:
        assert self.best is not None, "call epoch() first"
        self.model.load_state_dict(self.best[2])
        test = split_metrics(self.splits["test"]["label"], self.predict("test"), self.splits["test"]["group"])
        rows = len(self.splits["train"]["label"])
        return {"best_epoch": self.best[1], "valid_gauc": self.best[0], "test": test,
                "epoch_seconds": self.seconds, "samples_per_s": rows * len(self.seconds) / sum(self.seconds)}
