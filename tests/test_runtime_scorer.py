"""Scorer: parity with the fixture's numpy function, integrity checks, devices, arrays, candidates, threads."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from din_runtime import DeviceError, DinRuntimeError, InputError, IntegrityError, Scorer
from din_runtime.scorer import external_data_tensors
from onnx import external_data_helper
from runtime_fixtures import VOCABS, build_graph, build_model_dir, manifest_for, reference_prob, request
from runtime_fixtures import weights as fixture_weights

HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("model") / "m", with_attention=True)


@pytest.fixture(scope="module")
def scorer(model_dir) -> Scorer:
    return Scorer.load(model_dir)


@pytest.fixture
def copy(model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "m"))


def rows(n: int, start: int = 0) -> list[dict]:
    return [request(i, hist=i % 7) for i in range(start, start + n)]


def test_scores_match_the_reference_function(scorer):
    batch = rows(40)
    probs = scorer.score(batch)
    assert probs.shape == (40,) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, reference_prob(scorer.encode(batch).arrays), rtol=1e-5, atol=1e-6)
    assert scorer.device == "cpu"
    assert scorer.input_names == scorer.manifest.inputs
    assert scorer.score([]).shape == (0,)


def test_scorer_is_immutable(scorer):
    with pytest.raises(AttributeError):
        scorer.device = "cuda"
    with pytest.raises(AttributeError):
        scorer.extra = 1


def test_sha_mismatch_after_one_byte(copy):
    path = copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256"):
        Scorer.load(copy)


def test_unloadable_model_with_matching_hash(copy):
    (copy / "model.onnx").write_bytes(b"\x0a\x05hello")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(b"\x0a\x05hello").hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="not a valid ONNX model|cannot load"):
        Scorer.load(copy)


def test_external_data_is_refused(tmp_path):
    model_dir = build_model_dir(tmp_path / "ext", external_data=True)
    assert (model_dir / "model.onnx.data").is_file()
    assert external_data_helper.uses_external_data(
        onnx.load(model_dir / "model.onnx", load_external_data=False).graph.initializer[0])
    with pytest.raises(IntegrityError, match="external data"):
        Scorer.load(model_dir)


def test_external_data_walker_agrees_with_onnx():
    plain = build_graph()
    assert external_data_tensors(plain.SerializeToString()) == []
    converted = build_graph()
    external_data_helper.convert_model_to_external_data(converted, location="x.data", size_threshold=0,
                                                        convert_attribute=True)
    expected = sorted(t.name for t in external_data_helper._get_all_tensors(converted)
                      if external_data_helper.uses_external_data(t))
    assert "bias_value" in expected
    assert sorted(external_data_tensors(converted.SerializeToString())) == expected


def test_external_data_in_an_attribute_only():
    model = build_graph()
    constant = next(n for n in model.graph.node if n.op_type == "Constant")
    tensor = constant.attribute[0].t
    external_data_helper.set_external_data(tensor, location="bias.bin")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    assert external_data_tensors(model.SerializeToString()) == ["bias_value"]


@pytest.mark.parametrize("data", [b"\x0a\xff", b"\x0b", b"\x0a\x05abc"])
def test_external_data_walker_rejects_garbage(data):
    with pytest.raises(ValueError):
        external_data_tensors(data)


def test_graph_inputs_must_match_manifest(copy):
    model = build_graph(with_attention=True)
    inputs = list(model.graph.input)
    del model.graph.input[:]
    model.graph.input.extend([inputs[1], inputs[0], *inputs[2:]])
    onnx.save_model(model, copy / "model.onnx")
    manifest = manifest_for((copy / "model.onnx").read_bytes(), with_attention=True)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="inputs"):
        Scorer.load(copy)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_without_provider_says_how_to_install(model_dir):
    with pytest.raises(DeviceError, match=r"din-toolkit\[gpu\]"):
        Scorer.load(model_dir, device="cuda")


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_auto_falls_back_to_cpu_with_a_warning(model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="din_runtime"):
        scorer = Scorer.load(model_dir, device="auto")
    assert scorer.device == "cpu"
    assert "CPU" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in this onnxruntime")
def test_cuda_scores_like_cpu(model_dir, scorer):
    gpu = Scorer.load(model_dir, device="cuda")
    assert gpu.device == "cuda"
    batch = rows(64)
    np.testing.assert_allclose(gpu.score(batch), scorer.score(batch), rtol=1e-5, atol=1e-6)


def test_bad_device_and_threads(model_dir):
    with pytest.raises(DeviceError, match="device"):
        Scorer.load(model_dir, device="tpu")
    with pytest.raises(DinRuntimeError, match="threads"):
        Scorer.load(model_dir, threads=0)
    assert Scorer.load(model_dir, threads=1).score(rows(3)).shape == (3,)


def test_score_arrays_casts_dtypes(scorer):
    batch = rows(10)
    arrays = scorer.encode(batch).arrays
    expected = scorer.score(batch)
    narrow = {k: (v.astype(np.int32) if k != "dense" else v.astype(np.float64)) for k, v in arrays.items()}
    np.testing.assert_array_equal(scorer.score_arrays(narrow), expected)
    dense = narrow.pop("dense")
    np.testing.assert_array_equal(scorer.score_arrays(narrow, dense=dense), expected)
    as_lists = {k: v.tolist() for k, v in arrays.items()}
    np.testing.assert_array_equal(scorer.score_arrays(**as_lists), expected)


@pytest.mark.parametrize("name, change, message", [
    ("item_id", lambda a: a.astype(np.float32), "integers"),
    ("item_id", lambda a: np.where(np.arange(len(a)) == 3, len(VOCABS["item_id"]) + 2, a), "outside"),
    ("hist_cate_id", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, -1, a), "outside"),
    ("hist_len", lambda a: a + 10, "history width"),
    ("dense", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.inf, a), "not finite"),
    ("dense", lambda a: a[:, :1], "shape"),
    ("gender", lambda a: a[:-1], "batch size"),
    ("user_id", lambda a: a.reshape(-1, 1), "dimensions"),
])
def test_score_arrays_validates(scorer, name, change, message):
    arrays = dict(scorer.encode(rows(8)).arrays)
    arrays[name] = change(arrays[name])
    with pytest.raises(InputError, match=message) as e:
        scorer.score_arrays(arrays)
    assert e.value.field == name


def test_score_arrays_out_of_range_names_the_row(scorer):
    arrays = dict(scorer.encode(rows(8)).arrays)
    arrays["user_id"] = arrays["user_id"].copy()
    arrays["user_id"][5] = 10_000
    with pytest.raises(InputError) as e:
        scorer.score_arrays(arrays)
    assert (e.value.row, e.value.field) == (5, "user_id")


def test_score_arrays_missing_and_unknown(scorer):
    arrays = dict(scorer.encode(rows(2)).arrays)
    with pytest.raises(InputError, match="not an input"):
        scorer.score_arrays(arrays, label=np.zeros(2))
    del arrays["hist_len"]
    with pytest.raises(InputError, match="missing") as e:
        scorer.score_arrays(arrays)
    assert e.value.field == "hist_len"


def test_score_candidates_equals_independent_rows(scorer):
    user = {"user_id": "u3", "gender": "F", "age": 41, "price": 2.0}
    history = {"hist_item_id": ["101", "999", "103", "104", "105", "106"],
               "hist_cate_id": ["Drama", "Comedy", "Drama", "Action", "Horror", "Drama"]}
    candidates = [{"item_id": str(100 + k), "cate_id": VOCABS["cate_id"][k % 4]} for k in range(12)]
    candidates[4]["item_id"] = "unknown"
    candidates[7]["price"] = 9.5
    got = scorer.score_candidates(user, history, candidates)
    expected = scorer.score([{**user, **history, **c} for c in candidates])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert got[7] != pytest.approx(scorer.score_candidates(user, history, [{**candidates[7], "price": 2.0}])[0])
    assert scorer.score_candidates(user, history, []).shape == (0,)


def test_score_candidates_errors(scorer):
    user = {"user_id": "u1", "gender": "M", "age": 30, "price": 1.0}
    history = {"hist_item_id": ["101"], "hist_cate_id": ["Drama"]}
    ok = {"item_id": "100", "cate_id": "Drama"}
    with pytest.raises(InputError, match="history") as e:
        scorer.score_candidates(user, history, [ok, {**ok, "hist_item_id": ["100"]}])
    assert e.value.row == 1
    with pytest.raises(InputError, match="missing") as e:
        scorer.score_candidates(user, history, [ok, {"item_id": "101"}])
    assert (e.value.row, e.value.field) == (1, "cate_id")
    with pytest.raises(InputError, match="missing from `user`") as e:
        scorer.score_candidates({"user_id": "u1", "age": 30, "price": 1.0}, history, [ok])
    assert e.value.field == "gender"
    with pytest.raises(InputError, match="user: .*boolean"):
        scorer.score_candidates({**user, "user_id": True}, history, [ok])
    with pytest.raises(InputError, match="history: .*one length"):
        scorer.score_candidates(user, {**history, "hist_cate_id": []}, [ok])


def test_thread_safety(scorer):
    sizes = [1, 7, 64, 3, 250, 16, 1, 99]
    batches = [rows(n, start=10 * i) for i, n in enumerate(sizes * 4)]
    alone = [scorer.score(b) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(scorer.score, batches))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_explain_returns_weights_of_kept_items(scorer):
    batch = [request(0, hist=2), request(1, hist=0), request(2, hist=9)]
    weights = scorer.explain(batch)
    assert [len(w) for w in weights] == [2, 0, 4]
    # the fixture's attention: history item x target item, plus the category weighted by position
    arrays = scorer.encode(batch).arrays
    w = fixture_weights()
    item, cate = arrays["hist_item_id"][0, :2], arrays["hist_cate_id"][0, :2]
    expected = w["W_item_id"][item] * w["W_item_id"][arrays["item_id"][0]] + w["W_cate_id"][cate] * np.array([1.0, 1.1])
    np.testing.assert_allclose(weights[0], expected, rtol=1e-5)


def test_explain_needs_an_attention_output(tmp_path):
    scorer = Scorer.load(build_model_dir(tmp_path / "plain"))
    with pytest.raises(DinRuntimeError, match="with-attention"):
        scorer.explain([request(0)])
