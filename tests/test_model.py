"""The DIN model: masking, empty histories, Dice semantics, attention modes, the MBA regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from din_export.model import DIN, Dice, MBARegularizer, ModelConfig, history_mask
from din_export.schema import Behaviour, DenseField, Schema, SparseField

SCHEMA = Schema(
    max_len=8,
    behaviour=(Behaviour("item_id", "hist_item_id", "item_id"), Behaviour("cate_id", "hist_cate_id", "cate_id")),
    vocab_sizes={"item_id": 40, "cate_id": 7, "user_id": 12, "gender": 4},
    sparse=(SparseField("user_id", "user_id"), SparseField("gender", "gender")),
    dense=(DenseField("age", mean=30.0, std=10.0),),
)


def batch(b: int, seq: int, seed: int = 0, lengths: list[int] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.tensor(lengths) if lengths is not None else torch.randint(0, seq + 1, (b,), generator=g)
    return {
        "user_id": torch.randint(2, 12, (b,), generator=g),
        "gender": torch.randint(2, 4, (b,), generator=g),
        "item_id": torch.randint(2, 40, (b,), generator=g),
        "cate_id": torch.randint(2, 7, (b,), generator=g),
        "hist_item_id": torch.randint(2, 40, (b, seq), generator=g),
        "hist_cate_id": torch.randint(2, 7, (b, seq), generator=g),
        "hist_len": hist_len,
        "dense": torch.rand(b, 1, generator=g) * 60,
    }


def trained(cfg: ModelConfig, steps: int = 5) -> DIN:
    """A model whose running statistics and weights have moved off their initial values."""
    torch.manual_seed(0)
    model = DIN(SCHEMA, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        x = batch(16, 6, seed=step)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), (x["item_id"] % 2).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


CONFIGS = [
    ModelConfig(model="din", attention_norm="none"),
    ModelConfig(model="din", attention_norm="softmax"),
    ModelConfig(model="din", attention_activation="prelu", mlp_activation="prelu"),
    ModelConfig(model="din", attention_activation="sigmoid", mlp_activation="relu", mlp_input_bn=False),
    ModelConfig(model="base"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.model}-{c.attention_norm}-{c.attention_activation}")
def test_padded_ids_change_nothing(cfg: ModelConfig) -> None:
    model = trained(cfg)
    x = batch(6, 9, lengths=[0, 1, 3, 9, 5, 2])
    mask = history_mask(x["hist_len"], 9)
    y = dict(x)
    for name, high in (("hist_item_id", 40), ("hist_cate_id", 7)):
        y[name] = torch.where(mask, x[name], torch.randint(0, high, x[name].shape))
    assert not torch.equal(x["hist_item_id"], y["hist_item_id"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(y), rtol=0, atol=0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.model}-{c.attention_norm}-{c.attention_activation}")
def test_extra_padding_columns_change_nothing(cfg: ModelConfig) -> None:
    model = trained(cfg)
    x = batch(5, 4, lengths=[0, 1, 4, 2, 3])
    wider = dict(x)
    for name in ("hist_item_id", "hist_cate_id"):
        wider[name] = torch.cat([x[name], torch.zeros(5, 7, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(wider), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm", ["none", "softmax"])
def test_empty_history_gives_zero_interest_and_finite_score(norm: str) -> None:
    model = trained(ModelConfig(attention_norm=norm))
    for seq in (0, 5):
        x = batch(3, seq, lengths=[0, 0, 0])
        with torch.no_grad():
            logits, weights = model(x, return_attention=True)
            _, query, keys = model.embeddings(x)
            pooled, _ = model.attention(query, keys, history_mask(x["hist_len"], seq))
        assert torch.isfinite(logits).all()
        assert torch.count_nonzero(weights) == 0
        assert torch.count_nonzero(pooled) == 0
    # The same rows with L=0 and with L=5 of pure padding score identically.
    empty = batch(3, 0, seed=1, lengths=[0, 0, 0])
    padded = dict(empty, hist_item_id=torch.full((3, 5), 9), hist_cate_id=torch.full((3, 5), 4))
    with torch.no_grad():
        torch.testing.assert_close(model(empty), model(padded), rtol=1e-6, atol=1e-6)


def test_empty_history_is_finite_in_training_mode() -> None:
    model = DIN(SCHEMA, ModelConfig(attention_norm="softmax")).train()
    out = model(batch(4, 3, lengths=[0, 0, 0, 0]))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_attention_modes_differ_and_softmax_weights_sum_to_one() -> None:
    none_model = trained(ModelConfig(attention_norm="none"))
    soft_model = DIN(SCHEMA, ModelConfig(attention_norm="softmax")).eval()
    soft_model.load_state_dict(none_model.state_dict())
    x = batch(8, 6, lengths=[1, 2, 3, 4, 5, 6, 6, 3])
    with torch.no_grad():
        _, w_none = none_model(x, return_attention=True)
        _, w_soft = soft_model(x, return_attention=True)
    torch.testing.assert_close(w_soft.sum(-1), torch.ones(8), rtol=1e-6, atol=1e-6)
    # The paper's weights are the raw activation-unit outputs a(e_j, v_A) at real positions, 0 at padding:
    # computed here from Eq. 3's input [q, k, q - k, q * k] (the model factors it), no normalisation.
    with torch.no_grad():
        _, query, keys = none_model.embeddings(x)
        q = query.unsqueeze(1).expand_as(keys)
        unit = none_model.attention.unit
        raw = unit.mlp(torch.cat([q, keys, q - keys, q * keys], dim=-1), history_mask(x["hist_len"], 6)).squeeze(-1)
    torch.testing.assert_close(w_none, torch.where(history_mask(x["hist_len"], 6), raw, 0.0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(w_none.sum(-1), torch.ones(8), atol=1e-3)
    dim = soft_model.attention.scale ** -2
    mask = history_mask(x["hist_len"], 6)
    expected = torch.softmax(torch.where(mask, w_none / math.sqrt(dim), -torch.inf), dim=-1)
    torch.testing.assert_close(w_soft, torch.where(mask, expected, 0.0), rtol=1e-5, atol=1e-6)


def test_dice_uses_batch_statistics_in_training_and_running_statistics_in_eval() -> None:
    torch.manual_seed(0)
    dice = Dice(3, eps=1e-8, momentum=0.1)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(32, 3) * 2 + 1
    mean, var = x.mean(0), x.var(0, unbiased=False)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)
    torch.testing.assert_close(dice.running_mean, 0.1 * mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dice.running_var, 0.9 + 0.1 * x.var(0, unbiased=True), rtol=1e-5, atol=1e-6)
    dice.eval()
    p = torch.sigmoid((x - dice.running_mean) / torch.sqrt(dice.running_var + 1e-8))
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)
    # In eval a row's output is independent of the other rows.
    torch.testing.assert_close(dice(x[:1]), dice(x)[:1])


def test_dice_statistics_ignore_padded_positions() -> None:
    dice = Dice(2)
    x = torch.randn(4, 5, 2)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    garbage = x.clone()
    garbage[~mask] = 1e3
    out_a, out_b = dice(x, mask), dice(garbage, mask)
    torch.testing.assert_close(out_a[mask], out_b[mask])
    real = x[mask]
    p = torch.sigmoid((real - real.mean(0)) / torch.sqrt(real.var(0, unbiased=False) + 1e-8))
    torch.testing.assert_close(out_a[mask], p * real)  # alpha starts at 0


def test_official_dice_has_fixed_statistics_and_a_trained_beta() -> None:
    """The official code's Dice: TF batch norm left in inference mode (E = 0, Var = 1, eps 1e-3) times a
    trainable beta, in training too; rows stay independent of each other and nothing is accumulated."""
    torch.manual_seed(0)
    dice = Dice(3, mode="official")
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, -0.2, 0.3]))
        dice.beta.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(32, 3) * 2 + 1
    p = torch.sigmoid(dice.beta * x / math.sqrt(1 + 1e-3))
    out = dice(x)
    torch.testing.assert_close(out, p * x + (1 - p) * dice.alpha * x)
    torch.testing.assert_close(dice(x[:1]), out[:1])  # in training as well
    assert torch.equal(dice.running_mean, torch.zeros(3)) and torch.equal(dice.running_var, torch.ones(3))
    out.sum().backward()
    assert dice.beta.grad is not None and dice.beta.grad.abs().min() > 0
    torch.testing.assert_close(dice.eval()(x), out.detach())


def test_paper_and_official_dice_differ() -> None:
    """Same alpha, same input, beta = 1: the paper's Dice centres and scales by the batch, the official one
    does not; at initialisation the official beta = 0 makes p = 1/2 everywhere."""
    x = torch.randn(64, 4) * 3 + 2
    paper, official = Dice(4), Dice(4, mode="official")
    with torch.no_grad():
        official.beta.fill_(1.0)
    assert not torch.allclose(paper(x), official(x), atol=1e-2)
    assert not hasattr(paper, "beta") or paper.beta is None
    torch.testing.assert_close(Dice(4, mode="official")(x), 0.5 * x)  # alpha = 0, beta = 0
    with pytest.raises(ValueError, match="dice_mode"):
        ModelConfig(dice_mode="tf")


def test_official_preset_uses_the_official_dice() -> None:
    import json
    from pathlib import Path

    preset = json.loads((Path(__file__).parents[1] / "din_export" / "presets" / "official.json").read_text())
    cfg = ModelConfig.from_dict(preset["model"])
    model = DIN(SCHEMA, cfg)
    dices = [m for m in model.modules() if isinstance(m, Dice)]
    assert dices and all(d.mode == "official" and d.beta is not None for d in dices)
    assert all(m.mode == "paper" for m in DIN(SCHEMA, ModelConfig()).modules() if isinstance(m, Dice))


def test_dice_with_zero_statistics_is_prelu() -> None:
    dice = Dice(2).eval()
    with torch.no_grad():
        dice.running_var.zero_()
        dice.alpha.copy_(torch.tensor([0.25, 0.5]))
    x = torch.tensor([[-2.0, 3.0], [4.0, -1.0]])
    torch.testing.assert_close(dice(x), torch.where(x > 0, x, dice.alpha * x))


def test_eval_scores_do_not_depend_on_the_batch() -> None:
    model = trained(ModelConfig())
    x = batch(64, 7)
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model({k: v[i : i + 1] for k, v in x.items()}) for i in range(64)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-6)


def test_batch_of_one_trains() -> None:
    """One row has no batch variance: Dice and BatchNorm must not turn it into NaN logits or gradients."""
    model = DIN(SCHEMA, ModelConfig()).train()
    out = model(batch(1, 3, lengths=[2]))
    assert out.shape == (1,) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def expected_parameters(schema: Schema, cfg: ModelConfig) -> int:
    """The paper's model counted by hand: embeddings, the activation unit's MLP over [q, k, q - k, q * k]
    (DIN only), the MLP over [profile, v_A, pooled history(ies), dense], their activations' parameters."""
    def mlp(in_dim: int, hidden: tuple[int, ...], activation: str) -> int:
        dims = (in_dim, *hidden, 1)
        weights = sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=True))
        per_channel = {"dice": 2 if cfg.dice_mode == "official" else 1, "prelu": 1}.get(activation, 0)
        return weights + per_channel * sum(hidden)

    e, d = cfg.embed_dim, cfg.embed_dim * len(schema.behaviour)
    count = sum(schema.vocab_sizes[v] for v in {f.vocab for f in (*schema.sparse, *schema.behaviour)}) * e
    pooled = 1
    if cfg.model == "din":
        count += mlp(4 * d, cfg.attention_hidden, cfg.attention_activation)
        pooled = 2 if cfg.use_hist_sum else 1
    in_dim = len(schema.sparse) * e + d + pooled * d + len(schema.dense)
    return count + mlp(in_dim, cfg.mlp_hidden, cfg.mlp_activation) + (2 * in_dim if cfg.mlp_input_bn else 0)


