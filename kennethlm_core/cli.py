"""The ``klm`` command line.

Importing this module is cheap: torch, datasets and plugins are imported inside the commands
that need them, so ``klm --help`` answers at once. Errors the user can fix print one line and
exit with code 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import json
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from kennethlm_core.errors import KLMError

SLOT_FLAGS = ("model", "attention", "posemb", "norm", "mlp", "optimizer", "schedule", "tokenizer")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


class KLMGroup(click.Group):
    """Built-in commands, plus those plugins add (loaded only when a name is not built in)."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and not getattr(self, "_plugins_loaded", False):
            self._plugins_loaded = True
            _registry(ctx).add_commands(self)
            command = super().get_command(ctx, name)
        return command


def _registry(ctx: click.Context | None = None):
    from kennethlm_core.plugins import get_registry

    disabled = ()
    if ctx is not None:
        root = ctx.find_root()
        disabled = (root.params or {}).get("disable_plugin") or ()
    return get_registry(disabled)


@click.group(cls=KLMGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--disable-plugin",
    multiple=True,
    metavar="NAME",
    help="Skip a plugin (entry-point or distribution name); repeatable.",
)
@click.version_option(package_name="kennethlm", prog_name="klm")
def cli(disable_plugin):
    """KennethLM: a nanoGPT for experiments, every idea a plugin, every result in bits per byte.

    \b
    klm run                                  train the default GPT on the Danish sample
    klm run --attention flash --posemb alibi choose components by slot
    klm list-plugins                         what is installed, by slot
    klm eval RUN --task all                  evaluate a run
    klm sample RUN --prompt "Der var engang" generate text

    Plugins may add commands; `klm list-plugins` lists them.
    """


# -- klm run ---------------------------------------------------------------------------------


