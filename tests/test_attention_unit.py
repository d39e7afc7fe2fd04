"""The local activation unit: the factored first layer computes the paper's [q, k, q - k, q * k] form,
in training and eval mode, with masks and empty histories, and the inference graphs use the same function."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_optimize import make_batch, make_schema, trained
from torch import Tensor, nn

from din_export.export import graph_spec, to_onnx
from din_export.model import (
    DIN,
    ModelConfig,
    factor_first_layer,
    factored_first_layer,
    history_mask,
    reference_first_layer,
    stacked_first_layer,
)
from din_export.optimize import (
    SHORT_HISTORY_WIDTH,
    ShortHistoryUnit,
    candidate_module,
    inference_module,
)
from din_export.schema import Behaviour, DenseField, Schema, SparseField

TOL = 1e-5
SCHEMA = Schema(
    max_len=8,
    behaviour=(Behaviour("item_id", "hist_item_id", "item_id"), Behaviour("cate_id", "hist_cate_id", "cate_id")),
    vocab_sizes={"item_id": 40, "cate_id": 7, "user_id": 12},
    sparse=(SparseField("user_id", "user_id"),),
    dense=(DenseField("age", mean=30.0, std=10.0),),
)


def first_layer(dim: int, hidden: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4 * dim, hidden)


@pytest.mark.parametrize("form", [factored_first_layer, stacked_first_layer], ids=["per-row", "stacked"])
@pytest.mark.parametrize("b,seq", [(1, 0), (1, 1), (5, 7), (3, 30)])
def test_first_layer_forms_are_the_concatenated_form(form: Callable, b: int, seq: int) -> None:
    dim, hidden = 6, 10
    first = first_layer(dim, hidden)
    query, keys = torch.randn(b, dim), torch.randn(b, seq, dim)
    with torch.no_grad():
        got = form(query, keys, factor_first_layer(first, dim))
        expected = reference_first_layer(query, keys, first)
    assert got.shape == (b, seq, hidden)
    torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)


def test_factor_first_layer_regroups_the_weight() -> None:
    """Each regrouped part is what multiplies q, k and q * k in W [q, k, q - k, q * k]: probe with unit vectors."""
    dim, hidden = 3, 4
    first = first_layer(dim, hidden, seed=1)
    w = factor_first_layer(first, dim)
    eye, zero = torch.eye(dim), torch.zeros(dim, dim)
    with torch.no_grad():
        def linear_part(q: Tensor, k: Tensor) -> Tensor:
            return first(torch.cat([q, k, q - k, q * k], dim=-1)) - first.bias
        torch.testing.assert_close(linear_part(eye, zero), w.query, rtol=TOL, atol=TOL)
        torch.testing.assert_close(linear_part(zero, eye), w.key, rtol=TOL, atol=TOL)
        # q = k = e_d: (Wq + Wd) + (Wk - Wd) + Wp, the product's part alone left after the two above
        torch.testing.assert_close(linear_part(eye, eye) - w.query - w.key, w.product, rtol=TOL, atol=TOL)
    torch.testing.assert_close(w.bias, first.bias, rtol=0, atol=0)


@pytest.mark.parametrize("n,seq", [(1, 0), (1, 5), (4, 1), (9, 12)])
def test_shared_history_is_every_query_against_the_same_keys(n: int, seq: int) -> None:
    """keys (L, D): the candidate graph's one GEMM; (L, C, H) is the per-row form with the keys repeated."""
    dim, hidden = 5, 7
    w = factor_first_layer(first_layer(dim, hidden, seed=2), dim)
    query, keys = torch.randn(n, dim), torch.randn(seq, dim)
    with torch.no_grad():
        shared = factored_first_layer(query, keys, w)
        repeated = factored_first_layer(query, keys.expand(n, seq, dim), w)
    assert shared.shape == (seq, n, hidden)
    torch.testing.assert_close(shared.transpose(0, 1), repeated, rtol=TOL, atol=TOL)


