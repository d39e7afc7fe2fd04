"""examples/web: the page, served as static files on 127.0.0.1 and driven in headless Chromium, ranks with the
scores din_runtime gives the same rows (unseen ids, an empty history and one longer than max_len included)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from din_runtime import Scorer
from embed_fixtures import DEMO, ROOT, WEB_DIR, chromium, node, npm_package


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The repository root over HTTP, as `python -m http.server -b 127.0.0.1` serves it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(ROOT)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/examples/web/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page(site: str) -> dict[str, Any]:
    """What check_page.mjs read from the page: every ranking it showed."""
    node_bin, browser = node(), chromium()
    npm_package(WEB_DIR, "onnxruntime-web")
    npm_package(WEB_DIR, "puppeteer-core")
    done = subprocess.run([node_bin, str(WEB_DIR / "check_page.mjs"), site, "--chromium", browser],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def kept_oov(scorer: Scorer, row: dict[str, Any]) -> int:
    """Unseen ids of one row as din_runtime counts them: profile and target ids, and the kept history."""
    m = scorer.manifest
    fields = [(s.name, s.vocab) for s in m.sparse] + [(b.target, b.vocab) for b in m.behaviour]
    n = sum(str(row[f]) not in m.vocabs[v] for f, v in fields)
    return n + sum(str(i) not in m.vocabs[b.vocab] for b in m.behaviour for i in row[b.history][-m.max_len:])


def test_the_page_ranks_with_the_scores_of_din_runtime(page):
    scorer = Scorer.load(DEMO)
    max_len = scorer.manifest.max_len
    worst, rows_seen = 0.0, 0
    for ranking in page["rankings"]:
        rows = [{**ranking["request"], "item_id": r["item_id"], "cate_id": r["cate_id"], "price": r["price"]}
                for r in ranking["rows"]]
        ours = np.array([np.float32(r["score"]) for r in ranking["rows"]])
        theirs = scorer.score(rows)
        diff = float(np.max(np.abs(ours - theirs)))
        assert diff <= 1e-6, (ranking["shopper"], diff)
        worst, rows_seen = max(worst, diff), rows_seen + len(rows)
        assert [r["oov"] for r in ranking["rows"]] == [kept_oov(scorer, row) for row in rows], ranking["shopper"]
        assert list(ours) == sorted(ours, reverse=True), f"{ranking['shopper']}: not ranked by score"
    print(f"{page['browser']}: {rows_seen} rows in {len(page['rankings'])} rankings, "
          f"browser vs Scorer.score max |diff| {worst:.3g}")

    histories = [len(r["request"]["hist_item_id"]) for r in page["rankings"]]
    assert 0 in histories and max(histories) > max_len, histories
    items = scorer.manifest.vocabs["item_id"]
    unseen_target = [r for k in page["rankings"] for r in k["rows"] if r["item_id"] not in items]
    assert unseen_target and all(r["oov"] >= 1 for r in unseen_target)
    clicked = page["rankings"][-2]["request"]
    assert clicked["hist_item_id"][-1] not in items, "the clicked new arrival is unseen"
    assert len(page["rankings"][-1]["rows"]) == len(json.loads((WEB_DIR / "shop.json").read_text())["catalog"])


def test_the_shop_is_what_make_shop_writes(tmp_path):
    """shop.json is reproducible from the synthetic generator (never real data)."""
    pytest.importorskip("pandas")
    done = subprocess.run([sys.executable, str(WEB_DIR / "make_shop.py"), str(tmp_path / "shop.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "shop.json").read_text()) == json.loads((WEB_DIR / "shop.json").read_text())
