"""One Scorer shared by 8 threads, 2,000 calls each: no error, and every result bitwise equal to the same call
made alone, single-threaded, beforehand.

The calls draw from a fixed set of batches (sizes 1 to 13, histories from empty to past max_len, through
`score`, `score_arrays` and `score_candidates`, plus batches with a bad row that must fail the same way
every time). Each batch's expected result is computed once, alone, before the threads start, so the
comparison can be bitwise: the same inputs through the same onnxruntime session. Against each row scored
alone (a batch of one, a narrower history width) results are equal only up to float rounding; that
difference is measured separately and bounded by 1e-7, under two float32 ulps of a probability
(`test_batching_changes_scores_by_rounding_only`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from din_runtime import InputError, Scorer
from reliability_fixtures import Names, exported_din, valid_rows
from runtime_fixtures import build_model_dir

THREADS = 8
CALLS = 2000
BATCH_SIZES = (1, 2, 3, 5, 8, 13)


@dataclass(frozen=True)
class Call:
    run: Callable[[Scorer], np.ndarray]
    expected: np.ndarray | None  # None: the call must raise `error`
    error: tuple[int | None, str | None] = (None, None)  # (row, field) of the InputError


def request_pool(scorer: Scorer, n: int, seed: int) -> list[dict]:
    """Valid rows whose histories run from empty to 3 items past max_len (so truncation is exercised)."""
    rng = random.Random(seed)
    names = Names.of(scorer.manifest)
    rows = valid_rows(scorer.manifest, n)
    for row in rows:
        length = rng.randint(0, names.max_len + 3)
        for b in scorer.manifest.behaviour:
            known = list(scorer.manifest.vocabs[b.vocab])
            row[b.history] = [rng.choice(known) for _ in range(length)]
    return rows


def build_calls(scorer: Scorer, seed: int = 0) -> list[Call]:
    """The distinct calls, each with its result computed alone (or the error it must raise)."""
    rng = random.Random(seed)
    m = scorer.manifest
    names = Names.of(m)
    pool = request_pool(scorer, 64, seed)
    calls = []
    for size in BATCH_SIZES:
        for _ in range(4):
            batch = rng.sample(pool, size)
            arrays = scorer.encode(batch).arrays
            expected = scorer.score(batch)
            calls.append(Call(lambda s, b=batch: s.score(b), expected))
            calls.append(Call(lambda s, a=arrays: s.score_arrays(a), expected))
        bad_row = rng.randrange(size)
        broken = [dict(r) for r in rng.sample(pool, size)]
        broken[bad_row][names.dense] = float("nan")
        calls.append(Call(lambda s, b=broken: s.score(b), None, (bad_row, names.dense)))
        user_row = rng.choice(pool)
        user = {s.name: user_row[s.name] for s in m.sparse} | {d: user_row[d] for d in m.dense}
        history = {h: user_row[h] for h in m.histories}
        candidates = [{t: r[t] for t in m.targets} for r in rng.sample(pool, size)]
        calls.append(Call(lambda s, u=user, h=history, c=candidates: s.score_candidates(u, h, c),
                          scorer.score_candidates(user, history, candidates)))
    return calls


def hammer(scorer: Scorer, calls: list[Call], threads: int, per_thread: int) -> dict[str, Any]:
    """Run `per_thread` randomly chosen calls in each of `threads` threads; count errors and mismatches."""
    start = threading.Barrier(threads)
    lock = threading.Lock()
    report = {"calls": 0, "mismatches": 0, "unexpected": [], "refused": 0}

    def worker(index: int) -> None:
        rng = random.Random(1000 + index)
        start.wait()
        counts = {"calls": 0, "mismatches": 0, "refused": 0}
        unexpected = []
        for _ in range(per_thread):
            call = rng.choice(calls)
            counts["calls"] += 1
            try:
                got = call.run(scorer)
            except InputError as e:
                if call.expected is None and (e.row, e.field) == call.error:
                    counts["refused"] += 1
                else:
                    unexpected.append(repr(e))
                continue
            except Exception as e:  # anything else escaping a shared Scorer is the bug this test looks for
                unexpected.append(repr(e))
                continue
            if call.expected is None:
                unexpected.append("a bad batch was scored")
            elif got.dtype != call.expected.dtype or not np.array_equal(got, call.expected):
                counts["mismatches"] += 1
        with lock:
            for key, value in counts.items():
                report[key] += value
            report["unexpected"] += unexpected

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(worker, i) for i in range(threads)]:
            future.result()
    return report


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> Scorer:
    return Scorer.load(build_model_dir(tmp_path_factory.mktemp("model") / "m"))


@pytest.mark.slow
def test_one_scorer_many_threads(scorer):
    calls = build_calls(scorer)
    started = time.perf_counter()
    report = hammer(scorer, calls, THREADS, CALLS)
    seconds = time.perf_counter() - started
    assert report["unexpected"] == []
    assert report["calls"] == THREADS * CALLS
    assert report["mismatches"] == 0, f"{report['mismatches']} calls differ bitwise from the same call made alone"
    assert report["refused"] > 0  # the bad batches were drawn, and refused with their row and field
    print(f"\n{THREADS} threads x {CALLS} calls: {report['calls']} calls ({report['refused']} refused as they "
          f"should be) in {seconds:.1f} s, 0 mismatches")


@pytest.fixture(scope="module")
def real_scorer(tmp_path_factory) -> Scorer:
    pytest.importorskip("torch")
    return Scorer.load(exported_din(tmp_path_factory))


@pytest.mark.slow
def test_one_real_din_many_threads(real_scorer):
    report = hammer(real_scorer, build_calls(real_scorer, seed=1), THREADS, CALLS)
    assert report["unexpected"] == [] and report["mismatches"] == 0
    assert report["calls"] == THREADS * CALLS and report["refused"] > 0


def check_batching_rounding(scorer: Scorer) -> None:
    for seed in range(3):
        pool = request_pool(scorer, 64, seed)
        alone = np.concatenate([scorer.score([row]) for row in pool])
        np.testing.assert_allclose(scorer.score(pool), alone, rtol=0, atol=1e-7)


def test_batching_changes_scores_by_rounding_only(scorer):
    check_batching_rounding(scorer)


@pytest.mark.slow
def test_batching_changes_real_din_scores_by_rounding_only(real_scorer):
    check_batching_rounding(real_scorer)


def test_the_hammer_sees_a_wrong_result(scorer):
    """The mismatch counter is live: a call whose recorded result is off by one ulp is counted."""
    calls = build_calls(scorer)
    good = next(c for c in calls if c.expected is not None)
    off = Call(good.run, np.nextafter(good.expected, np.float32(2)))
    report = hammer(scorer, [off], threads=2, per_thread=5)
    assert report["mismatches"] == 10 and report["unexpected"] == []

