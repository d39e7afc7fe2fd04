"""`din-export`: prepare, train, evaluate, predict, export, verify, explain, bench.

Each command lives in a module of this package (moving there from its stage's module) and is imported
only when invoked, so `--help` and `prepare` do not pay for importing torch. The commands parse options,
call the library and turn its errors into click errors (`common.library_errors`); the library itself
does not import click.
"""

from __future__ import annotations

import importlib

import click

from din_export import __version__
from din_export.cli.common import CONTEXT_SETTINGS

# command name -> (module, attribute, one-line help shown by `din-export --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "prepare": ("din_export.cli.prepare", "prepare_command", "Turn raw events into a dataset directory."),
    "train": ("din_export.cli.train", "train_command", "Train DIN or the base model on a dataset directory."),
    "evaluate": ("din_export.cli.evaluate", "evaluate_command", "Score a dataset's validation and test splits."),
    "predict": ("din_export.cli.predict", "predict_command", "Score raw requests with the torch model."),
    "export": ("din_export.cli.export", "export_command", "Export a run to an ONNX model directory, verified."),
    "verify": ("din_export.cli.verify", "verify_command", "Check an exported model against its torch run."),
    "portable": ("din_export.cli.portable", "portable_command", "Add portable.onnx (raw ids in) to a model directory."),
    "explain": ("din_export.cli.explain", "explain_command", "Show the attention over one request's history."),
    "bench": ("din_export.cli.bench", "bench_command", "Benchmark torch, ONNX variants and DeepCTR-Torch."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="din-export")
def main() -> None:
    """Train a Deep Interest Network, export it to ONNX and prove the export scores like torch.

    \b
    events --prepare--> dataset --train--> run --export--> model dir --din-score--> scores
    """
