"""Deep Interest Network (Zhou et al., KDD 2018), read top to bottom like the paper.

    embeddings -> local activation unit -> Dice -> attention pooling -> MLP -> logit

Shapes: B batch, L history length (any size, 0 included), D = embed_dim x number of behaviour
fields (item ‖ category), H hidden width. Padding is given by `hist_len`, never by the ids: the mask
is `arange(L) < hist_len`, so whatever ids sit at padded positions cannot change a score.

The local activation unit scores each history item e_j against the candidate v_A with a small MLP on
[q, k, q - k, q * k] (q = v_A, k = e_j). Its first layer's weight is regrouped once around the query
(`factor_first_layer`) and computed in one of two layouts of that same algebra: `stacked_first_layer`
(training, half the per-position work) or `factored_first_layer` (per row, a quarter: the exported
graphs, din_export/optimize.py). The paper's 4D-wide form is kept as `reference_first_layer`, and tests
tie all three.

Two attention normalisations, both exact about padding:
- "none" (the paper): w_j = a(e_j, v_A), not normalised, so the pooled vector keeps the intensity of
  interest; padded positions get w = 0 and an empty history pools to the zero vector.
- "softmax" (the official code): softmax over real positions of a / sqrt(D); an all-padded row
  gives all-zero weights (not NaN, and not a uniform average of padding embeddings)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor, nn

from din_export.schema import OOV_INDEX, PAD_INDEX, Schema

ACTIVATIONS = ("dice", "prelu", "sigmoid", "relu")
DICE_MODES = ("paper", "official")
# tf.layers.batch_normalization's default epsilon: the official Dice normalises with it, not with dice_eps
OFFICIAL_DICE_EPS = 1e-3
ATTENTION_NORMS = ("none", "softmax")
MODELS = ("din", "base")


@dataclass(frozen=True)
class ModelConfig:
    model: str = "din"
    embed_dim: int = 32  # per embedding table; a behaviour vector is embed_dim x behaviour fields
    attention_hidden: tuple[int, ...] = (80, 40)
    attention_activation: str = "dice"
    attention_norm: str = "none"
    mlp_hidden: tuple[int, ...] = (200, 80)
    mlp_activation: str = "dice"
    mlp_input_bn: bool = True  # the official code batch-normalises the MLP input
    use_hist_sum: bool = True  # DIN also sees the sum-pooled history (BaseModel sees only that)
    dropout: float = 0.0
    dice_eps: float = 1e-8
    dice_mode: str = "paper"  # "official": the official code's Dice, with fixed statistics (see Dice)
    bn_momentum: float = 0.01  # running = (1 - m) * running + m * batch, torch's convention

    def __post_init__(self) -> None:
        checks = [
            (self.model in MODELS, f"model must be one of {MODELS}"),
            (self.attention_activation in ACTIVATIONS, f"attention_activation must be one of {ACTIVATIONS}"),
            (self.mlp_activation in ACTIVATIONS, f"mlp_activation must be one of {ACTIVATIONS}"),
            (self.attention_norm in ATTENTION_NORMS, f"attention_norm must be one of {ATTENTION_NORMS}"),
            (self.dice_mode in DICE_MODES, f"dice_mode must be one of {DICE_MODES}"),
            (self.embed_dim >= 1, "embed_dim must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"model config: {message}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model config: unknown keys {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


# --- Embeddings ------------------------------------------------------------------------------------------


class Embeddings(nn.Module):
    """One table per vocabulary; a behaviour's target and history share it.

    Row 0 (padding) is fixed at zero. Row 1 (out-of-vocabulary) starts at zero and, since training ids
    come from the training vocabulary, stays there: an unseen id contributes nothing rather than noise.
    """

    def __init__(self, schema: Schema, embed_dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleDict(
            {v: nn.Embedding(schema.vocab_sizes[v], embed_dim, padding_idx=PAD_INDEX) for v in schema.vocab_names}
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[PAD_INDEX].zero_()
                table.weight[OOV_INDEX].zero_()
        self.sparse = [(s.name, s.vocab) for s in schema.sparse]
        self.behaviour = [(b.target, b.history, b.vocab) for b in schema.behaviour]

    def forward(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """-> profile (B, n_sparse * E), query v_A (B, D), keys e_j (B, L, D)."""
        b = x["hist_len"].shape[0]
        profile = [self.tables[vocab](x[name]) for name, vocab in self.sparse]
        profile_vec = torch.cat(profile, dim=-1) if profile else x["hist_len"].new_zeros((b, 0)).float()
        query = torch.cat([self.tables[v](x[t]) for t, _, v in self.behaviour], dim=-1)
        keys = torch.cat([self.tables[v](x[h]) for _, h, v in self.behaviour], dim=-1)
        return profile_vec, query, keys


def history_mask(hist_len: Tensor, seq_len: int) -> Tensor:
    """(B,) lengths -> (B, L) bool, True at real positions. Built from the tensor's own L (dynamic)."""
    positions = torch.arange(seq_len, device=hist_len.device)
    return positions.unsqueeze(0) < hist_len.unsqueeze(1)


