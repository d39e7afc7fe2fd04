"""The inference rewrite computes the eval-mode model's function: torch and ONNX Runtime, many shapes."""

from __future__ import annotations

import itertools
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import one_torch_thread
from torch import Tensor, nn

from din_export.model import ACTIVATIONS, DIN, Dice, ModelConfig, PReLU
from din_export.optimize import (
    FactoredActivationUnit,
    MaxPReLU,
    OffsetDice,
    ScaledDice,
    UnfoldedDice,
    candidate_module,
    fold_dice,
    fold_prelu,
    inference_module,
)
from din_export.schema import Behaviour, DenseField, Schema, SparseField

MAX_LEN = 8
TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def make_schema(dense: bool = True, sparse: bool = True) -> Schema:
    return Schema(
        max_len=MAX_LEN,
        behaviour=(Behaviour("item_id", "hist_item_id", "item_id"), Behaviour("cate_id", "hist_cate_id", "cate_id")),
        vocab_sizes={"user_id": 17, "gender": 4, "item_id": 53, "cate_id": 11},
        sparse=(SparseField("user_id", "user_id"), SparseField("gender", "gender")) if sparse else (),
        dense=(DenseField("age", mean=34.0, std=12.0), DenseField("price", mean=5.0, std=2.0)) if dense else (),
    )


def make_batch(schema: Schema, b: int, seq: int, seed: int = 0) -> dict[str, Tensor]:
    """Random ids everywhere (padded positions too: the mask, not the ids, must decide); lengths span
    0 .. seq, and with b > 2 rows 0 and 1 are empty and full."""
    g = torch.Generator().manual_seed(seed)
    x = {s.name: torch.randint(0, schema.vocab_sizes[s.vocab], (b,), generator=g) for s in schema.sparse}
    for beh in schema.behaviour:
        x[beh.target] = torch.randint(0, schema.vocab_sizes[beh.vocab], (b,), generator=g)
        x[beh.history] = torch.randint(0, schema.vocab_sizes[beh.vocab], (b, seq), generator=g)
    x["hist_len"] = torch.randint(0, seq + 1, (b,), generator=g)
    if b > 2:
        x["hist_len"][:2] = torch.tensor([0, seq])
    if schema.dense:
        x["dense"] = torch.randn(b, len(schema.dense), generator=g) * 10 + 30
    return x


def trained(schema: Schema, cfg: ModelConfig, steps: int = 4, seed: int = 0) -> DIN:
    """A few training steps with a large momentum, so every running statistic is far from (0, 1) and
    every Dice alpha, BatchNorm scale and shift is non-trivial (a fold that ignored one would fail)."""
    torch.manual_seed(seed)
    model = DIN(schema, cfg)
    for m in model.modules():
        if hasattr(m, "momentum"):
            m.momentum = 0.7
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for step in range(steps):
        x = make_batch(schema, 32, MAX_LEN, seed=100 + step)
        y = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(step)).float()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(-0.5, 1.5)
            if name.endswith("beta"):  # the official Dice's scale: either sign, as training may leave it
                p.uniform_(-2.0, 2.0)
    return model.eval()


def assert_same_function(model: DIN, opt: nn.Module, x: dict[str, Tensor]) -> None:
    with torch.no_grad():
        logits, weights = model(x, return_attention=True)
        opt_logits, opt_weights = opt(x, return_attention=True)
    assert opt_logits.shape == logits.shape and opt_weights.shape == weights.shape
    assert torch.isfinite(opt_logits).all()
    np.testing.assert_allclose(torch.sigmoid(opt_logits), torch.sigmoid(logits), rtol=0, atol=TOL)
    np.testing.assert_allclose(opt_weights, weights, rtol=TOL, atol=TOL)


