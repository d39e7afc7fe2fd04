"""The command-line surface a newcomer meets: help on every command, consistent option names and types."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from din_runtime import cli as score_cli

from din_export import cli as export_cli
from din_export.cli import synthetic

# Options that mean the same thing in several commands must be spelled and typed the same way.
SHARED = ("--threads", "--device", "--seed", "--batch-size", "--id-field", "--epochs")


def commands() -> dict[str, click.Command]:
    """Every command a user can run, by the name they type."""
    group = export_cli.main
    ctx = click.Context(group)
    found = {f"din-export {name}": group.get_command(ctx, name) for name in group.list_commands(ctx)}
    found["din-score"] = score_cli.main
    found["python -m din_export.synthetic"] = synthetic.main
    return found


COMMANDS = commands()


def options(command: click.Command) -> dict[str, click.Option]:
    return {name: p for p in command.params if isinstance(p, click.Option) for name in p.opts}


def test_every_command_of_the_group_is_listed() -> None:
    assert set(export_cli.COMMANDS) == {"prepare", "train", "evaluate", "predict", "export", "verify", "portable",
                                        "explain", "bench"}
    assert all(isinstance(c, click.Command) for c in COMMANDS.values())


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_group_help_lists_every_command(flag: str) -> None:
    result = CliRunner().invoke(export_cli.main, [flag])
    assert result.exit_code == 0, result.output
    for name, (_, _, short) in export_cli.COMMANDS.items():
        assert name in result.output and short in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_of_every_command(name: str, flag: str) -> None:
    if name.startswith("din-export "):
        result = CliRunner().invoke(export_cli.main, [name.split()[1], flag], prog_name="din-export")
    else:
        result = CliRunner().invoke(COMMANDS[name], [flag], prog_name=name)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: "), result.output
    assert COMMANDS[name].help, f"{name} has no docstring"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help(name: str) -> None:
    missing = [p.opts[-1] for p in COMMANDS[name].params
               if isinstance(p, click.Option) and not p.hidden and not p.help and p.name not in ("help", "version")]
    assert not missing, f"{name}: options without help: {missing}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_out_always_has_its_short_form(name: str) -> None:
    opts = options(COMMANDS[name])
    if "--out" in opts:
        assert "-o" in opts["--out"].opts, f"{name}: --out without -o"
        assert opts["-o"] is opts["--out"]


@pytest.mark.parametrize("option", SHARED)
def test_shared_options_have_one_type(option: str) -> None:
    kinds = {}
    for name, command in COMMANDS.items():
        param = options(command).get(option)
        if param is not None and not (name == "din-export bench" and option == "--threads"):
            kinds[name] = param.type.name if not isinstance(param.type, click.Choice) else "choice"
    assert len(kinds) >= 2 or option in ("--epochs",), f"{option} is used by {sorted(kinds)} only"
    assert len(set(kinds.values())) == 1, f"{option} has different types: {kinds}"


def test_metrics_files_have_one_name() -> None:
    """din-score and evaluate both write metrics JSON with --metrics-out (evaluate keeps --json too)."""
    assert "--metrics-out" in options(COMMANDS["din-score"])
    evaluate = options(COMMANDS["din-export evaluate"])
    assert evaluate["--metrics-out"] is evaluate["--json"]


def test_bench_threads_takes_a_list() -> None:
    """bench's --threads is a list of counts ("1,all"), the others one count: said in its help."""
    assert "Comma-separated" in options(COMMANDS["din-export bench"])["--threads"].help


@pytest.mark.parametrize("module", ["din_export", "din_runtime"])
def test_python_dash_m(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: "), done.stdout
