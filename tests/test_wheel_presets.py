"""The wheel alone carries the presets: `din-export train --config paper` works from a non-editable install.

The wheel is built from a copy of the checkout (wheel_helpers.build_wheel) and installed with --no-deps into
a fresh venv; every command then runs from outside the checkout. torch and din_export's other dependencies
are not reinstalled (about a gigabyte): the fresh venv reaches the development venv's site-packages through
a plain path line in a .pth file. Python does not process .pth files inside a directory added that way, so
the editable install's finder is never loaded and din_export / din_runtime can only be the wheel's
(asserted below). A wheel without the presets fails here with "unknown preset 'paper'".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from wheel_helpers import REPO, build_wheel, pip

WHERE = """
import din_export, din_runtime, din_export.config as t
print(din_export.__file__); print(din_runtime.__file__); print(t.PRESETS_DIR)
"""


def run(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_installed_wheel_trains_with_the_paper_preset(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip(sys.executable, "--python", str(python), "install", "--no-deps", str(wheel), cwd=tmp_path)
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    dev_site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dev_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(dev_site)))

    work = tmp_path / "work"  # outside the checkout: nothing can be found through the current directory
    work.mkdir()
    package, runtime, presets = run([str(python), "-c", WHERE], work).split()
    assert all(Path(p).is_relative_to(venv) for p in (package, runtime, presets)), (package, runtime, presets)
    assert sorted(p.name for p in Path(presets).iterdir()) == ["edge.json", "official.json", "paper.json"]

    run([str(python), "-m", "din_export.synthetic", "events.csv", "--users", "120", "--items", "60",
         "--categories", "5", "--min-events", "5", "--max-events", "12"], work)
    bin_dir = venv / "bin"
    run([str(bin_dir / "din-export"), "prepare", "--source", "synthetic", "events.csv", "-o", "data",
         "--max-len", "8"], work)
    run([str(bin_dir / "din-export"), "train", "data", "--out", "run", "--config", "paper", "--epochs", "1",
         "--threads", "1", "--quiet"], work)
    config = json.loads((work / "run" / "config.json").read_text())
    paper = json.loads((REPO / "din_export" / "presets" / "paper.json").read_text())
    assert {k: config["model"][k] for k in paper["model"]} == paper["model"]
    assert (work / "run" / "model.safetensors").is_file()
