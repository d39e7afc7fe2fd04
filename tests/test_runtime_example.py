"""examples/embed.py and the Python example of docs/runtime.md run against a model directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from runtime_fixtures import build_model_dir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "embed.py"


def test_embed_example(tmp_path):
    model_dir = build_model_dir(tmp_path / "m")
    done = subprocess.run([sys.executable, str(EXAMPLE), str(model_dir)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("p(click | item_id=")
    assert lines[2] == "top 5 of 21 candidates for user_id=u1:"
    ranked = [float(line.split()[-1]) for line in lines[3:8]]
    assert ranked == sorted(ranked, reverse=True)


def test_embed_example_on_the_demo_model_without_a_user_field():
    demo = ROOT / "models" / "demo"
    done = subprocess.run([sys.executable, str(EXAMPLE), str(demo)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "None" not in done.stdout, done.stdout
    assert lines[2] == "top 5 of 21 candidates:"
    ranked = [float(line.split()[-1]) for line in lines[3:8]]
    assert len(ranked) == 5 and ranked == sorted(ranked, reverse=True)


def test_embed_example_reports_errors(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "missing")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_the_python_example_of_docs_runtime_runs():
    (code,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "runtime.md").read_text(), re.S)
    check = "\nassert probs.shape == (1,) and probs.dtype == 'float32' and 0 < probs[0] < 1, probs\n"
    done = subprocess.run([sys.executable, "-c", code + check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
