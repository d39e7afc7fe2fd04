"""The exact inference rewrite of DIN: the same function as the eval-mode model, fewer operations.

`inference_module(model)` returns a snapshot of a trained DIN (or BaseModel) with every eval-mode
constant folded and the attention's first layer factored around the query. Each rewrite below is a
small function with its algebra in the docstring; none changes what is computed, only the rounding.

Why the attention's first layer: at L = 100 it is ~90% of the model's FLOPs. It is a Linear over
[q, k, q - k, q * k] (width 4D) evaluated at every history position. model.py regroups W once
(`model.factor_first_layer`) and computes the layer factored around the query, per row as
c(q) + A(q) k (`model.factored_first_layer`, the algebra in its docstring: the graphs here) or with one
stacked GEMM (`model.stacked_first_layer`: training, and the short-history graph here), W's regrouped
parts folded to constants (`FactoredActivationUnit`). In ONNX Runtime on CPU this per-row form beat the two alternatives
(k (Wk - Wd)^T + (q * k) Wp^T, and [k, q * k] as one 2D-wide GEMM) from L ~ 50 up; below that the
two-GEMM form is faster (bench/first_layer.py).

What remains per position is mostly elementwise (each Dice is five passes over B x L x H values), so the
FLOP cut of ~3x in the attention turns into ~2.3x end to end at B = 256, L = 100 (docs/bench.md).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from din_export.model import (
    DIN,
    MLP,
    Dice,
    FirstLayerWeights,
    PReLU,
    factor_first_layer,
    factored_first_layer,
    history_mask,
    stacked_first_layer,
)


class ScaledDice(nn.Module):
    """Dice in the scaled coordinate u = a s (see `fold_dice`): g(u) = u (alpha + (1 - alpha) sigmoid(u + b))."""

    def __init__(self, shift: Tensor, alpha: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift)
        self.register_buffer("alpha", alpha)
        self.register_buffer("one_minus_alpha", 1.0 - alpha)

    def forward(self, u: Tensor) -> Tensor:
        return u * (self.alpha + self.one_minus_alpha * torch.sigmoid(u + self.shift))


class OffsetDice(nn.Module):
    """Dice with its slopes folded too (see `fold_dice`): h(u) = u (sigmoid(u + b) + gamma), four passes."""

    def __init__(self, shift: Tensor, gamma: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift)
        self.register_buffer("gamma", gamma)

    def forward(self, u: Tensor) -> Tensor:
        return u * (torch.sigmoid(u + self.shift) + self.gamma)


class UnfoldedDice(nn.Module):
    """Dice at inference, nothing folded: s (alpha + (1 - alpha) sigmoid(a s + b)). For the official
    mode's Dice when some channel's scale a = beta / sqrt(1 + eps) is (nearly) 0: scaling a Linear by a
    would erase that channel (see `fold_dice`)."""

    def __init__(self, scale: Tensor, shift: Tensor, alpha: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.register_buffer("alpha", alpha)
        self.register_buffer("one_minus_alpha", 1.0 - alpha)

    def forward(self, s: Tensor) -> Tensor:
        return s * (self.alpha + self.one_minus_alpha * torch.sigmoid(s * self.scale + self.shift))


class MaxPReLU(nn.Module):
    """PReLU in the signed coordinate u = s x of `fold_prelu`: max(u, alpha u). x (..., H) -> (..., H).

    Two passes onnxruntime runs vectorised (Mul, Max) where torch.where(x > 0, x, alpha x) exports as
    Greater, Mul and Where, and onnxruntime's CPU Where is a scalar loop: it took more than half the edge
    preset's kernel time at B = 256, L = 100 (docs/bench.md, "PReLU as Max")."""

    def __init__(self, alpha: Tensor) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha)

    def forward(self, u: Tensor) -> Tensor:
        return torch.maximum(u, self.alpha * u)


