"""load_manifest: valid directories, missing / empty / foreign ones, bad manifests, paths leaving the directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from din_runtime import ManifestError, ModelDirError, load_manifest
from runtime_fixtures import SCHEMA, VOCABS, build_model_dir


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture
def model_dir(pristine, tmp_path) -> Path:
    """A fresh copy each test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "m"))


def edit_manifest(model_dir: Path, change) -> None:
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_loads_schema_and_vocabularies(pristine):
    m = load_manifest(pristine)
    assert m.max_len == SCHEMA["max_len"]
    assert m.inputs == ("user_id", "gender", "item_id", "cate_id", "hist_item_id", "hist_cate_id", "hist_len", "dense")
    assert m.histories == ("hist_item_id", "hist_cate_id")
    assert m.dense == ("age", "price")
    assert m.vocabs["item_id"]["100"] == 2
    assert m.vocabs["item_id"][VOCABS["item_id"][-1]] == len(VOCABS["item_id"]) + 1
    assert m.vocab_of("hist_cate_id") == "cate_id" and m.vocab_of("hist_len") is None
    with pytest.raises(TypeError):
        m.vocabs["item_id"]["999"] = 5


@pytest.mark.parametrize("model,width", [
    ({"name": "din", "attention_hidden": [80, 40]}, 80), ({"name": "din", "attention_hidden": [16, 32]}, 32),
    ({"name": "din", "attention_hidden": []}, 1),  # the unit is one Linear to its 1-wide output
    ({"name": "base", "attention_hidden": [80, 40]}, None), ({"name": "fixture"}, None), (None, None),
], ids=["paper", "widest-last", "no-hidden", "base", "no-width", "no-model"])
def test_attention_width_is_the_units_widest_layer(model_dir, model, width):
    edit_manifest(model_dir, lambda m: m.update(model=model) if model is not None else m.pop("model"))
    assert load_manifest(model_dir).attention_width == width


@pytest.mark.parametrize("hidden", [[80, 0], [80, "40"], "80", [True]])
def test_attention_width_must_be_positive_integers(model_dir, hidden):
    edit_manifest(model_dir, lambda m: m.update(model={"name": "din", "attention_hidden": hidden}))
    with pytest.raises(ManifestError, match="attention_hidden"):
        load_manifest(model_dir)


def test_missing_dir(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        load_manifest(tmp_path / "nope")


def test_file_instead_of_dir(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelDirError, match="not a directory"):
        load_manifest(tmp_path / "model.onnx")


def test_empty_dir(tmp_path):
    with pytest.raises(ModelDirError, match="empty"):
        load_manifest(tmp_path)


def test_foreign_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelDirError, match="not a din model directory.*notes.txt"):
        load_manifest(tmp_path)


def test_training_run_dir_is_recognised(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="din-export export"):
        load_manifest(tmp_path)


def test_foreign_manifest_format(model_dir):
    edit_manifest(model_dir, lambda m: m.update(format="something-else"))
    with pytest.raises(ModelDirError, match="format 'something-else'"):
        load_manifest(model_dir)


def test_newer_format_version(model_dir):
    edit_manifest(model_dir, lambda m: m.update(format_version=2))
    with pytest.raises(ManifestError, match="format_version 2"):
        load_manifest(model_dir)


def test_manifest_not_json(model_dir):
    (model_dir / "manifest.json").write_text('{"format": "din-model",\n  oops}')
    with pytest.raises(ManifestError, match="line 2"):
        load_manifest(model_dir)


@pytest.mark.parametrize("key", ["model_file", "sha256", "schema", "vocab_files", "inputs", "outputs"])
def test_missing_key(model_dir, key):
    edit_manifest(model_dir, lambda m: m.pop(key))
    with pytest.raises(ManifestError, match=key):
        load_manifest(model_dir)


@pytest.mark.parametrize("path", ["../outside.json", "/etc/passwd", "vocab/../../outside.json", "vocab\\..\\x.json"])
def test_vocab_path_must_stay_inside(model_dir, path):
    (model_dir.parent / "outside.json").write_text(json.dumps(VOCABS["item_id"]))
    edit_manifest(model_dir, lambda m: m["vocab_files"].update(item_id=path))
    with pytest.raises(ManifestError, match="relative path inside"):
        load_manifest(model_dir)


def test_model_file_path_must_stay_inside(model_dir):
    shutil.copy(model_dir / "model.onnx", model_dir.parent / "model.onnx")
    edit_manifest(model_dir, lambda m: m.update(model_file="../model.onnx"))
    with pytest.raises(ManifestError, match="model_file"):
        load_manifest(model_dir)


def test_symlink_pointing_out_is_refused(model_dir):
    outside = model_dir.parent / "outside.json"
    outside.write_text(json.dumps(VOCABS["item_id"]))
    (model_dir / "vocab" / "item_id.json").unlink()
    (model_dir / "vocab" / "item_id.json").symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the model directory"):
        load_manifest(model_dir)


def test_symlink_inside_is_fine(model_dir):
    (model_dir / "vocab" / "items.json").write_text(json.dumps(VOCABS["item_id"]))
    (model_dir / "vocab" / "item_id.json").unlink()
    (model_dir / "vocab" / "item_id.json").symlink_to("items.json")
    assert load_manifest(model_dir).vocabs["item_id"]["101"] == 3


def test_missing_vocab_file(model_dir):
    (model_dir / "vocab" / "gender.json").unlink()
    with pytest.raises(ManifestError, match="gender.*does not exist"):
        load_manifest(model_dir)


def test_vocab_size_must_match(model_dir):
    (model_dir / "vocab" / "gender.json").write_text(json.dumps(["F", "M", "X"]))
    with pytest.raises(ManifestError, match="size"):
        load_manifest(model_dir)


def test_vocab_duplicates_and_types(model_dir):
    (model_dir / "vocab" / "gender.json").write_text(json.dumps(["F", "F"]))
    with pytest.raises(ManifestError, match="'F' twice"):
        load_manifest(model_dir)
    (model_dir / "vocab" / "gender.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ManifestError, match="list of strings"):
        load_manifest(model_dir)


def test_inputs_must_follow_schema_order(model_dir):
    edit_manifest(model_dir, lambda m: m["inputs"].reverse())
    with pytest.raises(ManifestError, match="input order"):
        load_manifest(model_dir)


def test_input_vocab_must_agree(model_dir):
    edit_manifest(model_dir, lambda m: m["inputs"][0].update(vocab="item_id"))
    with pytest.raises(ManifestError, match="user_id"):
        load_manifest(model_dir)


def test_bad_sha_format(model_dir):
    edit_manifest(model_dir, lambda m: m.update(sha256="abc"))
    with pytest.raises(ManifestError, match="64 hex"):
        load_manifest(model_dir)


def test_oov_index_must_be_one(model_dir):
    edit_manifest(model_dir, lambda m: m.update(oov_index=0))
    with pytest.raises(ManifestError, match="oov_index"):
        load_manifest(model_dir)
