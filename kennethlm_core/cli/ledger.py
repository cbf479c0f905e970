"""``klm registry``: the ledger's tables rendered into the pages, and the record reset."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kennethlm_core.cli.base import cli
from kennethlm_core.config import load_registry_doc, registry_path
from kennethlm_core.entries import LEDGER_SCHEMA
from kennethlm_core.errors import KLMError
from kennethlm_core.ledger import render_files, reset_record
from kennethlm_core.results import RESULTS_PAGE, pages, render_page


@cli.group()
def registry():
    """The ledger in registry.toml ($KLM_REGISTRY overrides where it is)."""


@registry.command("render")
@click.option(
    "--page",
    "--readme",
    "page_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A Markdown page to update, its tables found by their markers (repeatable; default: "
    "docs/results.md, and README.md's current record, beside registry.toml).",
)
@click.option("--check", is_flag=True, help="Only check: exit 1 when the tables are stale.")
def registry_render(page_paths, check):
    """Write the ledger's tables into the results page (docs/results.md) and README.md."""
    path = registry_path()
    for page in page_paths:
        if not page.is_file():
            raise KLMError(f"{page} does not exist; give the Markdown page to render into")
    files = [(page, None) for page in page_paths] or pages(path)
    if not files:
        raise KLMError(
            f"{path.parent / RESULTS_PAGE} does not exist; give the page with --page PATH"
        )
    if check:
        doc = load_registry_doc(path)
        for page, tables in files:
            text = page.read_text(encoding="utf-8")
            if render_page(text, doc, tables, name=str(page)) != text:
                print(
                    f"klm: {page} disagrees with {path}; run klm registry render", file=sys.stderr
                )
                sys.exit(1)
        agree = "agrees" if len(files) == 1 else "agree"
        click.echo(f"{', '.join(str(page) for page, _ in files)} {agree} with {path}")
        return
    changed = render_files(files, path)
    for page, _ in files:
        click.echo(f"{'updated' if page in changed else 'already up to date:'} {page}")


@registry.command("reset-record")
@click.option(
    "--keep-as",
    default="record-v1",
    show_default=True,
    help="The recipe that keeps the record so far (the speedrun's).",
)
def registry_reset_record(keep_as):
    """Restart the record chain on the current ledger schema, from the baseline recipe.

    The record so far (measured on the old split and metric) is kept as the recipe --keep-as;
    [recipes.record] becomes the baseline recipe's settings, and later promotions build the
    new chain r0, r1, ... from the comparisons of the current schema. Run it once, before the
    first comparison against the record on the current schema.
    """
    path = registry_path()
    kept = reset_record(path, keep_as)
    click.echo(f"kept the record as [recipes.{keep_as}] ({kept['description'].split(':')[0]})")
    click.echo(
        f"[recipes.record] is the baseline recipe again; the schema-{LEDGER_SCHEMA} chain "
        f"starts there (written to {path})"
    )