# The widest history (positions per row) at which the short-history graph (`stacked_first_layer`) is
# the faster one; measured in onnxruntime, 1 thread (docs/bench.md, "A short-history graph").
SHORT_HISTORY_WIDTH = 30
# Below this |1 - alpha| a channel's gamma = alpha / (1 - alpha) would overflow or nearly: keep ScaledDice.
MIN_ONE_MINUS_ALPHA = 1e-3
# Below this |a| folding would divide the next Linear's columns by (nearly) zero: keep Dice unfolded.
MIN_SCALE = 1e-4


def fold_dice(dice: Dice, before: nn.Linear, after: nn.Linear) -> nn.Module:
    """Fold Dice's running statistics (and, where possible, its slopes) into the Linears around it, in
    place; return what is left.

    At inference Dice is elementwise with constant statistics:
        f(s) = p s + (1 - p) alpha s = s (alpha + (1 - alpha) sigmoid(a s + b)),
        a = beta / sqrt(var + eps),  b = -mean a,
    beta = 1 in the paper's mode (so a > 0 since eps > 0), the trained beta in the official mode. With
    u = a s, made by `before` with its rows scaled by a, f(s) = g(u) / a, g as in ScaledDice, and 1/a
    goes into the columns of `after`: W f(s) = (W diag(1/a)) g(u). Five elementwise ops per hidden
    value instead of seven. A channel with |a| < MIN_SCALE (an official beta near 0) cannot be
    divided by: then nothing is folded and UnfoldedDice is returned.

    If no channel has alpha = 1, the slopes fold as well: alpha + (1 - alpha) p = (1 - alpha)(p + gamma)
    with gamma = alpha / (1 - alpha), so W f(s) = (W diag((1 - alpha) / a)) h(u), h as in OffsetDice:
    four passes. The rounding stays that of the five-pass form: gamma's relative error ~1e-7 comes back
    multiplied by (1 - alpha), whatever gamma's size.
    """
    with torch.no_grad():
        a = torch.rsqrt(dice.running_var + dice.eps)
        if dice.beta is not None:
            a = a * dice.beta
        if bool((a.abs() < MIN_SCALE).any()):
            return unfold_dice(dice)
        before.weight.mul_(a.unsqueeze(1))
        before.bias.mul_(a)
        after.weight.div_(a)
        shift = -dice.running_mean * a
        alpha = dice.alpha.detach().clone()
        one_minus_alpha = 1.0 - alpha
        if bool((one_minus_alpha.abs() >= MIN_ONE_MINUS_ALPHA).all()):
            after.weight.mul_(one_minus_alpha)
            return OffsetDice(shift, alpha / one_minus_alpha)
        return ScaledDice(shift, alpha)


def fold_prelu(prelu: PReLU, before: nn.Linear, after: nn.Linear) -> MaxPReLU:
    """PReLU as MaxPReLU, the sign of each channel with alpha > 1 folded into the Linears around it, in
    place.

    With alpha <= 1, PReLU(x) = max(x, alpha x) (x > 0: alpha x <= x; x < 0: alpha x >= x), and the same
    holds in floating point, rounding being monotonic. With alpha > 1 it is min(x, alpha x) =
    -max(-x, -alpha x): `before`'s row negated makes u = -x, max(u, alpha u) is taken, and `after`'s
    column negated restores the sign: W PReLU(x) = (W diag(s)) max(u, alpha u), u = s x, s = +-1 per
    channel. Negation is exact, so the folded form is bitwise the PReLU (but for the sign of a zero).
    """
    with torch.no_grad():
        alpha = prelu.alpha.detach().clone()
        sign = torch.where(alpha > 1, -1.0, 1.0).to(alpha.dtype)
        before.weight.mul_(sign.unsqueeze(1))
        before.bias.mul_(sign)
        after.weight.mul_(sign)
        return MaxPReLU(alpha)


def unfold_dice(dice: Dice) -> UnfoldedDice:
    """Dice with its running statistics as constants and the Linears around it untouched."""
    with torch.no_grad():
        a = torch.rsqrt(dice.running_var + dice.eps)
        if dice.beta is not None:
            a = a * dice.beta
        return UnfoldedDice(a.clone(), -dice.running_mean * a, dice.alpha.detach().clone())


