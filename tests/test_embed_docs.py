"""The code of docs/embed.md runs, and scores like Scorer.score."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
from din_runtime import Scorer
from embed_fixtures import DEMO, NODE_DIR, ROOT, node, npm_package

DOC = (ROOT / "docs" / "embed.md").read_text()
EXAMPLE_2 = json.loads((ROOT / "examples" / "requests.jsonl").read_text().splitlines()[1])


def expected_prob() -> np.float32:
    return Scorer.load(DEMO).score([{**EXAMPLE_2, "price": 36.1}])[0]


def test_the_python_example_passes_raw_ids_to_onnxruntime():
    (code,) = re.findall(r"```python\n(.*?)```", DOC, re.S)
    check = "\nprint(json.dumps([float(prob[0]), int(oov[0])]))\n"
    done = subprocess.run([sys.executable, "-c", code + check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    prob, oov = json.loads(done.stdout)
    assert abs(np.float32(prob) - expected_prob()) <= 1e-6 and oov == 0


def test_the_node_example_scores_rows_in_a_service():
    node_bin = node()
    npm_package(NODE_DIR, "onnxruntime-node")
    (code,) = re.findall(r"```js\n(.*?)```", DOC, re.S)
    check = "\nconsole.log(JSON.stringify([prob[0], Number(oov[0]), prob.length]));\n"
    done = subprocess.run([node_bin, "--input-type=module", "-e", code + check], cwd=NODE_DIR, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    prob, oov, n = json.loads(done.stdout)
    assert n == 1 and oov == 0 and abs(np.float32(prob) - expected_prob()) <= 1e-6
