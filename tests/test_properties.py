"""Property tests (hypothesis): the runtime encoder on random schemas and rows, and torch/ONNX parity of DINs
exported from random schemas and configurations, at many batch sizes and history lengths.

The encoder is checked against a plain-Python reading of docs/design.md (ids as strings, 0 padding,
1 OOV, known ids from 2, the most recent max_len items, right padding to the batch's longest kept
history); parity exports a tiny trained DIN per example (a few seconds each, so few examples) and
checks it at a grid of shapes, through `score_arrays` and through raw rows and the encoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from din_runtime import InputError, Scorer, load_manifest
from din_runtime.encode import encode_rows
from din_runtime.manifest import Manifest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

OOV, PAD = 1, 0

# --- Random schemas for the encoder (no graph needed: load_manifest does not run the model) ----------------

RAW_ID = st.one_of(st.integers(-10**6, 10**6).map(str), st.text("abcxyz-_é中", min_size=1, max_size=5))


@st.composite
def runtime_schemas(draw) -> tuple[dict, dict[str, list[str]]]:
    """A schema.json dict with 0-3 sparse, 1-3 behaviour, 0-3 dense fields, and its vocabularies."""
    n_vocabs = draw(st.integers(1, 4))
    vocabs = {f"v{i}": draw(st.lists(RAW_ID, max_size=8, unique=True)) for i in range(n_vocabs)}
    names = list(vocabs)
    sparse = [{"name": f"s{i}", "vocab": draw(st.sampled_from(names))} for i in range(draw(st.integers(0, 3)))]
    behaviour = [{"target": f"t{i}", "history": f"h{i}", "vocab": draw(st.sampled_from(names))}
                 for i in range(draw(st.integers(1, 3)))]
    dense = [{"name": f"d{i}", "mean": 0.0, "std": 1.0} for i in range(draw(st.integers(0, 3)))]
    schema = {"version": 1, "max_len": draw(st.integers(1, 6)), "group": "s0", "sparse": sparse,
              "dense": dense, "behaviour": behaviour,
              "vocab_sizes": {name: len(ids) + 2 for name, ids in vocabs.items()}}
    return schema, vocabs


def input_entries(schema: dict) -> list[dict]:
    entries = [{"name": s["name"], "dtype": "int64", "dims": ["batch"], "vocab": s["vocab"]} for s in schema["sparse"]]
    entries += [{"name": b["target"], "dtype": "int64", "dims": ["batch"], "vocab": b["vocab"]}
                for b in schema["behaviour"]]
    entries += [{"name": b["history"], "dtype": "int64", "dims": ["batch", "seq"], "vocab": b["vocab"]}
                for b in schema["behaviour"]]
    entries.append({"name": "hist_len", "dtype": "int64", "dims": ["batch"]})
    if schema["dense"]:
        entries.append({"name": "dense", "dtype": "float32", "dims": ["batch", len(schema["dense"])]})
    return entries


def runtime_dir(root: Path, schema: dict, vocabs: dict[str, list[str]]) -> Manifest:
    (root / "vocab").mkdir(parents=True)
    for name, ids in vocabs.items():
        (root / "vocab" / f"{name}.json").write_text(json.dumps(ids))
    model = b"not read by load_manifest"
    (root / "model.onnx").write_bytes(model)
    manifest = {"format": "din-model", "format_version": 1, "model_file": "model.onnx",
                "sha256": hashlib.sha256(model).hexdigest(), "schema": schema,
                "vocab_files": {name: f"vocab/{name}.json" for name in vocabs},
                "inputs": input_entries(schema), "outputs": [{"name": "prob", "dims": ["batch"]}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return load_manifest(root)


def raw_id(draw, known: list[str]) -> Any:
    """A known id (as a string, or as an int when it is one), or an unseen one (string or int)."""
    kind = draw(st.sampled_from(["known", "known", "unseen-text", "unseen-int"]) if known else
                st.sampled_from(["unseen-text", "unseen-int"]))
    if kind == "known":
        value = draw(st.sampled_from(known))
        as_int = value.lstrip("-").isdigit() and str(int(value)) == value and draw(st.booleans())
        return int(value) if as_int else value
    if kind == "unseen-text":
        return "unseen:" + draw(st.text("pq", max_size=3))  # ':' never occurs in RAW_ID
    return draw(st.integers(10**7, 10**30))  # outside RAW_ID's integer range


def raw_rows(draw, m: Manifest, vocabs: dict[str, list[str]], min_rows: int = 0) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(min_rows, 6))):
        row: dict[str, Any] = {s.name: raw_id(draw, vocabs[s.vocab]) for s in m.sparse}
        row.update({b.target: raw_id(draw, vocabs[b.vocab]) for b in m.behaviour})
        length = draw(st.integers(0, m.max_len + 4))
        row.update({b.history: [raw_id(draw, vocabs[b.vocab]) for _ in range(length)] for b in m.behaviour})
        number = st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False), st.integers(-10**9, 10**9))
        row.update({d: draw(number) for d in m.dense})
        row["label"] = draw(st.sampled_from([0, 1, "anything"]))  # not a model field: ignored
        rows.append(row)
    return rows


def expected_encoding(m: Manifest, vocabs: dict[str, list[str]], rows: list[dict]) -> tuple[dict, dict]:
    """docs/design.md's encoding, written out plainly: the reference the encoder must match."""
    def index(vocab: str, value: Any) -> int:
        ids = vocabs[vocab]
        return ids.index(str(value)) + 2 if str(value) in ids else OOV

    arrays: dict[str, Any] = {}
    oov: dict[str, int] = {}
    for name, vocab in [(s.name, s.vocab) for s in m.sparse] + [(b.target, b.vocab) for b in m.behaviour]:
        arrays[name] = np.array([index(vocab, r[name]) for r in rows], dtype=np.int64)
        oov[name] = int(np.sum(arrays[name] == OOV))
    kept = [len(r[m.histories[0]][-m.max_len:]) for r in rows]
    width = max([1, *kept])
    for b in m.behaviour:
        hist = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            recent = r[b.history][-m.max_len:]
            hist[i, :len(recent)] = [index(b.vocab, v) for v in recent]
        arrays[b.history] = hist
        oov[b.history] = sum(index(b.vocab, v) == OOV for r in rows for v in r[b.history][-m.max_len:])
    arrays["hist_len"] = np.array(kept, dtype=np.int64)
    if m.dense:
        values = [[r[d] for d in m.dense] for r in rows]
        arrays["dense"] = np.array(values, dtype=np.float32).reshape(len(rows), len(m.dense))
    return arrays, oov


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runtime_schemas(), st.data())
def test_encoder_matches_the_design(schema_and_vocabs, data):
    schema, vocabs = schema_and_vocabs
    with tempfile.TemporaryDirectory() as tmp:
        m = runtime_dir(Path(tmp), schema, vocabs)
    rows = raw_rows(data.draw, m, vocabs)
    encoded = encode_rows(m, rows)
    want, want_oov = expected_encoding(m, vocabs, rows)
    assert list(encoded.arrays) == list(m.inputs)
    for name in m.inputs:
        got = encoded.arrays[name]
        assert got.dtype == want[name].dtype and got.shape == want[name].shape, name
        np.testing.assert_array_equal(got, want[name], err_msg=name)
    assert encoded.oov == want_oov
    for name in m.inputs:
        vocab = m.vocab_of(name)
        if vocab:
            assert ((encoded.arrays[name] >= 0) & (encoded.arrays[name] < m.vocab_sizes[vocab])).all()
    # positions before hist_len are real (never the padding index), positions after are padding
    if rows:
        width = encoded.arrays[m.histories[0]].shape[1]
        real = np.arange(width)[None, :] < encoded.arrays["hist_len"][:, None]
        for h in m.histories:
            assert (encoded.arrays[h][real] != PAD).all() and (encoded.arrays[h][~real] == PAD).all()
    # round trip: a known id's index names it in the vocabulary file
    inverse = {name: {i + 2: raw for i, raw in enumerate(ids)} for name, ids in vocabs.items()}
    for row_index, row in enumerate(rows):
        for b in m.behaviour:
            index = int(encoded.arrays[b.target][row_index])
            if index != OOV:
                assert inverse[b.vocab][index] == str(row[b.target])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runtime_schemas(), st.data())