def fold_mlp(mlp: MLP) -> tuple[list[nn.Linear], list[nn.Module]]:
    """An eval-mode MLP as copies of its Linears (hidden ones, then the output) and one-argument
    activations between them, every Dice and PReLU folded (`fold_dice`, `fold_prelu`). Dropout is the
    identity in eval mode.
    (int8 quantises the folded Linears with per-channel weight scales, which hold the rows' spread.)"""
    linears = [copy.deepcopy(m) for m in (*mlp.linears, mlp.out)]
    activations: list[nn.Module] = []
    for i, act in enumerate(mlp.activations):
        if isinstance(act, Dice):
            activations.append(fold_dice(act, linears[i], linears[i + 1]))
        elif isinstance(act, PReLU):
            activations.append(fold_prelu(act, linears[i], linears[i + 1]))
        else:  # Pointwise
            activations.append(copy.deepcopy(act.fn))
    return linears, activations


def chain(activations: list[nn.Module], linears: list[nn.Linear]) -> nn.Sequential:
    """act_0, linear_0, act_1, linear_1, ...: what follows an MLP's first Linear."""
    return nn.Sequential(*(m for pair in zip(activations, linears, strict=True) for m in pair))


def mlp_input_affine(model: DIN) -> tuple[Tensor, Tensor]:
    """The MLP input's eval-mode affine map as (scale, shift) over the concatenated input.

    It merges into the first Linear (W (s x + t) + b = (W diag(s)) x + (W t + b), `merge_affine`): two
    nodes fewer, which shows at B = 1 where the graph's time is per node. (int8 leaves the MLP in fp32.)

    Dense standardisation (x - m) / s acts on the trailing dense columns; BatchNorm in eval mode is
    gamma (x - mu) / sqrt(var + eps) + beta. Composed: scale = d g, shift = e g + (beta - mu g) with
    g = gamma / sqrt(var + eps), and (d, e) = (1/s, -m/s) on dense columns, (1, 0) elsewhere.
    """
    with torch.no_grad():
        in_dim = model.mlp.linears[0].in_features if model.mlp.linears else model.mlp.out.in_features
        n_dense = model.dense_mean.numel()
        d = torch.ones(in_dim, device=model.dense_mean.device)
        e = torch.zeros_like(d)
        if n_dense:
            d[in_dim - n_dense:] = 1.0 / model.dense_std
            e[in_dim - n_dense:] = -model.dense_mean / model.dense_std
        bn = model.input_bn
        if isinstance(bn, nn.BatchNorm1d):
            g = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine:
                g = g * bn.weight
            beta = bn.bias if bn.affine else torch.zeros_like(d)
            return d * g, e * g + (beta - bn.running_mean * g)
        return d, e


def merge_affine(scale: Tensor, shift: Tensor, linear: nn.Linear) -> None:
    """linear(x * scale + shift) = (W diag(scale)) x + (W shift + b), folded into `linear` in place."""
    with torch.no_grad():
        linear.bias.add_(linear.weight @ shift)
        linear.weight.mul_(scale)


def scale_output(linear: nn.Linear, factor: float) -> None:
    """factor (W x + b) = (factor W) x + factor b: the softmax temperature 1/sqrt(D), folded in place."""
    with torch.no_grad():
        linear.weight.mul_(factor)
        linear.bias.mul_(factor)


class FactoredActivationUnit(nn.Module):
    """The local activation unit at inference: `model.factored_first_layer` on constant weights, then the
    folded tail. q (B, D), k (B, L, D) -> scores (B, L). After the first layer the positions are
    flattened to (B * L, H) rows so that each following Linear is one GEMM with its bias fused.
    """

    def __init__(self, first: nn.Linear, tail: nn.Sequential, dim: int) -> None:
        super().__init__()
        w = factor_first_layer(first, dim)
        for name, value in zip(("query_weight_t", "key_weight_t", "product_weight_t", "bias"), w, strict=True):
            self.register_buffer(name, value.detach().contiguous().clone())  # (D, H), or (H,) for the bias
        self.tail = tail

    @property
    def weights(self) -> FirstLayerWeights:
        return FirstLayerWeights(self.query_weight_t, self.key_weight_t, self.product_weight_t, self.bias)

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        """keys (B, L, D) -> (B, L); or (L, D), shared by all B queries, -> (L, B) (`factored_first_layer`)."""
        hidden = factored_first_layer(query, keys, self.weights)
        return self.tail(hidden.flatten(0, 1)).reshape(hidden.shape[:2])

    def per_row_key_weight(self, query: Tensor) -> Tensor:
        """A(q)^T, (B, D, H): the per-row weight of the first layer (model.FirstLayerWeights)."""
        return self.weights.per_row_key_weight(query)


