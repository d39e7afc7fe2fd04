"""din_runtime.features: the schema JSON's one validator, the vocabulary loader, the derived maps, the padding."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from din_runtime import ManifestError, SchemaError, Scorer, load_manifest
from din_runtime.features import (
    DENSE,
    HISTORY,
    ID,
    LENGTH,
    PAD_INDEX,
    Dense,
    Features,
    FeatureSpec,
    Padding,
    id_key,
    read_vocab,
)
from runtime_fixtures import SCHEMA, VOCABS

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


def edited(change: Any) -> dict:
    d = copy.deepcopy(SCHEMA)
    change(d)
    return d


def test_round_trip_schema_json_spec_dict() -> None:
    for d in (SCHEMA, json.loads((DEMO / "manifest.json").read_text())["schema"]):
        spec = FeatureSpec.from_dict(d)
        again = spec.to_dict()
        assert FeatureSpec.from_dict(again) == spec
        # the JSON on disk keeps its keys and their order (old datasets and models read as before)
        assert json.dumps(again) == json.dumps({**again, **d})
    spec = FeatureSpec.from_dict(SCHEMA)
    assert spec.dense == (Dense("age", 30.0, 10.0), Dense("price", 5.0, 2.0))
    assert [d.scale for d in (Dense("a", 3.0, 2.5), Dense("b", 3.0, 0.0))] == [2.5, 1.0]  # a constant column
    integral = edited(lambda d: d["dense"][0].update(mean=30, std=10))
    out = FeatureSpec.from_dict(integral).to_dict()
    assert json.dumps(out) == json.dumps({**out, **integral})  # 30 stays 30, not 30.0


def test_other_top_level_keys_are_ignored() -> None:
    assert FeatureSpec.from_dict({**SCHEMA, "item_frequency": "item_freq.npy"}) == FeatureSpec.from_dict(SCHEMA)


def test_derived_maps_and_input_order() -> None:
    spec = FeatureSpec.from_dict(edited(lambda d: d["vocab_sizes"].update(unused=5)))
    assert spec.inputs == ("user_id", "gender", "item_id", "cate_id", "hist_item_id", "hist_cate_id", "hist_len",
                           "dense")
    assert spec.vocab_names == ("user_id", "gender", "item_id", "cate_id")  # in use only, first-use order
    assert dict(spec.vocab_by_field) == {"user_id": "user_id", "gender": "gender", "item_id": "item_id",
                                         "cate_id": "cate_id", "hist_item_id": "item_id", "hist_cate_id": "cate_id"}
    assert spec.vocab_of("hist_len") is None and spec.vocab_of("age") is None
    assert dict(spec.input_kinds) == {"user_id": ID, "gender": ID, "item_id": ID, "cate_id": ID,
                                      "hist_item_id": HISTORY, "hist_cate_id": HISTORY, "hist_len": LENGTH,
                                      "dense": DENSE}
    assert list(spec.request_kinds) == ["user_id", "gender", "item_id", "cate_id", "hist_item_id", "hist_cate_id",
                                        "hist_len", "age", "price"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["behaviour"][1].update(vocab=3), r"schema behaviour\[1\]\.vocab must be a non-empty string"),
    (lambda d: d["behaviour"][0].pop("history"), r"schema behaviour\[0\] has keys .*expected"),
    (lambda d: d["sparse"][1].update(color="red"), r"schema sparse\[1\] has keys"),
    (lambda d: d["dense"][1].update(std=-1.0), r"schema dense\[1\]\.std must be a finite non-negative number"),
    (lambda d: d["dense"][0].update(mean="30"), r"schema dense\[0\]\.mean must be a finite number"),
    (lambda d: d["dense"][0].update(mean=float("nan")), r"schema dense\[0\]\.mean must be a finite number"),
    (lambda d: d.update(max_len="4"), "schema max_len must be an integer"),
    (lambda d: d.update(max_len=True), "schema max_len must be an integer"),
    (lambda d: d.update(max_len=0), "schema max_len must be an integer"),
    (lambda d: d["vocab_sizes"].update(gender=1), r"schema vocab_sizes\['gender'\] must be an integer >= 2"),
    (lambda d: d["vocab_sizes"].update(gender=4.0), r"schema vocab_sizes\['gender'\] must be an integer"),
    (lambda d: d["vocab_sizes"].pop("gender"), "field 'gender' uses vocabulary 'gender', which has no size"),
    (lambda d: d.update(behaviour=[]), "schema behaviour is empty"),
    (lambda d: d.pop("behaviour"), "schema has no behaviour list"),
    (lambda d: d.update(sparse={"name": "x"}), "schema sparse must be a list of objects"),
    (lambda d: d["sparse"].append({"name": "item_id", "vocab": "item_id"}), r"collide: \['item_id'\]"),
    (lambda d: d["dense"].append({"name": "hist_len"}), r"collide: \['hist_len'\]"),
    (lambda d: d.update(group=""), "schema group must be a field name"),
    (lambda d: d.update(version=2), "schema version 2 is not supported"),
    (lambda d: d.update(extra=[]), "schema extra must be an object"),
])
def test_validation_errors_name_the_field(change: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=message) as info:
        FeatureSpec.from_dict(edited(change))
    # one error class for both sides: a ManifestError in a model directory, a ValueError for datasets
    assert isinstance(info.value, ManifestError) and isinstance(info.value, ValueError)


def test_a_manifest_schema_is_checked_by_the_same_validator(tmp_path: Path) -> None:
    import shutil

    model_dir = Path(shutil.copytree(DEMO, tmp_path / "demo"))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["schema"]["dense"][0]["std"] = "15"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match=r"manifest schema dense\[0\]\.std"):
        load_manifest(model_dir)


def test_dataset_schema_json_is_checked_strictly(tmp_path: Path) -> None:
    from din_export.data import DataError, load_schema

    (tmp_path / "schema.json").write_text(json.dumps(edited(lambda d: d.update(max_len="4"))))
    with pytest.raises(DataError, match=r"schema.json max_len must be an integer"):
        load_schema(tmp_path)
    (tmp_path / "schema.json").write_text("{oops")
    with pytest.raises(DataError, match="schema.json is not valid JSON"):
        load_schema(tmp_path)


def write_vocabs(root: Path, vocabs: dict[str, Any]) -> None:
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    for name, ids in vocabs.items():
        (root / "vocab" / f"{name}.json").write_text(ids if isinstance(ids, str) else json.dumps(ids))


def test_dataset_features_read_every_vocabulary_in_use(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    write_vocabs(tmp_path, VOCABS)
    features = Features.of_dataset(tmp_path)
    assert list(features.vocabs) == list(features.spec.vocab_names)
    assert features.vocabs["gender"] == {"F": 2, "M": 3}
    assert list(features.vocabs["item_id"]) == VOCABS["item_id"]  # file order is index order


@pytest.mark.parametrize(("ids", "message"), [
    (None, "cannot read vocabulary file .*gender.json"),
    ('["F", "M"', "vocabulary file .*gender.json is not valid JSON"),
    ({"F": 2}, "must be a JSON list of strings"),
    (["F", 7], "must be a JSON list of strings"),
    (["F", "F"], "lists 'F' twice"),
    (["F", "M", "X"], "vocabulary 'gender' has 3 ids, so its size is 5 with padding and OOV, but schema "
                      "vocab_sizes says 4"),
])
def test_vocabulary_errors(tmp_path: Path, ids: Any, message: str) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    write_vocabs(tmp_path, {**VOCABS, "gender": ids} if ids is not None else
                 {k: v for k, v in VOCABS.items() if k != "gender"})
    with pytest.raises(SchemaError, match=message):
        Features.of_dataset(tmp_path)
    with pytest.raises(SchemaError, match=message):
        read_vocab(tmp_path / "vocab" / "gender.json", "gender", 4)


def test_id_keys() -> None:
    assert [id_key(v) for v in ("07", 7, np.int64(7), 7.0, np.float32(7))] == ["07", "7", "7", "7", "7"]
    for bad, why in ((True, "boolean"), (7.5, "not an integral"), (None, "null"), ([7], "list")):
        with pytest.raises(ValueError, match=why):
            id_key(bad)


def test_padding_keeps_the_newest_items_left_aligned() -> None:
    padding = Padding.of(np.array([0, 3, 7, 2]), max_len=4)
    assert padding.kept.tolist() == [0, 3, 4, 2] and padding.width == 4
    assert padding.pad(np.arange(2, 11)).tolist() == [[0, 0, 0, 0], [2, 3, 4, 0], [5, 6, 7, 8], [9, 10, 0, 0]]
    empty = Padding.of(np.array([0, 0]), max_len=4)
    assert empty.width == 1 and empty.pad(np.zeros(0, dtype=np.int64)).tolist() == [[PAD_INDEX], [PAD_INDEX]]


def test_manifest_holds_the_spec_and_vocabularies() -> None:
    m = load_manifest(DEMO)
    assert m.spec == FeatureSpec.from_dict(m.raw["schema"])
    assert m.inputs == m.spec.inputs and m.dense == m.spec.dense_names and m.vocabs is m.features.vocabs


def test_scorer_is_built_by_load_only() -> None:
    with pytest.raises(TypeError, match=r"Scorer\.load"):
        Scorer(load_manifest(DEMO), None, "cpu")
    assert Scorer.load(DEMO).manifest.spec.max_len == 50