def test_encoder_names_the_first_bad_row_and_field(schema_and_vocabs, data):
    schema, vocabs = schema_and_vocabs
    with tempfile.TemporaryDirectory() as tmp:
        m = runtime_dir(Path(tmp), schema, vocabs)
    rows = raw_rows(data.draw, m, vocabs, min_rows=1)
    bad_row = data.draw(st.integers(0, len(rows) - 1))
    fields = [s.name for s in m.sparse] + list(m.targets) + list(m.histories) + list(m.dense)
    field = data.draw(st.sampled_from(fields))
    if field in m.dense:
        bad = data.draw(st.sampled_from([None, True, "1.5", [1.0], math.nan, math.inf, 1e39]))
    elif field in m.histories:
        bad = data.draw(st.sampled_from([None, 5, "a|b", {"a": 1}]))
    else:
        bad = data.draw(st.sampled_from([None, True, False, 3.5, math.nan, [1], {"a": 1}]))
    rows[bad_row][field] = bad
    with pytest.raises(InputError) as caught:
        encode_rows(m, rows)
    assert (caught.value.row, caught.value.field) == (bad_row, field)


def test_encoder_batch_is_the_rows_alone_padded(tmp_path):
    """Encoding is row-independent: a batch equals its rows encoded alone, right-padded to the batch width."""
    vocabs = {"v0": ["1", "2", "3"], "v1": ["a", "b"]}
    schema = {"version": 1, "max_len": 3, "group": "s0", "sparse": [{"name": "s0", "vocab": "v1"}], "dense": [],
              "behaviour": [{"target": "t0", "history": "h0", "vocab": "v0"}],
              "vocab_sizes": {"v0": 5, "v1": 4}}
    m = runtime_dir(tmp_path, schema, vocabs)
    rows = [{"s0": "a", "t0": 2, "h0": [1, 2, 3, 9, 2]}, {"s0": "z", "t0": "3", "h0": []},
            {"s0": "b", "t0": 7, "h0": ["2"]}]
    batch = encode_rows(m, rows).arrays
    for i, row in enumerate(rows):
        alone = encode_rows(m, [row]).arrays
        width = alone["h0"].shape[1]
        np.testing.assert_array_equal(batch["h0"][i, :width], alone["h0"][0])
        assert (batch["h0"][i, width:] == PAD).all()
        for name in ("s0", "t0", "hist_len"):
            assert batch[name][i] == alone[name][0]
    np.testing.assert_array_equal(batch["h0"][0], [4, 1, 3])  # the most recent 3 of [1, 2, 3, 9, 2]; 9 unseen


