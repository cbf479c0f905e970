"""``klm list-plugins`` and ``klm new-plugin``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from kennethlm_core import scaffold
from kennethlm_core.cli.base import _console, _registry, cli
from kennethlm_core.config import load_registry_doc
from kennethlm_core.entries import component_status

# -- klm list-plugins ---------------------------------------------------------------------


@cli.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--slot", help="Only this slot.")
@click.pass_context
def list_plugins(ctx, as_json, slot):
    """Every component by slot, with its distribution, version and status in registry.toml."""
    registry = _registry(ctx)
    if slot is not None:
        registry.names(slot)  # an unknown slot fails here, with the list of slots
    doc = load_registry_doc()
    rows = [
        {
            "slot": c.slot,
            "name": c.name,
            "distribution": c.distribution,
            "version": c.version,
            "summary": c.summary,
            "status": component_status(doc, c.slot, c.name),
            "options": c.options,
        }
        for c in registry.all()
        if slot is None or c.slot == slot
    ]
    broken = [
        {"plugin": b.plugin, "distribution": b.distribution, "version": b.version, "error": b.error}
        for b in registry.broken
    ]
    if as_json:
        click.echo(
            json.dumps(
                {"components": rows, "broken": broken, "disabled": registry.disabled},
                indent=2,
                default=str,
            )
        )
        return
    table = Table("slot", "name", "distribution", "version", "summary", "status")
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        summary = r["summary"] + (f" [dim]({opts})[/]" if opts else "")
        table.add_row(r["slot"], r["name"], r["distribution"], r["version"], summary, r["status"])
    for b in broken:
        table.add_row(
            "?", b["plugin"], b["distribution"], b["version"], b["error"], "[red]broken[/]"
        )
    for name in registry.disabled:
        table.add_row("?", name, "", "", "skipped by KLM_DISABLE_PLUGINS", "[dim]disabled[/]")
    _console().print(table)


# -- klm new-plugin --------------------------------------------------------------------------


@cli.command("new-plugin")
@click.argument("name")
@click.option("--slot", required=True, help="attention, posemb, norm, mlp, model, optimizer, ...")
@click.option(
    "--dir",
    "directory",
    default="plugins",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where the package folder goes.",
)
@click.pass_context
def new_plugin(ctx, name, slot, directory):
    """Write a plugin package: a working component for SLOT, its tests, a README.

    \b
    klm new-plugin sliding-window --slot attention
      -> plugins/klm-attention-sliding-window/  (pyproject.toml, module, tests/, README.md)
    """
    scaffold.check_request(name, slot, directory)  # a bad name or slot fails before loading plugins
    target = scaffold.new_plugin(name, slot, directory, registry=_registry(ctx))
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    click.echo(f"wrote {target}/: {', '.join(files)}")
    click.echo(f"install it:  .venv/bin/pip install --no-build-isolation -e {target}")
    click.echo(f"test it:     .venv/bin/pytest {target}")
    flag = "klm eval RUN --task" if slot == "task" else f"klm run --{slot}"
    click.echo(f"try it:      {flag} {name}")