@pytest.mark.parametrize("cfg", [
    ModelConfig(model="base"), ModelConfig(model="din"), ModelConfig(model="din", use_hist_sum=False),
    ModelConfig(model="base", mlp_activation="prelu", mlp_input_bn=False, embed_dim=5),
    ModelConfig(attention_activation="sigmoid", mlp_activation="dice", dice_mode="official", mlp_hidden=(7,)),
], ids=lambda c: f"{c.model}-hist_sum={c.use_hist_sum}-{c.mlp_activation}-{c.dice_mode}")
def test_parameter_count_is_the_papers_architecture(cfg: ModelConfig) -> None:
    model = DIN(SCHEMA, cfg)
    assert (model.attention is None) == (cfg.model == "base")
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(SCHEMA, cfg)


def test_mba_regulariser_matches_formula() -> None:
    torch.manual_seed(0)
    model = DIN(SCHEMA, ModelConfig())
    freqs = {v: torch.randint(0, 5, (n,)) for v, n in SCHEMA.vocab_sizes.items()}
    reg = MBARegularizer(model, freqs, lam=0.01)
    x = batch(4, 5, lengths=[0, 2, 5, 1])
    expected = 0.0
    for vocab, names in {
        "user_id": ["user_id"], "gender": ["gender"], "item_id": ["item_id", "hist_item_id"],
        "cate_id": ["cate_id", "hist_cate_id"],
    }.items():
        present: set[int] = set()
        for name in names:
            t = x[name]
            if t.dim() == 2:
                t = torch.cat([row[:n] for row, n in zip(t, x["hist_len"], strict=True)])
            present |= set(t.tolist())
        weight = model.embeddings.tables[vocab].weight
        for j in present:
            n_j = int(freqs[vocab][j])
            if j != 0 and n_j > 0:
                expected += float(weight[j].detach().pow(2).sum()) / n_j
    torch.testing.assert_close(reg(x), torch.tensor(0.01 * expected), rtol=1e-5, atol=1e-8)


