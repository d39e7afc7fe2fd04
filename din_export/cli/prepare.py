"""`din-export prepare`: raw events -> a dataset directory (din_export.prepare). Imports no torch."""

from __future__ import annotations

from pathlib import Path

import click

from din_export.cli.common import CONTEXT_SETTINGS, library_errors
from din_export.prepare import HISTORIES, REQUESTS_CAP, SOURCES, _check_out, _summary, load_source, prepare

FRACTION = click.FloatRange(0, 1, min_open=True, max_open=True)


@click.command("prepare", context_settings=CONTEXT_SETTINGS)
@click.option("--source", type=click.Choice(SOURCES), required=True, help="Kind of raw data at PATH.")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Dataset directory to write (made in a temporary sibling, then renamed).")
@click.option("--max-len", default=50, show_default=True, type=click.IntRange(min=1),
              help="Keep the most recent N behaviours of each history.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed for negatives, the user split and the synthetic generator.")
@click.option("--meta", type=click.Path(path_type=Path), help="amazon: the metadata JSON-lines file.")
@click.option("--all-behaviours", is_flag=True, help="taobao: use pv, cart, fav and buy (default: pv only).")
@click.option("--sparse-features", default="", metavar="COL,COL",
              help="events: extra categorical columns (user profile or context), comma separated.")
@click.option("--dense-features", default="", metavar="COL,COL", help="events: extra numeric columns.")
@click.option("--history", type=click.Choice(HISTORIES), default="clicks", show_default=True,
              help="explicit protocol: the history is the user's earlier clicks, or all their earlier events.")
@click.option("--valid-fraction", default=0.1, show_default=True, type=FRACTION,
              help="explicit protocol: share of users held out for validation.")
@click.option("--test-fraction", default=0.1, show_default=True, type=FRACTION,
              help="explicit protocol: share of users held out for test.")
@click.option("--all-requests", is_flag=True,
              help=f"Write every valid/test sample to *_requests.jsonl (default: the first {REQUESTS_CAP:,} of each).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out directory.")
def prepare_command(source: str, path: Path | None, out: Path, max_len: int, seed: int, meta: Path | None,
                    all_behaviours: bool, sparse_features: str, dense_features: str,
                    history: str, valid_fraction: float, test_fraction: float, all_requests: bool,
                    force: bool) -> None:
    """Turn raw events at PATH into a dataset directory (docs/data.md).

    \b
    movielens  PATH = ml-100k or ml-1m directory            explicit: rating >= 4 is a click
    taobao     PATH = UserBehavior.csv                      implicit: pv behaviours
    amazon     PATH = reviews JSON lines, --meta metadata   implicit
    events     PATH = CSV/TSV/Parquet: user,item,category,timestamp[,label][,features]
    synthetic  PATH = optional events file from `python -m din_export.synthetic`; none: generate
    """
    try:
        with library_errors():
            _check_out(out, force)
            events = load_source(source, path, meta=meta, all_behaviours=all_behaviours,
                                 sparse_features=sparse_features, dense_features=dense_features, seed=seed)
            stats = prepare(events, out, max_len=max_len, seed=seed, valid_fraction=valid_fraction,
                            test_fraction=test_fraction, history=history, force=force, all_requests=all_requests,
                            release_events=True)
    except OSError as e:  # unreadable input, --out under a file, disk full: the system's own words
        raise click.ClickException(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)) from None
    click.echo(_summary(out, stats))