CONFIGS = [
    ModelConfig(model=m, attention_norm=norm, attention_activation=act, mlp_activation=act, embed_dim=6)
    for m, norm, act in itertools.product(("din", "base"), ("none", "softmax"), ACTIVATIONS)
    if m == "din" or norm == "none"  # the base model has no attention to normalise
]
SHAPES = [(1, 0), (1, 1), (3, 0), (1, MAX_LEN), (7, 5), (16, MAX_LEN), (5, 2 * MAX_LEN)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.model}-{c.attention_norm}-{c.attention_activation}")
def test_same_function_as_eval_model_at_many_shapes(cfg: ModelConfig) -> None:
    schema = make_schema()
    model = trained(schema, cfg)
    opt = inference_module(model)
    for b, seq in SHAPES:
        assert_same_function(model, opt, make_batch(schema, b, seq, seed=b * 31 + seq))


@pytest.mark.parametrize("cfg", [
    ModelConfig(mlp_input_bn=False, embed_dim=5),
    ModelConfig(dice_mode="official", attention_norm="softmax", embed_dim=5),
    ModelConfig(use_hist_sum=False, embed_dim=5),
    ModelConfig(attention_hidden=(), mlp_hidden=(), embed_dim=5),  # each MLP is one Linear
    ModelConfig(attention_hidden=(9,), attention_norm="softmax", mlp_hidden=(12, 7, 5), embed_dim=5),
], ids=["no-input-bn", "official-dice", "no-hist-sum", "no-hidden", "odd-widths"])
def test_same_function_for_other_architectures(cfg: ModelConfig) -> None:
    schema = make_schema()
    model = trained(schema, cfg)
    assert_same_function(model, inference_module(model), make_batch(schema, 9, 2 * MAX_LEN, seed=3))


@pytest.mark.parametrize("cfg", [ModelConfig(embed_dim=5), ModelConfig(mlp_input_bn=False, embed_dim=5)],
                         ids=["input-bn", "no-input-bn"])
def test_input_affine_merged_into_the_first_linear(cfg: ModelConfig) -> None:
    schema = make_schema()
    model = trained(schema, cfg)
    merged = inference_module(model)
    assert isinstance(merged.mlp[0], nn.Linear)
    assert_same_function(model, merged, make_batch(schema, 9, MAX_LEN, seed=11))


@pytest.mark.parametrize("dense,sparse", [(False, True), (True, False), (False, False)])
def test_same_function_without_dense_or_profile_features(dense: bool, sparse: bool) -> None:
    schema = make_schema(dense=dense, sparse=sparse)
    model = trained(schema, ModelConfig(embed_dim=4))
    assert_same_function(model, inference_module(model), make_batch(schema, 6, MAX_LEN, seed=5))


def test_padded_ids_change_nothing() -> None:
    schema = make_schema()
    opt = inference_module(trained(schema, ModelConfig(embed_dim=4)))
    x = make_batch(schema, 12, MAX_LEN, seed=8)
    y = {k: v.clone() for k, v in x.items()}
    padded = torch.arange(MAX_LEN)[None, :] >= x["hist_len"][:, None]
    for beh in schema.behaviour:
        y[beh.history][padded] = (y[beh.history][padded] + 1) % schema.vocab_sizes[beh.vocab]
    with torch.no_grad():
        torch.testing.assert_close(opt(x), opt(y), rtol=0, atol=0)


def assert_folds_between_linears(dice: Dice, form: type) -> None:
    """fold_dice(dice, before, after) leaves `form` and the same function between two Linears."""
    before, after = nn.Linear(4, 5), nn.Linear(5, 3)
    x = torch.randn(50, 4) * 3
    with torch.no_grad():
        expected = after(dice(before(x)))
        folded = fold_dice(dice, before, after)
        got = after(folded(before(x)))
    assert type(folded) is form
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mean,var,alpha,form", [
    (0.7, 2.5, 0.3, OffsetDice), (-3.0, 1e-9, 1.0, ScaledDice), (0.0, 0.0, -0.4, OffsetDice),
    (0.2, 1.5, 0.9995, ScaledDice), (0.2, 1.5, 0.99, OffsetDice), (0.2, 1.5, 40.0, OffsetDice),
], ids=["typical", "vanishing-var-linear", "prelu-limit", "alpha-at-1", "alpha-near-1", "large-alpha"])
def test_fold_dice_is_dice_between_its_linears(mean: float, var: float, alpha: float, form: type) -> None:
    torch.manual_seed(0)
    dice = Dice(5).eval()
    with torch.no_grad():
        dice.running_mean.fill_(mean).add_(torch.randn(5) * 0.1)
        dice.running_var.fill_(var)
        dice.alpha.fill_(alpha)
        dice.alpha[0] = 0.1  # channels differ
    assert_folds_between_linears(dice, form)


