"""The tolerance policy per variant (din_export/verify.py) and int8's row independence, on the tiny fixtures.

The policy judges fp16 and int8 only at histories up to max_len (what is served), fp32 everywhere;
every bound (prob, logit_rel, auc_drop) can be set with --tolerance; an AUC drop is its own error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from din_runtime import Scorer
from din_runtime import scorer as scorer_module
from din_runtime.scorer import rows_per_run
from export_helpers import MAX_LEN, exported, one_torch_thread, run_dir

from din_export.checkpoints import load_run
from din_export.cli import main
from din_export.verify import (
    POLICY,
    AUCError,
    ToleranceError,
    grid_seqs,
    judge,
    judged,
    parse_tolerance,
    random_inputs,
    resolve_policy,
    verify_model_dir,
)


def row(seq: int, prob: float) -> dict:
    return {"batch": 3, "seq": seq, "prob": prob, "logit": prob, "logit_rel": prob}


def report(rows: list[dict], auc_change: float = 0.0) -> dict:
    validation = {"rows": 100, "prob": 0.0, "logit": 0.0, "logit_rel": 0.0, "auc_torch": 0.7,
                  "auc_model": 0.7 + auc_change, "auc_change": auc_change}
    return {"shapes": rows, "validation": validation}


def policy(variant: str, **tolerance: float) -> dict:
    p = dict(resolve_policy(variant, tolerance))
    p["judged_max_seq"] = MAX_LEN if variant != "fp32" else None
    return p


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_lossy_variants_are_judged_only_at_served_lengths_but_must_stay_finite(variant: str) -> None:
    p = policy(variant)
    over = 2 * POLICY[variant]["prob"]
    judge(report([row(MAX_LEN, 0.0), row(2 * MAX_LEN, over)]), p)  # longer than served: not judged
    with pytest.raises(ToleranceError, match=f"seq {MAX_LEN}"):
        judge(report([row(MAX_LEN, over)]), p)
    with pytest.raises(ToleranceError, match=f"seq {2 * MAX_LEN}"):
        judge(report([row(2 * MAX_LEN, math.nan)]), p)
    assert not judged(row(MAX_LEN + 1, 0.0), p) and judged(row(MAX_LEN, 0.0), p)


def test_fp32_is_judged_at_every_length() -> None:
    with pytest.raises(ToleranceError, match=f"seq {2 * MAX_LEN}"):
        judge(report([row(2 * MAX_LEN, 2e-5)]), policy("fp32"))


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_every_variant_has_an_auc_bound_and_tolerance_sets_it(variant: str) -> None:
    drop = POLICY[variant]["auc_drop"]
    assert drop is not None
    judge(report([], auc_change=-0.9 * drop), policy(variant))
    with pytest.raises(AUCError, match="validation AUC drops"):
        judge(report([], auc_change=-1.1 * drop), policy(variant))
    judge(report([], auc_change=-1.1 * drop), policy(variant, auc_drop=2 * drop))


def test_tolerance_sets_every_bound_it_names() -> None:
    assert parse_tolerance(["1e-3"]) == {"prob": 1e-3}
    assert parse_tolerance(["prob=0.1", "logit_rel=0.2", "auc_drop=0.01"]) == {
        "prob": 0.1, "logit_rel": 0.2, "auc_drop": 0.01}
    assert resolve_policy("int8", {"logit_rel": 0.5}) == {"prob": 5e-2, "logit_rel": 0.5, "auc_drop": 2e-3}
    assert resolve_policy("fp16", 0.01)["prob"] == 0.01
    for bad, message in (("auc=1", "unknown bound 'auc'"), ("prob=x", "not a number"), ("0", "> 0"),
                         ("prob=inf", "finite")):
        with pytest.raises(ValueError, match=message):
            parse_tolerance([bad])
    with pytest.raises(ValueError, match="unknown tolerance bounds"):
        resolve_policy("fp32", {"atol": 1.0})


def test_cli_tolerance_names_the_bound_or_refuses() -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["verify", str(exported("fp16")), str(run_dir()), "--tolerance", "atol=1"])
    assert bad.exit_code == 2 and "unknown bound 'atol'" in bad.output
    strict = runner.invoke(main, ["verify", str(exported("fp16")), str(run_dir()), "--tolerance", "auc_drop=1e-12",
                                  "--tolerance", "prob=1"])
    # a strict AUC bound alone: passes if the AUC did not fall at all, else names the AUC
    assert strict.exit_code == 0 or "AUCError: validation AUC drops" in strict.output
    assert "tolerance prob 1, logit_rel 0.01, auc_drop 1e-12 at histories up to" in strict.output
    loose = runner.invoke(main, ["verify", str(exported("fp16")), str(run_dir()), "--tolerance", "1e-9"])
    assert loose.exit_code == 1 and "ToleranceError" in loose.output


def test_report_marks_the_rows_it_does_not_judge() -> None:
    model, schema, config = load_run(run_dir())
    with one_torch_thread():
        r = verify_model_dir(exported("int8"), model, schema, config["data_dir"])
    assert r["tolerance"]["judged_max_seq"] == MAX_LEN and r["variant"]["judged_max_seq"] == MAX_LEN
    longer = {seq for seq in grid_seqs(MAX_LEN) if seq > MAX_LEN}
    assert 2 * MAX_LEN in longer and {x["seq"] for x in r["shapes"] if not x["judged"]} == longer
    assert r["variant"]["max_abs_diff_prob"] == max(x["prob"] for x in r["shapes"] + [r["validation"]] if x["judged"])


def test_int8_scores_a_row_the_same_alone_or_in_any_batch(monkeypatch) -> None:
    scorer = Scorer.load(exported("int8"))
    _, schema, _ = load_run(run_dir())
    arrays = random_inputs(list(scorer.manifest.raw["inputs"]), schema, 1000, MAX_LEN, np.random.default_rng(3))
    # this tiny unit would get every row in one run: a smaller budget (60, which its 8-wide unit scales to
    # 600 positions: 100 rows a run) makes several of the Scorer's runs
    monkeypatch.setattr(scorer_module, "POSITIONS_PER_RUN", 60)
    assert 1000 > 2 * rows_per_run(MAX_LEN, scorer.manifest.attention_width)
    whole = scorer.score_arrays(arrays)
    for start, stop in ((5, 1000), (0, 37), (340, 343)):
        assert np.array_equal(scorer.score_arrays({k: v[start:stop] for k, v in arrays.items()}), whole[start:stop])
    # the same rows with other neighbours: reversed order
    assert np.array_equal(scorer.score_arrays({k: v[::-1] for k, v in arrays.items()}), whole[::-1])
