"""An id outside its vocabulary never reads another vocabulary's embedding row, on any path.

The runtime checks ids before every run, but a raw onnxruntime session or Triton feeds the graph as it
is. These tests feed the exported graphs directly: the optimised graph (and its candidate graph) must
behave like the plain graph, whose one Gather per table raises on an id past the end and counts a
negative id from the end of its own table (ONNX Gather), never crossing into another table.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from export_helpers import VOCAB_SIZES, exported, one_torch_thread, random_rows, run_dir, tiny_schema

from din_export.checkpoints import load_run
from din_export.export import CANDIDATE_FILE, MODEL_FILE
from din_export.optimize import inference_module

SCHEMA = tiny_schema()
# (input, vocabulary) of every id field: per-row fields and histories
FIELDS = [(s.name, s.vocab) for s in SCHEMA.sparse] + [(b.target, b.vocab) for b in SCHEMA.behaviour] + [
    (b.history, b.vocab) for b in SCHEMA.behaviour]


def session(name: str, file: str = MODEL_FILE) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported(name) / file), providers=["CPUExecutionProvider"])


def feeds(batch: int = 4, seed: int = 3) -> dict[str, np.ndarray]:
    x = random_rows(SCHEMA, batch, np.random.default_rng(seed))
    x["hist_len"][0] = SCHEMA.max_len  # row 0's whole history is real, so an id anywhere in it is read
    return x


def with_id(x: dict[str, np.ndarray], name: str, value: int) -> dict[str, np.ndarray]:
    y = {k: v.copy() for k, v in x.items()}
    y[name][0, ...] = value
    return y


def prob(sess: ort.InferenceSession, x: dict[str, np.ndarray]) -> np.ndarray:
    return sess.run(["prob"], x)[0]


@pytest.mark.parametrize(("name", "vocab"), FIELDS)
def test_an_id_past_its_vocabulary_is_an_error_as_in_the_plain_graph(name: str, vocab: str) -> None:
    optimised, plain = session("fp32"), session("plain")
    x = feeds()
    # size: the first id past the table; + 8 and 40: where a stacked table would hold another vocabulary
    for bad in (VOCAB_SIZES[vocab], VOCAB_SIZES[vocab] + 8, VOCAB_SIZES[vocab] + 40):
        for sess in (plain, optimised):
            with pytest.raises(Exception, match="out of (data )?bounds"):
                prob(sess, with_id(x, name, bad))


@pytest.mark.parametrize(("name", "vocab"), FIELDS)
def test_a_negative_id_counts_from_the_end_of_its_own_table(name: str, vocab: str) -> None:
    optimised, plain = session("fp32"), session("plain")
    x = feeds()
    for negative in (-1, -3):
        expected = prob(optimised, with_id(x, name, VOCAB_SIZES[vocab] + negative))
        np.testing.assert_array_equal(prob(optimised, with_id(x, name, negative)), expected)
        np.testing.assert_allclose(prob(plain, with_id(x, name, negative)), expected, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="out of (data )?bounds"):
        prob(optimised, with_id(x, name, -VOCAB_SIZES[vocab] - 1))


def test_the_candidate_graph_keeps_its_tables_apart_too() -> None:
    sess = session("fp32", CANDIDATE_FILE)
    x = feeds(batch=5)
    x = {k: (v[:1] if k in SCHEMA.histories or k == "hist_len" else v) for k, v in x.items()}
    for name, vocab in FIELDS:
        with pytest.raises(Exception, match="out of (data )?bounds"):
            prob(sess, with_id(x, name, VOCAB_SIZES[vocab] + 8))
        np.testing.assert_array_equal(prob(sess, with_id(x, name, -1)),
                                      prob(sess, with_id(x, name, VOCAB_SIZES[vocab] - 1)))


def test_the_rewrite_holds_one_table_per_vocabulary_with_the_models_weights() -> None:
    from din_export.optimize import SeparateEmbeddings

    with one_torch_thread():
        model, _, _ = load_run(run_dir())
        emb = inference_module(model).embeddings
        assert isinstance(emb, SeparateEmbeddings)
        for vocab, table in model.embeddings.tables.items():
            assert torch.equal(emb.table(vocab), table.weight)
        x = {k: torch.from_numpy(v) for k, v in feeds().items()}
        with torch.no_grad():
            for got, expected in zip(emb(x), model.embeddings(x), strict=True):
                assert torch.equal(got, expected)