# --- torch / ONNX parity on random schemas ----------------------------------------------------------------


@st.composite
def din_setups(draw) -> dict[str, Any]:
    """A schema and model config as plain data (`build_setup` makes the objects), so that explicit
    examples can be written without importing torch at collection time."""
    from din_export.model import ACTIVATIONS, ATTENTION_NORMS, MODELS

    n_behaviour, n_sparse = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    layer = st.integers(2, 6)
    return {
        "behaviour": n_behaviour, "sparse": n_sparse,
        "dense": [(draw(st.floats(-5, 5)), draw(st.floats(0.5, 3))) for _ in range(draw(st.integers(0, 2)))],
        "sizes": [draw(st.integers(3, 12)) for _ in range(n_behaviour + n_sparse)],
        "max_len": draw(st.integers(1, 6)), "optimize": draw(st.booleans()),
        "cfg": {"model": draw(st.sampled_from(MODELS)), "embed_dim": draw(st.integers(2, 4)),
                "attention_hidden": draw(st.lists(layer, min_size=1, max_size=2)),
                "attention_activation": draw(st.sampled_from(ACTIVATIONS)),
                "attention_norm": draw(st.sampled_from(ATTENTION_NORMS)),
                "mlp_hidden": draw(st.lists(layer, min_size=1, max_size=2)),
                "mlp_activation": draw(st.sampled_from(ACTIVATIONS)),
                "mlp_input_bn": draw(st.booleans()), "use_hist_sum": draw(st.booleans())},
    }


