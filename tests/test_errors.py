"""The library raises its own errors (din_export.errors) and needs no click; only din_export.cli turns
those errors into click's: a message and exit 1, or a usage error (exit 2) naming the option at fault."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
import torch
from click.testing import CliRunner

import din_export
from din_export.bench.run import check_device
from din_export.cli.common import library_errors
from din_export.config import parse_sets
from din_export.data import DataError
from din_export.errors import DinExportError, OptionError
from din_export.export import ExportError, GraphCheckError, check_example
from din_export.portable import PortableError
from din_export.prepare import PrepareError, load_source
from din_export.sources import SourceError
from din_export.train import RunError
from din_export.verify import AUCError, DynamicAxisError, ShapeError, ToleranceError, VerifyError, parse_tolerance

# Import each library module with click made unimportable; print which imports failed for want of it.
PROBE = r"""
import importlib, json, sys

class NoClick:
    def find_spec(self, name, path=None, target=None):
        if name == "click" or name.startswith("click."):
            raise ImportError("click imported")
        return None

sys.meta_path.insert(0, NoClick())
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as e:
        if "click imported" not in str(e):
            raise
        failed[name] = str(e)
print(json.dumps(sorted(failed)))
"""


def library_modules() -> list[str]:
    """Every module of din_export, subpackages included, but the command package and `python -m din_export`."""
    return sorted(m.name for m in pkgutil.walk_packages(din_export.__path__, "din_export.")
                  if m.name.split(".")[1] not in ("cli", "__main__"))


def test_the_library_imports_without_click() -> None:
    modules = library_modules()
    assert {"din_export.export", "din_export.verify", "din_export.prepare", "din_export.portable",
            "din_export.data", "din_export.model", "din_export.triton", "din_export.synthetic", "din_export.train",
            "din_export.config", "din_export.checkpoints", "din_export.evaluate", "din_export.predict",
            "din_export.bench.run", "din_export.bench.report", "din_export.sources.taobao"} <= set(modules)
    done = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("error", [ExportError, GraphCheckError, VerifyError, ShapeError, DynamicAxisError,
                                   ToleranceError, AUCError, PortableError, PrepareError, DataError, RunError,
                                   OptionError, SourceError])
def test_every_library_error_is_a_din_export_error(error: type[Exception]) -> None:
    assert issubclass(error, DinExportError) and not issubclass(error, click.ClickException)


@pytest.mark.parametrize("error", [PrepareError, DataError, RunError, OptionError, SourceError])
def test_errors_that_were_value_errors_still_are(error: type[Exception]) -> None:
    assert issubclass(error, ValueError)


def test_option_errors_name_their_option() -> None:
    schema = SimpleNamespace(max_len=10)  # all check_example reads of a schema
    with pytest.raises(OptionError, match="must differ") as e:
        check_example(schema, (4, 4))
    assert e.value.option == "--example-batch/--example-seq"
    with pytest.raises(OptionError, match="not a number") as e:
        parse_tolerance(["prob=x"])
    assert e.value.option == "--tolerance"
    with pytest.raises(OptionError, match="needs a PATH") as e:
        load_source("movielens", None)
    assert e.value.option is None


def run(error: Exception) -> click.testing.Result:
    @click.command()
    def command() -> None:
        with library_errors():
            raise error

    return CliRunner().invoke(command, [])


def test_an_option_error_is_a_usage_error_naming_the_option() -> None:
    result = run(OptionError("'x': not a number", option="--tolerance"))
    assert result.exit_code == 2
    assert "Error: Invalid value for --tolerance: 'x': not a number" in result.output


def test_an_option_error_without_an_option_is_a_plain_usage_error() -> None:
    result = run(OptionError("--meta FILE is required with --source amazon"))
    assert result.exit_code == 2
    assert "Usage: " in result.output and "Error: --meta FILE is required with --source amazon" in result.output


def test_a_library_error_is_its_message_and_exit_1() -> None:
    result = run(ToleranceError("prob differs by 0.5"))
    assert result.exit_code == 1
    assert result.output == "Error: ToleranceError: prob differs by 0.5\n"


def test_other_errors_are_not_translated() -> None:
    result = run(KeyError("a bug"))
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


@pytest.mark.parametrize("args", [["--help"], ["prepare", "--help"]])
def test_help_and_prepare_do_not_import_torch(args: list[str]) -> None:
    """The commands load lazily: help and prepare (no torch needed) must not pay for importing torch."""
    code = ("import sys\nfrom din_export.cli import main\nmain(sys.argv[1:], standalone_mode=False)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: ")


def test_a_bad_set_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="expected model.FIELD=VALUE"):
        parse_sets(("model.embed_dim",))
    assert parse_sets(("model.embed_dim=16", "train.optimizer=sgd")) == ({"embed_dim": 16}, {"optimizer": "sgd"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA device")
def test_bench_on_cuda_without_a_gpu_is_a_library_error() -> None:
    with pytest.raises(DinExportError, match="torch sees no CUDA device"):
        check_device("cuda")