class ShortHistoryUnit(FactoredActivationUnit):
    """FactoredActivationUnit with `stacked_first_layer`: the form for short histories."""

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        hidden = stacked_first_layer(query, keys, self.weights)
        return self.tail(hidden.flatten(0, 1)).reshape(hidden.shape[:2])


class SeparateEmbeddings(nn.Module):
    """model.Embeddings' lookups as a snapshot: one table per vocabulary, one Gather per field.

    The tables are kept apart on purpose. Stacked into one table (one GatherND for the histories, an
    earlier form of this rewrite), an id outside its vocabulary read another vocabulary's row, silently,
    on every path that does not check ids first (a raw onnxruntime session, Triton). Apart, such an id
    never leaves its own table: onnxruntime's CPU Gather raises, its CUDA Gather writes zeros, as in the
    plain graph. Guarding the stacked ids (out of range -> the OOV row) was the alternative; it cost
    more than separate tables did, at B = 1 and at B = 256 (bench/index_guard.py, docs/export.md).
    """

    def __init__(self, model: DIN) -> None:
        super().__init__()
        emb = model.embeddings
        # buffers named by position: a vocabulary's name need not be a valid attribute name
        self.index = {vocab: i for i, vocab in enumerate(emb.tables)}
        for vocab, i in self.index.items():
            self.register_buffer(f"table_{i}", emb.tables[vocab].weight.detach().clone())
        self.sparse = list(emb.sparse)
        self.targets = [(t, v) for t, _, v in emb.behaviour]
        self.histories = [(h, v) for _, h, v in emb.behaviour]

    def table(self, vocab: str) -> Tensor:
        return getattr(self, f"table_{self.index[vocab]}")

    def lookup(self, x: dict[str, Tensor], fields: list[tuple[str, str]]) -> Tensor:
        """(name, vocab) fields of shape (B,) or (B, L) -> (..., n E), one Gather each, concatenated."""
        return torch.cat([nn.functional.embedding(x[name], self.table(vocab)) for name, vocab in fields],
                         dim=-1)

    def forward(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """-> profile (B, n_sparse E), query (B, D), keys (B, L, D), as model.Embeddings."""
        query = self.lookup(x, self.targets)
        # query[:, :0], not a (hist_len's batch, 0) tensor: in the candidate graph hist_len has one row
        profile = self.lookup(x, self.sparse) if self.sparse else query[:, :0]
        return profile, query, self.lookup(x, self.histories)


class InferenceDIN(nn.Module):
    """Eval-only DIN computing the same function as `model.eval()` (see `inference_module`)."""

    def __init__(self, model: DIN, short_history: bool = False) -> None:
        super().__init__()
        self.embeddings = SeparateEmbeddings(model)
        self.attention_norm = model.cfg.attention_norm
        self.use_hist_sum = model.cfg.use_hist_sum
        self.unit: FactoredActivationUnit | None = None
        if model.attention is not None:
            dim = model.cfg.embed_dim * len(model.schema.behaviour)
            linears, activations = fold_mlp(model.attention.unit.mlp)
            if self.attention_norm == "softmax":
                scale_output(linears[-1], 1.0 / math.sqrt(dim))
            unit = ShortHistoryUnit if short_history else FactoredActivationUnit
            self.unit = unit(linears[0], chain(activations, linears[1:]), dim)
        linears, activations = fold_mlp(model.mlp)
        merge_affine(*mlp_input_affine(model), linears[0])
        self.mlp = nn.Sequential(linears[0], chain(activations, linears[1:]))
        self.eval()

    def forward(self, x: dict[str, Tensor], return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        profile, query, keys = self.embeddings(x)
        mask = history_mask(x["hist_len"], keys.shape[1])
        maskf = mask.to(keys.dtype)
        if self.unit is None:
            weights = maskf
            pooled = torch.matmul(maskf.unsqueeze(1), keys).squeeze(1)
        else:
            weights = self.attention_weights(self.unit(query, keys), mask)
            # Attention pooling and sum pooling in one batched product: [w; mask] (B, 2, L) @ keys.
            rows = torch.stack([weights, maskf], dim=1) if self.use_hist_sum else weights.unsqueeze(1)
            pooled = torch.matmul(rows, keys).flatten(1)
        parts = [profile, query, pooled]
        if "dense" in x:
            parts.append(x["dense"])  # raw: the MLP's input affine map standardises it
        logits = self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
        return (logits, weights) if return_attention else logits

    def attention_weights(self, scores: Tensor, mask: Tensor) -> Tensor:
        """As AttentionPooling: padded positions weigh 0; softmax over real positions only."""
        if self.attention_norm == "softmax":
            lowest = torch.finfo(scores.dtype).min
            scores = torch.softmax(torch.where(mask, scores, lowest), dim=-1)
        return torch.where(mask, scores, 0.0)


class CandidateDIN(nn.Module):
    """One user, C candidates: the same function as InferenceDIN on the user's row repeated C times.

    Inputs as the model's, except that each history is (1, L) and hist_len (1,): the user's history once.
    Sparse fields, targets and dense are (C,) / (C, n), so candidates may carry their own item-side or
    context features. What the C rows share is computed once: the history gathers and sum pooling; the
    attention's first layer for all candidates is ONE GEMM,

        K (L, D) @ [A(q_1)^T | ... | A(q_C)^T] (D, C*H)  ->  (L, C*H),

    instead of C batched (L, D) x (D, H) products, and the attention pooling one (C, L) @ (L, D) GEMM.
    The per-position work after the first layer (Dice, the later layers) stays C x L x H.
    """

    def __init__(self, din: InferenceDIN) -> None:
        super().__init__()
        self.din = din

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        din = self.din
        profile, query, keys = din.embeddings(x)  # (C, .), (C, D), (1, L, D)
        keys = keys[0]
        maskf = history_mask(x["hist_len"], keys.shape[0])[0].to(keys.dtype)  # (L,)
        n = query.shape[0]
        parts = [profile, query]
        summed = (maskf @ keys).expand(n, -1)
        if din.unit is None:
            parts.append(summed)
        else:
            scores = self.scores(query, keys)  # (C, L)
            mask = maskf.bool().expand(n, -1)
            weights = din.attention_weights(scores, mask)
            parts.append(weights @ keys)
            if din.use_hist_sum:
                parts.append(summed)
        if "dense" in x:
            parts.append(x["dense"])
        return din.mlp(torch.cat(parts, dim=-1)).squeeze(-1)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """The activation unit's raw scores (C, L), the first layer of all candidates as one GEMM
        (`model.factored_first_layer` with one shared history).

        (Measured against `(k_l * q_c) Wp^T` as one (C L, D) x (D, H) GEMM with a constant weight and a
        (C, L, H) addend: that form was ~10% slower at C = 100, L = 50, the addend and product being
        two extra passes over C x L values.)"""
        unit = self.din.unit
        assert unit is not None
        return unit(query, keys).t()


def candidate_module(model: DIN) -> CandidateDIN:
    """`inference_module(model)` for one user and many candidates (see CandidateDIN)."""
    with torch.no_grad():
        return CandidateDIN(InferenceDIN(model))


def inference_module(model: DIN, short_history: bool = False) -> InferenceDIN:
    """An eval-only snapshot of `model` that computes the same function as `model.eval()`, faster.

    Same forward signature (x -> logits, or (logits, attention) with return_attention=True), exports
    to ONNX with dynamic batch and sequence like the model. Later changes to `model` do not reach it.
    short_history: the attention's first layer as `stacked_first_layer`, faster for histories up to
    SHORT_HISTORY_WIDTH positions wide, slower beyond (a graph to pick by the batch's width).
    """
    with torch.no_grad():
        return InferenceDIN(model, short_history)