@pytest.mark.parametrize("beta,form", [(1.5, OffsetDice), (-0.8, OffsetDice), (0.0, UnfoldedDice)],
                         ids=["positive", "negative", "zero"])
def test_fold_official_dice(beta: float, form: type) -> None:
    """The official Dice's scale a = beta / sqrt(1 + eps) may be negative (folds) or 0 (cannot: unfolded)."""
    torch.manual_seed(0)
    dice = Dice(5, mode="official").eval()
    with torch.no_grad():
        dice.alpha.uniform_(-0.5, 0.9)
        dice.beta.uniform_(0.5, 2.0).mul_(1.0 if beta > 0 else -1.0)
        dice.beta[2] = beta
    assert_folds_between_linears(dice, form)


def test_fold_prelu_is_prelu_between_its_linears() -> None:
    """Every slope: negative, 0, ordinary, 1, above 1 (those channels' signs move into the Linears)."""
    torch.manual_seed(0)
    prelu = PReLU(6)
    with torch.no_grad():
        prelu.alpha.copy_(torch.tensor([-0.5, 0.0, 0.25, 1.0, 1.5, 40.0]))
    before, after = nn.Linear(4, 6), nn.Linear(6, 3)
    x = torch.randn(200, 4) * 3
    with torch.no_grad():
        hidden = before(x)
        expected, expected_out = prelu(hidden), after(prelu(hidden))
        folded = fold_prelu(prelu, before, after)
        got = folded(before(x))
        got_out = after(got)
    assert type(folded) is MaxPReLU
    sign = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    torch.testing.assert_close(got * sign, expected, rtol=0, atol=0)  # bitwise: negation is exact
    torch.testing.assert_close(got_out, expected_out, rtol=1e-6, atol=1e-6)


def test_prelu_exports_as_max_not_where() -> None:
    """onnxruntime's CPU Where is a scalar loop (docs/bench.md, "PReLU as Max"): the optimised graph's
    PReLUs are Mul + Max, one Max each, and no Greater (torch.where(x > 0, ...) exports as one)."""
    schema = make_schema()
    model = trained(schema, ModelConfig(embed_dim=4, attention_activation="prelu", mlp_activation="prelu"))
    graph = onnx.load_from_string(export_onnx(inference_module(model), schema)).graph
    ops = [n.op_type for n in graph.node]
    n_prelu = sum(isinstance(m, PReLU) for m in model.modules())
    assert n_prelu == len(model.cfg.attention_hidden) + len(model.cfg.mlp_hidden)
    assert ops.count("Max") == n_prelu and "Greater" not in ops


def test_snapshot_keeps_the_weights_it_was_made_with() -> None:
    schema = make_schema()
    model = trained(schema, ModelConfig(embed_dim=4))
    opt = inference_module(model)
    x = make_batch(schema, 5, MAX_LEN, seed=2)
    with torch.no_grad():
        before = opt(x).clone()
        for p in model.parameters():
            p.add_(1.0)
        assert not torch.allclose(model(x), before)
        torch.testing.assert_close(opt(x), before, rtol=0, atol=0)
    assert not opt.training


def test_attention_first_layer_is_factored() -> None:
    """No 4D-wide product per position remains: the unit's per-position weight is (D, H) per row."""
    schema = make_schema()
    model = trained(schema, ModelConfig(embed_dim=6, attention_hidden=(10, 4)))
    unit = inference_module(model).unit
    assert isinstance(unit, FactoredActivationUnit)
    dim = 6 * len(schema.behaviour)
    query = torch.randn(3, dim)
    assert unit.per_row_key_weight(query).shape == (3, dim, 10)
    assert all(not isinstance(m, nn.Linear) or m.in_features != 4 * dim for m in unit.modules())


