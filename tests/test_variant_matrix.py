"""Every preset x every export variant, from models trained on real MovieLens, verified.

The presets come through `load_preset` (wherever they are stored); each is trained once per module for
one epoch on a seeded 12,000-row subset of the training split (histories cut to MAX_LEN, so the whole
matrix stays within a few minutes on two cores), then exported as fp32, fp16 and int8, each optimised
and plain. The export's own verification is what passes or fails a cell (it raises a VerifyError
naming the failure); the test adds what verification does not look at: the scores a served row gets
do not depend on the other rows of its batch, through din_runtime.Scorer and its chunking.

Needs ../shared/data/movielens-100k: skipped with the reason when it is absent, except on CI (CI=true),
where its absence is a failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from din_runtime import Scorer
from din_runtime import scorer as scorer_module
from din_runtime.scorer import rows_per_run

from din_export.config import load_preset
from din_export.data import keep_rows, load_split
from din_export.export import export_run
from din_export.train import train
from din_export.verify import POLICY, variant_of

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"
PRESETS = ("paper", "official", "edge")
VARIANTS = {
    "fp32": {}, "fp32-plain": {"optimize": False},
    "fp16": {"precision": "fp16"}, "fp16-plain": {"precision": "fp16", "optimize": False},
    "int8": {"quantize": "int8"}, "int8-plain": {"quantize": "int8", "optimize": False},
}
MAX_LEN = 20
TRAIN_ROWS = 12_000
VALID_ROWS = 3_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ML100K.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{ML100K} is missing on CI: the variant matrix must run there")
        print(f"skipping the variant matrix: {ML100K} is not here (it runs on CI)")
        pytest.skip(f"{ML100K} not found")
    from din_export.prepare import load_source, prepare

    out = tmp_path_factory.mktemp("variant-matrix") / "ml"
    with contextlib.redirect_stdout(io.StringIO()):
        prepare(load_source("movielens", ML100K), out, max_len=MAX_LEN, seed=0)
    keep = np.sort(np.random.default_rng(0).choice(load_split(out, "train").n, TRAIN_ROWS, replace=False))
    keep_rows(out, "train", keep)
    return out


@pytest.fixture(scope="module")
def runs(dataset: Path) -> dict[str, Path]:
    """preset -> its run directory, trained on first use."""
    return {}


def run_of(preset: str, dataset: Path, runs: dict[str, Path]) -> Path:
    if preset not in runs:
        model_cfg, train_cfg, _ = load_preset(preset)
        run = dataset.parent / f"run-{preset}"
        # one epoch; at least 256 rows a step (the official preset's 32 would take 8x the steps)
        train(dataset, run, model_cfg, replace(train_cfg, epochs=1, batch_size=max(256, train_cfg.batch_size),
                                               threads=1), quiet=True)
        runs[preset] = run
    return runs[preset]


def requests(dataset: Path, n: int) -> list[dict]:
    with (dataset / "valid_requests.jsonl").open() as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_exports_and_verifies_in_every_variant(preset: str, variant: str, dataset: Path,
                                                            runs: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = export_run(run_of(preset, dataset, runs), tmp_path / "model", valid_rows=VALID_ROWS,
                          **VARIANTS[variant])
    parity = manifest["parity"]
    name = variant_of(manifest)
    assert parity["passed"] and name == variant.split("-")[0]
    # judged where scores are served: fp16 and int8 up to max_len, fp32 everywhere
    longest = max(r["seq"] for r in parity["shapes"])
    assert longest == 2 * MAX_LEN
    assert all(r["judged"] == (name == "fp32" or r["seq"] <= MAX_LEN) for r in parity["shapes"])
    assert parity["validation"]["rows"] == VALID_ROWS and parity["tolerance"]["auc_drop"] == POLICY[name]["auc_drop"]
    if name == "int8":  # activation ranges from training rows, never the validation rows verify judges
        assert manifest["calibration"]["split"] == "train"

    # a served row's score does not depend on its neighbours: the same rows in batches shifted by 7 (so each
    # row meets other rows in the Scorer's runs of rows_per_run(width)) score bitwise the same, and each row
    # alone, padded to the batch's history width, too (the optimised int8 export: bitwise)
    scorer = Scorer.load(tmp_path / "model")
    rows = requests(dataset, 160)
    arrays = scorer.encode(rows).arrays
    width = arrays[scorer.manifest.histories[0]].shape[1]
    # a quarter of the budget, so that 160 rows make several runs whatever the width and the unit
    monkeypatch.setattr(scorer_module, "POSITIONS_PER_RUN", scorer_module.POSITIONS_PER_RUN // 4)
    assert len(rows) > rows_per_run(width, scorer.manifest.attention_width) + 7  # at least two runs
    whole = scorer.score_arrays(arrays)
    shifted = scorer.score_arrays({k: v[7:] for k, v in arrays.items()})
    assert np.array_equal(whole[7:], shifted)
    alone = np.array([scorer.score_arrays({k: v[i:i + 1] for k, v in arrays.items()})[0] for i in range(0, 160, 9)])
    if variant == "int8":
        assert np.array_equal(whole[::9], alone)
    else:  # fp32 arithmetic at batch 1 may take another path: the plain graph's sum pooling (a ReduceSum, edge
        # preset) rounds one ulp differently at batch 1, in fp32 and in int8 plain, whose pooling and MLP are fp32
        assert np.abs(whole[::9] - alone).max() <= 1e-6
    # alone through `score`, the history only as wide as its own: the fp32 arithmetic of a shorter sum
    # may round differently (~1e-7), nothing more
    on_its_own = np.array([scorer.score([rows[i]])[0] for i in range(0, 160, 9)])
    assert np.abs(on_its_own - whole[::9]).max() <= 1e-6