def test_mba_gradient_touches_only_rows_in_the_batch() -> None:
    model = DIN(SCHEMA, ModelConfig())
    freqs = {v: torch.full((n,), 3) for v, n in SCHEMA.vocab_sizes.items()}
    x = batch(2, 3, lengths=[3, 1])
    MBARegularizer(model, freqs, lam=1.0)(x).backward()
    grad = model.embeddings.tables["item_id"].weight.grad
    touched = set(torch.nonzero(grad.abs().sum(-1)).flatten().tolist())
    expected = set(x["item_id"].tolist()) | set(x["hist_item_id"][0].tolist()) | {int(x["hist_item_id"][1, 0])}
    assert touched == expected
    w = model.embeddings.tables["item_id"].weight
    j = next(iter(expected))
    torch.testing.assert_close(grad[j], 2 * w[j].detach() / 3)


def test_unknown_config_key_and_bad_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"embed_dims": 4})
    with pytest.raises(ValueError, match="attention_norm"):
        ModelConfig(attention_norm="sparsemax")


class _NoHostSync(torch.overrides.TorchFunctionMode):
    """Fails on any call that copies a tensor's value to the host (on a GPU each is a stall)."""

    SYNCS = (torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.tolist, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.numpy)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in self.SYNCS:
            raise AssertionError(f"host sync: {func.__name__}")
        return func(*args, **(kwargs or {}))