def one_user(x: dict[str, Tensor], schema: Schema) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(candidate-graph inputs: row 0's history once, per-candidate fields as they are; the same rows
    with row 0's history repeated, for the model)."""
    n = len(x["hist_len"])
    shared = (*schema.histories, "hist_len")
    user = {k: v[:1] if k in shared else v for k, v in x.items()}
    repeated = {k: v[:1].expand(n, *v.shape[1:]) if k in shared else v for k, v in x.items()}
    return user, repeated


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.model}-{c.attention_norm}-{c.attention_activation}")
def test_candidate_module_scores_one_user_like_the_model(cfg: ModelConfig) -> None:
    schema = make_schema()
    model = trained(schema, cfg)
    cand = candidate_module(model)
    for n, seq, length in [(1, 0, 0), (1, 1, 1), (4, MAX_LEN, 3), (9, MAX_LEN, 0), (13, 2 * MAX_LEN, 2 * MAX_LEN)]:
        x = make_batch(schema, n, seq, seed=n * 7 + seq)
        x["hist_len"][0] = length
        user, repeated = one_user(x, schema)
        with torch.no_grad():
            got, expected = torch.sigmoid(cand(user)), torch.sigmoid(model(repeated))
        assert got.shape == (n,)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("dense,sparse", [(False, True), (True, False), (False, False)])
def test_candidate_module_without_dense_or_profile_features(dense: bool, sparse: bool) -> None:
    schema = make_schema(dense=dense, sparse=sparse)
    model = trained(schema, ModelConfig(embed_dim=4, use_hist_sum=False))
    user, repeated = one_user(make_batch(schema, 6, MAX_LEN, seed=5), schema)
    with torch.no_grad():
        np.testing.assert_allclose(torch.sigmoid(candidate_module(model)(user)), torch.sigmoid(model(repeated)),
                                   rtol=0, atol=TOL)


# --- ONNX: export with dynamic batch and seq, then compare in onnxruntime at other sizes --------------


class Positional(nn.Module):
    """Positional inputs in schema order -> (logit, attention): the dict forward, as an exporter sees it."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(dict(zip(self.names, inputs, strict=True)), return_attention=True)


def export_onnx(model: nn.Module, schema: Schema) -> bytes:
    names = schema.input_names()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic = tuple({0: batch, 1: seq} if n in schema.histories else {0: batch} for n in names)
    example = make_batch(schema, 3, 7, seed=1)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Positional(model, names).eval(), tuple(example[n] for n in names), dynamo=True,
                                    dynamic_shapes=(dynamic,), input_names=names, output_names=["logit", "attention"],
                                    opset_version=18, external_data=False, verbose=False)
    return program.model_proto.SerializeToString()


@pytest.mark.parametrize("cfg", [ModelConfig(embed_dim=6), ModelConfig(embed_dim=6, attention_norm="softmax"),
                                 ModelConfig(model="base", embed_dim=6, mlp_activation="prelu"),
                                 ModelConfig(embed_dim=6, dice_mode="official", attention_norm="softmax")],
                         ids=["din-none", "din-softmax", "base", "official-dice"])
def test_onnx_export_has_dynamic_shapes_and_matches_the_model(cfg: ModelConfig) -> None:
    schema = make_schema()
    model = trained(schema, cfg)
    session = ort.InferenceSession(export_onnx(inference_module(model), schema), providers=["CPUExecutionProvider"])
    for b, seq in [(1, 0), (1, 1), (16, MAX_LEN), (5, 3 * MAX_LEN), (2, 100)]:
        x = make_batch(schema, b, seq, seed=b + seq)
        logit, attention = session.run(None, {k: v.numpy() for k, v in x.items()})
        with torch.no_grad():
            ref_logit, ref_attention = model(x, return_attention=True)
        assert logit.shape == (b,) and attention.shape == (b, seq)
        np.testing.assert_allclose(1 / (1 + np.exp(-logit)), torch.sigmoid(ref_logit), rtol=0, atol=TOL)
        np.testing.assert_allclose(attention, ref_attention, rtol=TOL, atol=TOL)