# --- Local activation unit -------------------------------------------------------------------------------


class FirstLayerWeights(NamedTuple):
    """The activation unit's first Linear, W = [Wq | Wk | Wd | Wp] (H x 4D) and b, regrouped by what
    each part multiplies (`factor_first_layer`). Stored transposed, (D, H), as `x @ w` reads them."""

    query: Tensor  # (Wq + Wd)^T
    key: Tensor  # (Wk - Wd)^T
    product: Tensor  # Wp^T
    bias: Tensor  # b, (H,)

    def per_row_key_weight(self, query: Tensor, rows_first: bool = True) -> Tensor:
        """A(q)^T = (Wk - Wd)^T + diag(q) Wp^T for each row of query (B, D): row d of Wp^T scaled by
        q_d. -> (B, D, H), or laid out (D, B, H) with rows_first=False, built in place rather than
        transposed after (a copy that cost the candidate graph 2-8%)."""
        if rows_first:
            return self.key + query.unsqueeze(-1) * self.product
        return self.key.unsqueeze(1) + query.t().unsqueeze(-1) * self.product.unsqueeze(1)


def factor_first_layer(first: nn.Linear, dim: int) -> FirstLayerWeights:
    """W [q, k, q - k, q * k] + b = ((Wq + Wd) q + b) + (Wk - Wd) k + Wp (q * k): the same function and
    parameters, so gradients reach W through the sums (training) or they fold to constants (inference)."""
    w_q, w_k, w_d, w_p = first.weight.split(dim, dim=1)
    return FirstLayerWeights((w_q + w_d).t(), (w_k - w_d).t(), w_p.t(), first.bias)


def factored_first_layer(query: Tensor, keys: Tensor, w: FirstLayerWeights) -> Tensor:
    """The activation unit's first layer at every position, without the 4D-wide input.

    query (B, D), keys (B, L, D) -> (B, L, H). With A(q) = (Wk - Wd) + Wp diag(q),

        W [q, k, q - k, q * k] + b = c(q) + A(q) k,   c(q) = (Wq + Wd) q + b,

    c(q) and A(q) once per row (A costs D x H multiply-adds: it scales the columns of Wp), then one
    D x H product per position instead of a 4D x H one: the optimised and candidate graphs' form. The
    4D-wide form is `reference_first_layer`.

    keys (L, D), one history shared by all B queries (the candidate graph), -> (L, B, H): the positions
    of every query in one (L, D) x (D, B H) GEMM instead of B batched (L, D) x (D, H) ones (measured
    1.03-1.18x faster in onnxruntime at B = 100-1000, L = 50-200).
    """
    per_row = query @ w.query + w.bias  # c(q): (B, H)
    if keys.dim() == 2:
        key_weight = w.per_row_key_weight(query, rows_first=False).flatten(1)  # (D, B H)
        return (keys @ key_weight).unflatten(1, per_row.shape) + per_row
    return keys @ w.per_row_key_weight(query) + per_row.unsqueeze(1)


def stacked_first_layer(query: Tensor, keys: Tensor, w: FirstLayerWeights) -> Tensor:
    """`factored_first_layer`'s function and weights with the per-position part as one 2D-wide GEMM,
    c(q) + [k, q * k] [(Wk - Wd)^T; Wp^T], over all B x L positions. query (B, D), keys (B, L, D) ->
    (B, L, H). No A(q) to build, so it is the faster graph for short histories (optimize.py's
    short-history graph), and training's form: every product in it has a constant weight, which keeps
    the plain graph's int8 export exact row by row (the per-row product is activation x activation)."""
    per_row = query @ w.query + w.bias  # c(q): (B, H)
    stacked = torch.cat([keys, query.unsqueeze(1) * keys], dim=-1)  # (B, L, 2D)
    return stacked @ torch.cat([w.key, w.product]) + per_row.unsqueeze(1)