def run_options(f):
    """The flags of `klm run`, shared by anything that takes run arguments (klm compare)."""
    opts = [
        click.option("--recipe", help="Start from a recipe in registry.toml (baseline, record)."),
        *[
            click.option(f"--{slot}", help=f"The {slot} component (klm list-plugins).")
            for slot in SLOT_FLAGS
        ],
        click.option("--vocab-size", type=int, help="Tokenizer vocabulary size (0: its default)."),
        click.option("--corpus", help="A corpus name (sample, dagw, dynaword) or a path."),
        click.option("--mix", help="Domain weights for training batches: books=0.5,speech=0.5."),
        click.option("--n-layer", type=int, help="Transformer blocks."),
        click.option("--n-head", type=int, help="Attention heads."),
        click.option("--n-embd", type=int, help="Width of the residual stream."),
        click.option("--block-size", type=int, help="Context length in tokens."),
        click.option("--batch-size", type=int, help="Sequences per step."),
        click.option("--lr", type=float, help="Peak learning rate."),
        click.option("--dropout", type=float, help="Dropout probability."),
        click.option("--steps", help="Budget: optimizer steps."),
        click.option("--tokens", help="Budget: training tokens (500k, 2M)."),
        click.option(
            "--time", "time_", metavar="DURATION", help="Budget: training time (90s, 15m)."
        ),
        click.option("--eval-every", type=int, help="Steps between validation evaluations."),
        click.option("--seed", type=int, help="Random seed (weights and data order)."),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--dtype", help="auto, float32 or bfloat16 (autocast)."),
        click.option(
            "--set",
            "settings",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any setting, including plugin options; repeatable.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def overrides_from(params: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(recipe, overrides) from the parsed flags of run_options."""
    from kennethlm_core.config import parse_set

    params = dict(params)
    recipe = params.pop("recipe", None)
    settings = params.pop("settings", ()) or ()
    if params.get("time_") is not None:
        params["time"] = params.pop("time_")
    params.pop("time_", None)
    overrides = {k: v for k, v in params.items() if v is not None}
    overrides.update(parse_set(settings))
    return recipe, overrides


@click.command()
@run_options
def _run_args(**params):
    """Parses run arguments given as text (the candidate of a comparison)."""


def parse_run_args(args: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Parse `klm run` flags given as a list of words, e.g. ["--posemb", "rope"]."""
    return overrides_from(_run_args.make_context("run", list(args)).params)


@cli.command()
@run_options
@click.option("--out", type=click.Path(path_type=Path), help="Run folder (default runs/<time>).")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this folder.")
@click.option("--force", is_flag=True, help="Replace the run already in --out.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def run(ctx, out, resume, force, quiet, **params):
    """Train a model and write a run folder.

    \b
    config.json      everything needed to repeat the run
    metrics.jsonl    step, tokens, train_time_s, lr, train_loss, val_bpb per evaluation
    model.safetensors, checkpoint.safetensors, tokenizer/, summary.json
    """
    from kennethlm_core.config import build_config, resolve
    from kennethlm_core.train import resume_config

    registry = _registry(ctx)
    recipe, overrides = overrides_from(params)
    if resume:
        if out or recipe or force:
            raise KLMError("--resume continues an existing run; drop --out, --recipe and --force")
        out = resume
        cfg = resume_config(out, overrides, registry)
    else:
        cfg = resolve(build_config(recipe, overrides), registry)
        out = out or _default_out()
    console = _console(stderr=True)
    summary = _train_with_progress(
        cfg, out, registry, resume=bool(resume), force=force, quiet=quiet, console=console
    )
    _print_summary(summary, out)


def _default_out() -> Path:
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _train_with_progress(cfg, out, registry, *, resume, force, quiet, console):
    """Train with a live progress bar on a terminal, or a line per evaluation otherwise."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from kennethlm_core.train import preflight, train

    preflight(cfg, registry)  # refuse bad settings before drawing anything

    def line(row):
        if not quiet:
            loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
            console.print(
                f"step {row['step']:>6}  train_loss {loss}  val_bpb "
                f"{row['val_bpb']:.4f}  {row['train_time_s']:.1f}s"
            )

    if quiet or not console.is_terminal:
        log = (lambda message: None) if quiet else console.print
        return train(cfg, out, registry=registry, resume=resume, force=force, log=log, on_eval=line)

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("train", total=1.0, status="preparing data")

        def progress(clock, fraction, loss, val_bpb, tps):
            status = f"step {clock.step}  loss {loss:.3f}  val_bpb {val_bpb:.3f}  {tps:,.0f} tok/s"
            bar.update(task, completed=fraction, status=status)

        def log(message):
            bar.update(task, status=message)

        return train(
            cfg,
            out,
            registry=registry,
            resume=resume,
            force=force,
            log=log,
            progress=progress,
            on_eval=line,
        )


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    console = _console()
    ci = summary["val_bpb_ci"]
    ci = f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""
    console.print(
        f"[bold]val_bpb {summary['val_bpb']:.4f}[/]{ci} · "
        f"{summary['params']:,} params · {summary['tokens_seen']:,} tokens in "
        f"{summary['train_time_s']:.1f}s ({summary['tokens_per_s']:,.0f} tok/s) · "
        f"{summary['device']}"
    )
    table = Table("domain", "val_bpb", box=None, pad_edge=False)
    for domain, value in sorted(summary["val_bpb_by_domain"].items()):
        table.add_row(domain, f"{value:.4f}")
    console.print(table)
    console.print(f"run files: {out}")


# -- klm list-plugins ---------------------------------------------------------------------


@cli.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--slot", help="Only this slot.")
@click.pass_context
def list_plugins(ctx, as_json, slot):
    """Every component by slot, with its distribution, version and status in registry.toml."""
    from kennethlm_core.config import load_registry_doc
    from kennethlm_core.registry import component_status

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
    from rich.table import Table

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


# -- klm sample ------------------------------------------------------------------------------


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="Text to continue.")
@click.option("--max-new-tokens", type=int, default=200, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=None, help="Sample among the k likeliest tokens.")
@click.option("--num-samples", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=1337, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def sample(ctx, run_dir, prompt, max_new_tokens, temperature, top_k, num_samples, seed, device):
    """Generate text from a trained run."""
    import torch

    from kennethlm_core.evaluate import LoadedRun
    from kennethlm_core.model import generate

    if temperature < 0 or max_new_tokens < 0:
        raise KLMError("--temperature and --max-new-tokens must be >= 0")
    lm = LoadedRun(run_dir, device=device, registry=_registry(ctx))
    ids = [lm.tokenizer.doc_id, *lm.encode(prompt)]
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=lm.device)
    with lm.autocast:
        y = generate(
            lm.model,
            x,
            max_new_tokens,
            lm.block_size,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
        )
    for i, row in enumerate(y.tolist()):
        new = row[len(ids) :]
        if i:
            click.echo("---")
        click.echo(prompt + lm.decode(new).replace(chr(0xFFFD), ""))


# -- klm eval --------------------------------------------------------------------------------


@cli.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--task",
    "tasks",
    multiple=True,
    default=["bpb"],
    show_default=True,
    help="Task name, repeatable, or 'all' (klm list-plugins --slot task).",
)
@click.option(
    "--data",
    help="Local data instead of the tasks' hub sets: a file for one task, or a folder with "
    "one subfolder per task (acceptability/, sentiment/, qa/, summarization/, knowledge/).",
)
@click.option("--corpus", help="For bpb: score this corpus' validation split.")
@click.option("--limit", type=int, help="Examples per task (for bpb: bytes of text).")
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def eval_(ctx, run_dir, tasks, data, corpus, limit, device):
    """Evaluate a run on tasks; print a table and write eval.json in the run folder."""
    from rich.table import Table

    from kennethlm_core.evaluate import run_tasks

    if limit is not None and limit < 1:
        raise KLMError(f"--limit must be at least 1, got {limit}")
    registry = _registry(ctx)
    names = registry.names("task") if "all" in tasks else list(dict.fromkeys(tasks))
    err = _console(stderr=True)
    results = run_tasks(
        run_dir,
        names,
        data=data,
        limit=limit,
        device=device,
        registry=registry,
        corpus=corpus,
        log=lambda message: err.print(f"[dim]{message}[/]"),
    )
    table = Table("task", "metric", "value", "95% CI", "chance", "n")
    for task, res in results.items():
        for i, (metric, m) in enumerate(res["metrics"].items()):
            ci = "-".join(f"{v:.3f}" for v in m["ci"]) if "ci" in m else ""
            chance = f"{m['chance']:.3f}" if "chance" in m else ""
            n = str(m.get("n", res["n"]))
            table.add_row(task if i == 0 else "", metric, f"{m['value']:.4f}", ci, chance, n)
        table.add_section()
    console = _console()
    console.print(table)
    for task, res in results.items():
        console.print(f"[bold]{task}[/] ({res['seconds']:.1f}s): {res['notes']}")
    click.echo(f"written to {Path(run_dir) / 'eval.json'}")


# -- entry point -----------------------------------------------------------------------------


def _showwarning(message, category, filename, lineno, file=None, line=None):
    print(f"klm: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit 2."""
    warnings.showwarning = _showwarning
    try:
        cli.main(args=argv, prog_name="klm", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        print(f"klm: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except click.Abort:
        print("klm: aborted", file=sys.stderr)
        sys.exit(130)
    except KLMError as e:
        from kennethlm_core.train import Interrupted

        print(f"klm: {'stopped' if isinstance(e, Interrupted) else 'error'}: {e}", file=sys.stderr)
        sys.exit(130 if isinstance(e, Interrupted) else 2)
    sys.exit(0)
