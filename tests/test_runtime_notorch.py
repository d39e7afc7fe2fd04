"""din_runtime installs and scores in a fresh virtualenv holding only its base + cpu dependencies.

The fresh venv has no system site-packages, so torch (and din_export's other needs) cannot leak in from
the development environment. The package is built as a wheel from a copy of the checkout and installed
with --no-deps; numpy, click and onnxruntime come from the pip index (or its local mirror / cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from din_runtime import Scorer
from runtime_fixtures import build_model_dir, request
from wheel_helpers import build_wheel, pip

CHECK = r"""
import importlib.util, json, sys
import din_runtime
from din_runtime import Scorer
assert importlib.util.find_spec("torch") is None, "torch is importable in the runtime-only venv"
scorer = Scorer.load(sys.argv[1])
rows = [json.loads(line) for line in open(sys.argv[2])]
probs = scorer.score(rows)
assert "torch" not in sys.modules and "din_export" not in sys.modules
print(json.dumps({"file": din_runtime.__file__, "scores": [float(p) for p in probs]}))
"""


@pytest.mark.slow
def test_runtime_without_torch(tmp_path):
    wheel = build_wheel(tmp_path)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip(python, "install", "--prefer-binary", "numpy", "click", "onnxruntime", cwd=tmp_path)
    pip(python, "install", "--no-deps", str(wheel), cwd=tmp_path)

    model_dir = build_model_dir(tmp_path / "model")
    rows = [request(i, hist=i % 6) for i in range(9)]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-c", CHECK, str(model_dir), str(requests)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert Path(result["file"]).is_relative_to(venv)
    expected = Scorer.load(model_dir).score(rows)
    np.testing.assert_array_equal(np.array(result["scores"], dtype=np.float32), expected)

    cli = subprocess.run([str(venv / "bin" / "din-score"), str(model_dir), str(requests)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    scores = [json.loads(line)["score"] for line in cli.stdout.splitlines()]
    np.testing.assert_array_equal(np.array(scores, dtype=np.float32), expected)
