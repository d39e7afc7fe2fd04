"""Build din-toolkit's wheel from a copy of the checkout, as a user's `pip wheel .` would (no editable install)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pip(python: Path | str, *args: str, cwd: Path) -> None:
    done = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy holding only what the sdist would (pyproject, README, the two packages), so
    nothing else of the checkout can end up in it or be found beside it."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    for package in ("runtime", "din_export"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    readme = REPO / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.exists() else "din-toolkit\n")
    pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels"), str(src),
        cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("din_toolkit-*.whl")
    return wheel