def reference_first_layer(query: Tensor, keys: Tensor, first: nn.Linear) -> Tensor:
    """The paper's first layer as written: first([q, k, q - k, q * k]). q (B, D), k (B, L, D) -> (B, L, H).
    4x the FLOPs of `factored_first_layer` per position; the equivalence tests compare the two."""
    q = query.unsqueeze(1).expand_as(keys)
    return first(torch.cat([q, keys, q - keys, q * keys], dim=-1))


class ActivationUnit(nn.Module):
    """a(v_A, e_j) = MLP([q, k, q - k, q * k]) -> scalar per position. q (B, D), k (B, L, D) -> (B, L).

    The paper's Fig. 2 unit, with the official code's cheap stand-ins (q - k, q * k) for the outer
    product. Hidden layers use the configured activation (Dice in the paper); the mask reaches Dice so
    its training statistics see real positions only. `forward` computes the first layer factored
    (`stacked_first_layer`: half the per-position work of the model's largest layer, forward and
    backward); `forward_reference` builds the 4D-wide input the paper describes.
    """

    def __init__(self, dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = MLP(4 * dim, cfg.attention_hidden, cfg.attention_activation, cfg)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        first = stacked_first_layer(query, keys, factor_first_layer(self.mlp.first, self.dim))
        return self.mlp.after_first(first, mask).squeeze(-1)

    def forward_reference(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """The same scores through the paper's [q, k, q - k, q * k] (for the equivalence tests)."""
        first = reference_first_layer(query, keys, self.mlp.first)
        return self.mlp.after_first(first, mask).squeeze(-1)


# --- Dice, and the other activations ---------------------------------------------------------------------


class Dice(nn.Module):
    """Data-adaptive activation, paper Eq. 9, per channel (the last dim).

    f(s) = p(s) * s + (1 - p(s)) * alpha * s,   p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))

    mode "paper": training uses the mini-batch mean/variance over *real* positions only (the mask),
    inference the running averages, so at inference a row's output never depends on the rest of the
    batch. No affine scale/shift inside p (the paper's formula). With E = 0 and Var = 0 it is PReLU.

    mode "official": what the official TensorFlow code's `dice` computes. It calls
    `tf.layers.batch_normalization(x, center=False, scale=False)` without `training=True`, so its
    moving statistics stay at their initial E = 0, Var = 1 in training and at inference alike, and it
    multiplies by a trainable per-channel beta (initialised to 0, so p = 1/2 at the start):
        p(s) = sigmoid(beta * s / sqrt(1 + 1e-3))   (1e-3: TF's batch-norm epsilon)
    The data-adaptive part of the paper's Dice is then absent; beta learns a fixed per-channel scale.

    x: (..., H), mask: x.shape[:-1] bool or None.
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.01, mode: str = "paper") -> None:
        super().__init__()
        if mode not in DICE_MODES:
            raise ValueError(f"Dice mode must be one of {DICE_MODES}, got {mode!r}")
        self.mode = mode
        self.eps = OFFICIAL_DICE_EPS if mode == "official" else eps
        self.momentum = momentum
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features)) if mode == "official" else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.training and self.mode == "paper":
            centered, var = self._batch_statistics(x, mask)
        else:
            centered, var = x - self.running_mean, self.running_var
        z = centered * torch.rsqrt(var + self.eps)
        p = torch.sigmoid(z if self.beta is None else self.beta * z)
        # p s + (1 - p) alpha s, with one pass fewer over the (..., H) values
        return x * (self.alpha + (1.0 - self.alpha) * p)

    def _batch_statistics(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """-> (x - mean, var) over the real positions. The weighted sums are (1, N) @ (N, H) products:
        one GEMM instead of a masked copy and a reduction, which matters at N = B * L.

        The count n stays on the device: a batch with no real position (n = 0) falls back to the
        running statistics through `torch.where`, not a Python branch, so no call waits for the GPU."""
        flat = x.reshape(-1, x.shape[-1])
        if mask is None:
            weight = torch.ones(1, flat.shape[0], dtype=x.dtype, device=x.device)
        else:
            weight = mask.reshape(1, -1).to(x.dtype)
        n = weight.sum()
        seen = n > 0
        # n >= 1 wherever it is used; clamping only keeps the unused n = 0 branch finite
        mean = (weight @ flat).squeeze(0) / n.clamp(min=1)
        centered = x - mean
        var = (weight @ centered.reshape(-1, x.shape[-1]).square()).squeeze(0) / n.clamp(min=1)
        with torch.no_grad():
            unbiased = var * (n / (n - 1).clamp(min=1))  # n = 1: var itself, as there is no spread to correct
            self.running_mean.copy_(torch.where(seen, self.running_mean.lerp(mean.detach(), self.momentum),
                                                self.running_mean))
            self.running_var.copy_(torch.where(seen, self.running_var.lerp(unbiased.detach(), self.momentum),
                                               self.running_var))
        return torch.where(seen, centered, x - self.running_mean), torch.where(seen, var, self.running_var)


class PReLU(nn.Module):
    """PReLU over the last dim (torch's nn.PReLU takes dim 1 as channels, which is L for (B, L, H)).
    x (..., H) -> (..., H)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_features,), 0.25))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return torch.where(x > 0, x, self.alpha * x)