def _reference_batch_statistics(dice: Dice, x: torch.Tensor, mask: torch.Tensor | None) -> tuple:
    """Dice's masked statistics as they were computed with a Python branch on n (and a host sync)."""
    flat = x.reshape(-1, x.shape[-1])
    weight = torch.ones(1, flat.shape[0]) if mask is None else mask.reshape(1, -1).to(x.dtype)
    n = weight.sum()
    if n.item() == 0:
        return x - dice.running_mean, dice.running_var
    mean = (weight @ flat).squeeze(0) / n
    centered = x - mean
    var = (weight @ centered.reshape(-1, x.shape[-1]).square()).squeeze(0) / n
    with torch.no_grad():
        unbiased = var * (n / (n - 1)) if n > 1 else var
        dice.running_mean.lerp_(mean.detach(), dice.momentum)
        dice.running_var.lerp_(unbiased.detach(), dice.momentum)
    return centered, var


@pytest.mark.parametrize("lengths", [[3, 0, 5, 2], [0, 0, 0, 0], [1, 0, 0, 0], [5, 5, 5, 5], None],
                         ids=["ragged", "all-empty", "one-real", "full", "no-mask"])
def test_dice_training_statistics_need_no_host_sync_and_are_unchanged(lengths: list[int] | None) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3) * 3 + 1
    mask = history_mask(torch.tensor(lengths), 5) if lengths is not None else None
    dice, reference = Dice(3, momentum=0.3), Dice(3, momentum=0.3)
    for d in (dice, reference):
        d.running_mean.fill_(0.7)
        d.running_var.fill_(2.5)
        d.alpha.data = torch.tensor([0.1, -0.2, 0.3])
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with _NoHostSync():
        out = dice(xa, mask)
        out.sum().backward()
    reference._batch_statistics = lambda x, mask: _reference_batch_statistics(reference, x, mask)
    expected = reference(xb, mask)
    expected.sum().backward()
    # bitwise: the same operations on the same values, only the branch moved onto the device
    assert torch.equal(out, expected) and torch.equal(xa.grad, xb.grad)
    assert torch.equal(dice.alpha.grad, reference.alpha.grad)
    assert torch.equal(dice.running_mean, reference.running_mean)
    assert torch.equal(dice.running_var, reference.running_var)
