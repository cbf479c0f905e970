"""The run flags: ``klm run``'s options (shared by compare, ladder and sweep), and turning
them into settings (``overrides_from``) or back into a command line (``run_command``)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from kennethlm_core.config import FLAGS, RECIPE_HELP, SET_HELP, flag_type, parse_args, parse_set
from kennethlm_core.errors import KLMError


def run_options(f):
    """The flags of `klm run`, shared by anything that takes run arguments (klm compare, ladder,
    sweep): made from config.FLAGS, each typed like its RunConfig field."""
    opts = [click.option("--recipe", help=RECIPE_HELP)]
    for key, flag in FLAGS.items():
        name = f"--{key.replace('_', '-')}"
        if key == "compile":
            opts.append(click.option(f"{name}/--no-{name[2:]}", key, default=None, help=flag.help))
            continue
        kind = click.Choice(flag.choices) if flag.choices else flag_type(key)
        opts.append(
            click.option(
                name, key, type=kind, multiple=flag.repeat, metavar=flag.metavar, help=flag.help
            )
        )
    opts.append(
        click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
    )
    for opt in reversed(opts):
        f = opt(f)
    return f


def _at_least_one(ctx, param, value: int) -> int:
    if value < 1:
        raise KLMError(f"--{param.name} must be at least 1")
    return value


def many_runs_options(folder: str):
    """--jobs, --out, --force, --allow-changes and -q: the flags of a command that trains many
    runs into one folder (klm compare, klm ladder, klm sweep); ``folder`` is --out's help."""
    opts = [
        click.option(
            "--jobs",
            type=int,
            default=1,
            show_default=True,
            callback=_at_least_one,
            help="Runs in parallel.",
        ),
        click.option("--out", type=click.Path(path_type=Path), help=folder),
        click.option(
            "--force",
            is_flag=True,
            help="Replace runs made with another configuration, or with other code or data.",
        ),
        click.option(
            "--allow-changes",
            is_flag=True,
            help="Reuse or resume runs whose code or data changed since they ran (recorded in "
            "summary.json).",
        ),
        click.option("-q", "--quiet", is_flag=True, help="Only the result table."),
    ]

    def decorate(f):
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def overrides_from(params: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(recipe, overrides) from the parsed flags of run_options."""
    params = dict(params)
    recipe = params.pop("recipe", None)
    settings = params.pop("settings", ()) or ()
    overrides = {}
    for key, value in params.items():
        if FLAGS[key].repeat:
            if value:
                overrides[key] = ",".join(value)
        elif value is not None:
            overrides[key] = value
    return recipe, overrides | parse_set(settings)


def run_flags() -> set[str]:
    """The settings that have a flag of their own in `klm run` (the rest go through --set)."""
    return set(FLAGS)


def run_command(settings: dict[str, Any], recipe: str) -> str:
    """The ``klm run`` command line that trains with ``settings`` on top of ``recipe``."""
    flags = run_flags()
    words = ["klm", "run", "--recipe", recipe]
    for key, value in settings.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if key in flags:
            words += [f"--{key.replace('_', '-')}", text]
        else:
            words += ["--set", f"{key}={text}"]
    return shlex.join(words)


def parse_run_args(args: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Parse `klm run` flags given as a list of words, e.g. ["--posemb", "rope"]."""
    return parse_args(list(args))