def build_setup(spec: dict[str, Any]) -> tuple[Any, Any, bool]:
    from din_export.model import ModelConfig
    from din_export.schema import Behaviour, DenseField, Schema, SparseField

    behaviour = tuple(Behaviour(f"t{i}", f"h{i}", f"bv{i}") for i in range(spec["behaviour"]))
    sparse = tuple(SparseField(f"s{i}", f"sv{i}") for i in range(spec["sparse"]))
    dense = tuple(DenseField(f"d{i}", mean=m, std=s) for i, (m, s) in enumerate(spec["dense"]))
    sizes = {f.vocab: size for f, size in zip((*behaviour, *sparse), spec["sizes"], strict=True)}
    schema = Schema(max_len=spec["max_len"], behaviour=behaviour, vocab_sizes=sizes, sparse=sparse, dense=dense,
                    group=sparse[0].name if sparse else "user", source="hypothesis", protocol="test")
    return schema, ModelConfig.from_dict(spec["cfg"]), spec["optimize"]


def _spec(optimize: bool = True, behaviour: int = 2, sparse: int = 1, dense: int = 1, max_len: int = 4,
          **cfg: Any) -> dict[str, Any]:
    base = {"model": "din", "embed_dim": 3, "attention_hidden": [4, 3], "attention_activation": "dice",
            "attention_norm": "none", "mlp_hidden": [5, 3], "mlp_activation": "dice", "mlp_input_bn": True,
            "use_hist_sum": True}
    return {"behaviour": behaviour, "sparse": sparse, "dense": [(2.0, 1.5)] * dense,
            "sizes": [5 + i for i in range(behaviour + sparse)], "max_len": max_len, "optimize": optimize,
            "cfg": {**base, **cfg}}


# Explicit examples run on every run, before the random ones: together they take every model, attention
# norm, activation (in the unit and the MLP), pooling and input-normalisation choice, with and without
# sparse or dense fields, through the optimised graph, so a defect in one branch cannot hide behind
# which few random draws came up (the random examples then explore the combinations).
EXAMPLES = [
    _spec(attention_norm="softmax", use_hist_sum=False, dense=0),
    _spec(attention_activation="prelu", mlp_activation="sigmoid", mlp_input_bn=False, sparse=0, dense=2,
          max_len=1),
    _spec(model="base", mlp_activation="relu", sparse=2, behaviour=1),
    _spec(attention_activation="relu", attention_norm="softmax", mlp_activation="prelu", behaviour=3, dense=0,
          sparse=0),
    _spec(optimize=False, attention_activation="sigmoid", attention_norm="softmax", use_hist_sum=False),
]


def trained_briefly(schema: Any, cfg: Any, steps: int = 5, seed: int = 0) -> Any:
    """A DIN after a few Adam steps with a large BatchNorm/Dice momentum, so the running statistics the
    export must carry are far from their initial (0, 1); eval mode."""
    import torch
    from export_helpers import random_rows

    from din_export.model import DIN

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DIN(schema, cfg)
    for module in model.modules():
        if hasattr(module, "momentum"):
            module.momentum = 0.5
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(steps):
        batch = {k: torch.from_numpy(v) for k, v in random_rows(schema, 64, rng).items()}
        label = (batch[schema.behaviour[0].target] % 2).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def export_dir(root: Path, model: Any, schema: Any, cfg: Any, optimize: bool) -> Path:
    """model -> ONNX (the exporter's own functions) -> a model directory din_runtime can load."""
    from din_export.export import DEFAULT_OPSET, build_manifest, example_sizes, graph_spec, to_onnx, write_model_dir
    from din_export.optimize import inference_module

    spec = graph_spec(schema)
    example = example_sizes(schema)
    graph = to_onnx(inference_module(model) if optimize else model, schema, spec, DEFAULT_OPSET, example)
    data = root / "data"
    (data / "vocab").mkdir(parents=True)
    for vocab, size in schema.vocab_sizes.items():
        (data / "vocab" / f"{vocab}.json").write_text(json.dumps([f"{vocab}:{i}" for i in range(size - 2)]))
    model_bytes = graph.SerializeToString()
    manifest = build_manifest(model_bytes, schema, spec, {"model": cfg.to_dict()}, {}, opset=DEFAULT_OPSET,
                              precision="fp32", quantize=None, optimized=optimize, example=example)
    out = root / "model"
    out.mkdir()
    write_model_dir(out, model_bytes, manifest, data, schema)
    return out


