"""`python -m din_export.synthetic OUT`: write a synthetic shoppers events table (din_export.synthetic)."""

from __future__ import annotations

from pathlib import Path

import click

from din_export.cli.common import CONTEXT_SETTINGS
from din_export.synthetic import SyntheticConfig, generate_blocks, write_events


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generator (a table is repeatable).")
@click.option("--users", default=SyntheticConfig.users, show_default=True, type=click.IntRange(min=1),
              help="Number of shoppers.")
@click.option("--items", default=SyntheticConfig.items, show_default=True, type=click.IntRange(min=3),
              help="Number of items in the catalogue.")
@click.option("--categories", default=SyntheticConfig.categories, show_default=True, type=click.IntRange(min=3),
              help="Number of item categories (a shopper's interests are a few of them).")
@click.option("--min-events", default=SyntheticConfig.min_events, show_default=True, type=click.IntRange(min=1),
              help="Fewest events per shopper.")
@click.option("--max-events", default=SyntheticConfig.max_events, show_default=True, type=click.IntRange(min=1),
              help="Most events per shopper.")
def main(out: Path, seed: int, **sizes: int) -> None:
    """Write a synthetic shoppers events table to OUT (.csv or .parquet)."""
    try:
        n = write_events(generate_blocks(SyntheticConfig(**sizes), seed), out)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {n['rows']:,} events of {n['users']:,} users to {out} "
               f"(click rate {n['clicks'] / n['rows']:.3f})")

