"""The training and bench library needs no click: only `din_export.cli` turns its errors into click errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from din_export.bench.run import check_device
from din_export.config import parse_sets
from din_export.errors import DinExportError, OptionError

LIBRARY = ("din_export.train", "din_export.config", "din_export.checkpoints", "din_export.evaluate",
           "din_export.predict", *(f"din_export.bench.{m}" for m in (
               "plan", "timing", "data", "peers", "training", "exports", "engines", "torch_compile", "flops",
               "candidates", "memory", "report", "run")))


def test_the_library_modules_import_without_click() -> None:
    code = f"import sys\nfor m in {LIBRARY!r}: __import__(m)\nprint('click' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_bad_set_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="expected model.FIELD=VALUE"):
        parse_sets(("model.embed_dim",))
    assert parse_sets(("model.embed_dim=16", "train.optimizer=sgd")) == ({"embed_dim": 16}, {"optimizer": "sgd"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA device")
def test_bench_on_cuda_without_a_gpu_is_a_library_error() -> None:
    with pytest.raises(DinExportError, match="torch sees no CUDA device"):
        check_device("cuda")