def random_arrays(schema: Any, batch: int, seq: int, rng: np.random.Generator) -> tuple[dict, dict]:
    """Valid inputs with any id (padding and OOV included) at real positions, and the same inputs with
    random ids instead of padding after hist_len (the mask must make those invisible)."""
    arrays = {s.name: rng.integers(0, schema.vocab_sizes[s.vocab], batch) for s in schema.sparse}
    arrays.update({b.target: rng.integers(0, schema.vocab_sizes[b.vocab], batch) for b in schema.behaviour})
    hist_len = rng.integers(0, seq + 1, batch)
    real = np.arange(seq)[None, :] < hist_len[:, None]
    garbage = dict(arrays)
    for b in schema.behaviour:
        ids = rng.integers(0, schema.vocab_sizes[b.vocab], (batch, seq))
        arrays[b.history] = np.where(real, ids, PAD)
        garbage[b.history] = ids
    arrays["hist_len"] = garbage["hist_len"] = hist_len
    if schema.dense:
        arrays["dense"] = garbage["dense"] = rng.normal(0, 10, (batch, len(schema.dense))).astype(np.float32)
    return ({k: v.astype(np.int64) if v.dtype.kind == "i" else v for k, v in arrays.items()},
            {k: v.astype(np.int64) if v.dtype.kind == "i" else v for k, v in garbage.items()})


def torch_probs(model: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.sigmoid(model({k: torch.from_numpy(v) for k, v in arrays.items()})).numpy()


def raw_requests(schema: Any, rng: np.random.Generator, n: int) -> list[dict]:
    """Raw rows with known and unseen ids and histories up to twice max_len."""
    def raw(vocab: str) -> str:
        i = int(rng.integers(-1, schema.vocab_sizes[vocab] - 2))
        return f"{vocab}:{i}" if i >= 0 else "never-seen"

    rows = []
    for _ in range(n):
        length = int(rng.integers(0, 2 * schema.max_len + 1))
        row: dict[str, Any] = {s.name: raw(s.vocab) for s in schema.sparse}
        row.update({b.target: raw(b.vocab) for b in schema.behaviour})
        row.update({b.history: [raw(b.vocab) for _ in range(length)] for b in schema.behaviour})
        row.update({d.name: float(rng.normal(d.mean, 3 * d.std)) for d in schema.dense})
        rows.append(row)
    return rows


@pytest.mark.slow
# Each example trains and exports a model (seconds), so few examples, and no "explain" phase re-running them.
@settings(max_examples=5, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(din_setups())
@example(EXAMPLES[0])
@example(EXAMPLES[1])
@example(EXAMPLES[2])
@example(EXAMPLES[3])
@example(EXAMPLES[4])
def test_torch_onnx_parity_on_random_schemas(setup):
    pytest.importorskip("torch")
    schema, cfg, optimize = build_setup(setup)
    model = trained_briefly(schema, cfg)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        scorer = Scorer.load(export_dir(Path(tmp), model, schema, cfg, optimize))
    for batch in (1, 2, 5, 33):
        for seq in dict.fromkeys((0, 1, schema.max_len, schema.max_len + 3, 2 * schema.max_len + 1)):
            arrays, garbage = random_arrays(schema, batch, seq, rng)
            onnx_probs = scorer.score_arrays(arrays)
            np.testing.assert_allclose(onnx_probs, torch_probs(model, arrays), rtol=0, atol=1e-5,
                                       err_msg=f"batch {batch} seq {seq} {cfg} optimize={optimize}")
            # exact masking: whatever sits after hist_len changes nothing
            np.testing.assert_array_equal(scorer.score_arrays(garbage), onnx_probs)
    rows = raw_requests(schema, rng, 17)
    encoded = scorer.encode(rows).arrays
    np.testing.assert_allclose(scorer.score(rows), torch_probs(model, encoded), rtol=0, atol=1e-5)