def inputs(b: int, seq: int, lengths: list[int], seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    dim = 8
    return torch.randn(b, dim, generator=g), torch.randn(b, seq, dim, generator=g), history_mask(
        torch.tensor(lengths), seq)


CONFIGS = [ModelConfig(embed_dim=4), ModelConfig(embed_dim=4, dice_mode="official"),
           ModelConfig(embed_dim=4, attention_activation="prelu"), ModelConfig(embed_dim=4, attention_hidden=())]
CASES = [(4, 6, [0, 3, 6, 1]), (1, 0, [0]), (3, 5, [0, 0, 0]), (2, 9, [9, 9])]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["dice", "official-dice", "prelu", "no-hidden"])
@pytest.mark.parametrize("b,seq,lengths", CASES, ids=["mixed", "empty-row", "all-empty", "full"])
def test_unit_is_the_reference_in_training_and_eval(cfg: ModelConfig, b: int, seq: int, lengths: list[int]) -> None:
    """Scores, Dice's masked batch statistics and their running averages, and every parameter's gradient."""
    torch.manual_seed(0)
    factored = DIN(SCHEMA, cfg).attention.unit
    with torch.no_grad():
        for p in factored.parameters():
            p.uniform_(-0.5, 0.5)
    reference = copy.deepcopy(factored)
    query, keys, mask = inputs(b, seq, lengths)
    for training in (True, False):
        factored.train(training)
        reference.train(training)
        got = factored(query, keys, mask)
        expected = reference.forward_reference(query, keys, mask)
        assert got.shape == (b, seq) and torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)
        if training:
            (got * mask).sum().backward()
            (expected * mask).sum().backward()
            for (name, p), q in zip(factored.named_parameters(), reference.parameters(), strict=True):
                assert (p.grad is None) == (q.grad is None), name
                if p.grad is not None:
                    torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=TOL, msg=name)
            for buf, ref_buf in zip(factored.buffers(), reference.buffers(), strict=True):
                torch.testing.assert_close(buf, ref_buf, rtol=TOL, atol=TOL)


def test_inference_and_candidate_graphs_score_like_the_reference() -> None:
    """The optimised unit (folded Dice, constant weights) and the candidate graph's one-GEMM layout against
    the paper's form, on the raw scores (before the softmax temperature, which the optimised unit folds in)."""
    model = trained(make_schema(), ModelConfig(embed_dim=4))
    query, keys, mask = inputs(5, 7, [0, 7, 3, 1, 7], seed=3)
    with torch.no_grad():
        expected = model.attention.unit.forward_reference(query, keys, mask)
        torch.testing.assert_close(inference_module(model).unit(query, keys), expected, rtol=TOL, atol=TOL)
        one_user = expected[1]  # row 1 has a full history: its keys against every query
        scores = candidate_module(model).scores(query, keys[1])
        per_query = torch.stack([model.attention.unit.forward_reference(q[None], keys[1:2], mask[1:2])[0]
                                 for q in query])
    torch.testing.assert_close(scores, per_query, rtol=TOL, atol=TOL)
    torch.testing.assert_close(scores[1], one_user, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("cfg", [ModelConfig(embed_dim=4), ModelConfig(embed_dim=4, attention_norm="softmax"),
                                 ModelConfig(embed_dim=4, dice_mode="official", attention_activation="prelu")],
                         ids=["din", "softmax", "official-prelu"])
def test_short_history_graph_is_the_model_in_torch_and_onnxruntime(cfg: ModelConfig) -> None:
    schema = make_schema()
    model = trained(schema, cfg)
    short = inference_module(model, short_history=True)
    assert isinstance(short.unit, ShortHistoryUnit)
    session = ort.InferenceSession(to_onnx(short, schema, graph_spec(schema), 18, (4, 5)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for b, seq in [(1, 0), (1, 1), (3, 0), (6, SHORT_HISTORY_WIDTH), (4, 2 * SHORT_HISTORY_WIDTH)]:
        x = make_batch(schema, b, seq, seed=b + seq)
        with torch.no_grad():
            expected = torch.sigmoid(model(x)).numpy()
            got = torch.sigmoid(short(x)).numpy()
        onnx_prob = session.run(["prob"], {k: v.numpy() for k, v in x.items()})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
        np.testing.assert_allclose(onnx_prob, expected, rtol=0, atol=TOL)
