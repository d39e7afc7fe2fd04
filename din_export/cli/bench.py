"""`din-export bench`: parses the options, runs `din_export.bench.run.run_bench` and writes its JSON,
Markdown table and chart."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from din_export.bench import torch_compile
from din_export.bench.plan import make_plan
from din_export.bench.report import chart, format_table
from din_export.bench.run import check_device, run_bench
from din_export.cli.common import CONTEXT_SETTINGS, library_errors
from din_export.schema import write_bytes_atomic, write_json_atomic


def parse_threads(text: str) -> tuple[int, ...]:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            out.append(available)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise click.BadParameter(f"{part!r} is not a positive integer or 'all'", param_hint="--threads")
    return tuple(dict.fromkeys(out))


def parse_compile(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if modes == ("none",):
        return ()
    bad = [m for m in modes if m not in torch_compile.MODES]
    if bad or not modes:
        raise click.BadParameter(f"{', '.join(bad) or repr(text)}: expected 'none' or modes among "
                                 f"{', '.join(torch_compile.MODES)}", param_hint="--compile")
    return modes


def parse_lengths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise click.BadParameter(f"{text!r}: expected positive integers, comma separated", param_hint="--lengths")
    return tuple(dict.fromkeys(int(p) for p in parts))


@click.command("bench", context_settings=CONTEXT_SETTINGS)
@click.option("--quick", is_flag=True, help="Small data, few rounds, one epoch: about a minute, for a smoke check.")
@click.option("--threads", "threads_text", default="1,all", show_default=True,
              help="Comma-separated thread counts for the engine workloads ('all': every core available).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: torch and onnxruntime on the GPU (needs torch with CUDA and the gpu extra).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs for both models (default 2, --quick 1).")
@click.option("--compile", "compile_text", default=None,
              help="torch.compile modes benched as engines, comma separated (default, max-autotune-no-cudagraphs) "
                   "or 'none' [default: 'default'; --quick: none].")
@click.option("--lengths", "lengths_text", default=None,
              help="History lengths of the engine workloads, comma separated [default: 20,100,500; --quick: 20,100].")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"),
              show_default=True, help="Directory for bench[-quick].json, .md and .png.")
@click.option("--movielens", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="MovieLens-100K's ml-100k directory (u.data, u.item, u.user). Required.")
@click.option("--taobao", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The Taobao UserBehavior CSV (a head of it will do). Required.")
def bench_command(quick: bool, threads_text: str, device: str, epochs: int | None, compile_text: str | None,
                  lengths_text: str | None, out: Path, movielens: Path | None, taobao: Path | None) -> None:
    """Benchmark torch (eager and torch.compile), the ONNX variants and DeepCTR-Torch's DIN on the same weights;
    train both on MovieLens-100K and Taobao for quality and training speed. Prints a table, writes JSON and
    a chart."""
    plan = make_plan(quick, parse_threads(threads_text), device, epochs, parse_compile(compile_text),
                     parse_lengths(lengths_text))
    # No default location: an installed package has no checkout beside it to look in.
    missing = [option for option, path in (("--movielens DIR", movielens), ("--taobao FILE", taobao)) if path is None]
    if missing:
        raise click.UsageError(f"missing {' and '.join(missing)}: the bench trains on MovieLens-100K (the ml-100k "
                               "directory) and Taobao UserBehavior (the CSV); docs/bench.md says where to get them")
    sources = {"movielens": movielens, "taobao": taobao}
    with library_errors():
        check_device(device)
        with tempfile.TemporaryDirectory(prefix="din-bench-") as tmp:
            record = run_bench(plan, sources, Path(tmp), lambda m: click.echo(m, err=True))
    record["command"] = (f"din-export bench{' --quick' if quick else ''} --threads {threads_text} --device {device}"
                         f"{f' --epochs {epochs}' if epochs else ''}"
                         f"{f' --compile {compile_text}' if compile_text else ''}"
                         f"{f' --lengths {lengths_text}' if lengths_text else ''} --out {out} --movielens {movielens} "
                         f"--taobao {taobao}")
    stem = "bench-quick" if quick else "bench"
    write_json_atomic(out / f"{stem}.json", record)
    write_bytes_atomic(out / f"{stem}.png", chart(record, plan))
    table = format_table(record, plan)
    write_bytes_atomic(out / f"{stem}.md", f"`{record['command']}`\n\n{table}".encode())
    click.echo(table)
    click.echo(f"\nwrote {out / f'{stem}.json'}, .md and .png")