class Pointwise(nn.Module):
    """A stateless activation with the (x, mask) signature of Dice. x (..., H) -> (..., H)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.fn(x)


def make_activation(name: str, num_features: int, cfg: ModelConfig) -> nn.Module:
    if name == "dice":
        return Dice(num_features, eps=cfg.dice_eps, momentum=cfg.bn_momentum, mode=cfg.dice_mode)
    if name == "prelu":
        return PReLU(num_features)
    if name == "sigmoid":
        return Pointwise(nn.Sigmoid())
    if name == "relu":
        return Pointwise(nn.ReLU())
    raise ValueError(f"unknown activation {name!r}; choose from {ACTIVATIONS}")


# --- Attention pooling -----------------------------------------------------------------------------------


class AttentionPooling(nn.Module):
    """v_U = sum_j w_j e_j with w from the activation unit. q (B, D), k (B, L, D), mask (B, L) ->
    pooled (B, D), weights (B, L)."""

    def __init__(self, dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.unit = ActivationUnit(dim, cfg)
        self.norm = cfg.attention_norm
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.unit(query, keys, mask)
        if self.norm == "softmax":
            # The dtype's lowest finite value, never -inf or -2**32 (which overflows fp16 to -inf): a row
            # with no real position then softmaxes to a uniform row that the mask below zeroes.
            lowest = torch.finfo(scores.dtype).min
            scores = torch.where(mask, scores * self.scale, lowest)
            weights = torch.softmax(scores, dim=-1)
        else:
            weights = scores
        weights = torch.where(mask, weights, 0.0)
        return (weights.unsqueeze(-1) * keys).sum(dim=1), weights


def sum_pooling(keys: Tensor, mask: Tensor) -> Tensor:
    """BaseModel's pooling: sum of real behaviour embeddings. (B, L, D) -> (B, D)."""
    return (keys * mask.unsqueeze(-1).to(keys.dtype)).sum(dim=1)


# --- The MLP ---------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear -> activation blocks, ending in a Linear to one unit. x: (..., in_dim) -> (..., 1).

    The mask is handed to each activation so Dice's statistics see real positions only.
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...], activation: str, cfg: ModelConfig,
                 dropout: float = 0.0) -> None:
        super().__init__()
        dims = (in_dim, *hidden)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.activations = nn.ModuleList(make_activation(activation, h, cfg) for h in hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(dims[-1], 1)

    @property
    def first(self) -> nn.Linear:
        return self.linears[0] if len(self.linears) else self.out

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.after_first(self.first(x), mask)

    def after_first(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """The rest of the MLP, given the first Linear's output h: (..., hidden[0]) -> (..., 1)."""
        if not len(self.linears):
            return h
        for act, linear in zip(self.activations, [*self.linears[1:], self.out], strict=True):
            h = linear(self.dropout(act(h, mask)))
        return h


class InputNorm(nn.BatchNorm1d):
    """The official code's BatchNorm on the MLP input. (B, F) -> (B, F).

    A training batch of one row has no variance (torch raises); it is normalised with the running
    statistics instead, so a trailing batch of one neither crashes training nor is dropped.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            training=False, eps=self.eps)
        return super().forward(x)


# --- The network -----------------------------------------------------------------------------------------


class DIN(nn.Module):
    """DIN, or with cfg.model == "base" the paper's BaseModel (sum pooling, no attention).

    forward(x) -> logits (B,); with return_attention=True also the weights (B, L) (the mask, as floats,
    for the base model, whose sum pooling weighs every real behaviour 1).
    """

    def __init__(self, schema: Schema, cfg: ModelConfig) -> None:
        super().__init__()
        self.schema = schema
        self.cfg = cfg
        n_behaviour = len(schema.behaviour)
        dim = cfg.embed_dim * n_behaviour
        self.embeddings = Embeddings(schema, cfg.embed_dim)
        self.attention = AttentionPooling(dim, cfg) if cfg.model == "din" else None
        n_dense = len(schema.dense)
        self.register_buffer("dense_mean", torch.tensor([d.mean for d in schema.dense], dtype=torch.float32))
        self.register_buffer("dense_std", torch.tensor([d.scale for d in schema.dense], dtype=torch.float32))
        pooled = 2 if (cfg.model == "din" and cfg.use_hist_sum) else 1
        in_dim = len(schema.sparse) * cfg.embed_dim + dim * (1 + pooled) + n_dense
        self.input_bn = InputNorm(in_dim, momentum=cfg.bn_momentum) if cfg.mlp_input_bn else nn.Identity()
        self.mlp = MLP(in_dim, cfg.mlp_hidden, cfg.mlp_activation, cfg, dropout=cfg.dropout)

    def forward(self, x: dict[str, Tensor], return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        profile, query, keys = self.embeddings(x)
        mask = history_mask(x["hist_len"], keys.shape[1])
        parts = [profile, query]
        if self.attention is not None:
            interest, weights = self.attention(query, keys, mask)
            parts.append(interest)
            if self.cfg.use_hist_sum:
                parts.append(sum_pooling(keys, mask))
        else:
            weights = mask.to(keys.dtype)
            parts.append(sum_pooling(keys, mask))
        if "dense" in x:
            parts.append((x["dense"] - self.dense_mean) / self.dense_std)
        logits = self.mlp(self.input_bn(torch.cat(parts, dim=-1))).squeeze(-1)
        return (logits, weights) if return_attention else logits


# --- Mini-batch aware regularisation (paper Eq. 6-7) -----------------------------------------------------


class MBARegularizer(nn.Module):
    """lambda * sum over embedding rows j present in the mini-batch of ||w_j||^2 / n_j.

    n_j counts id j in all training samples (the `freq/` arrays of the dataset directory). Rows absent
    from the batch, padding and never-seen ids (n_j = 0) cost nothing. Gradient: 2 lambda w_j / n_j on
    the rows of the batch only, the paper's Eq. 7 up to the constant folded into lambda.
    """

    def __init__(self, model: DIN, frequencies: dict[str, Tensor], lam: float) -> None:
        super().__init__()
        self.model = model
        self.lam = lam
        self.inputs: dict[str, list[tuple[str, bool]]] = {}
        for s in model.schema.sparse:
            self.inputs.setdefault(s.vocab, []).append((s.name, False))
        for b in model.schema.behaviour:
            self.inputs.setdefault(b.vocab, []).extend([(b.target, False), (b.history, True)])
        for vocab in self.inputs:
            counts = frequencies[vocab].to(torch.float64)
            inv = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
            inv[PAD_INDEX] = 0.0
            self.register_buffer(f"inv_freq_{vocab}", inv.float(), persistent=False)

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        total = x["hist_len"].new_zeros((), dtype=torch.float32)
        for vocab, names in self.inputs.items():
            ids = []
            for name, is_history in names:
                t = x[name]
                if is_history:
                    t = t[history_mask(x["hist_len"], t.shape[1])]
                ids.append(t.reshape(-1))
            present = torch.unique(torch.cat(ids))
            rows = self.model.embeddings.tables[vocab].weight[present]
            inv = getattr(self, f"inv_freq_{vocab}")[present]
            total = total + (rows.pow(2).sum(-1) * inv).sum()
        return self.lam * total
