"""The ``klm`` command line.

Importing this module is cheap: torch, datasets and plugins are imported inside the commands
that need them, so ``klm --help`` answers at once. Errors the user can fix print one line and
exit with code 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from kennethlm_core import logs
from kennethlm_core.errors import KLMError
from kennethlm_core.experiment import ALPHA, MIN_EFFECT, STANDARD_STEPS

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


def _disabled(ctx: click.Context | None) -> list[str]:
    """The plugins named with `klm --disable-plugin`."""
    if ctx is None:
        return []
    return list((ctx.find_root().params or {}).get("disable_plugin") or ())


def _registry(ctx: click.Context | None = None):
    from kennethlm_core.plugins import get_registry

    return get_registry(_disabled(ctx))


@click.group(cls=KLMGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--disable-plugin",
    multiple=True,
    metavar="NAME",
    help="Skip a plugin (entry-point or distribution name); repeatable.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show the log messages of libraries (datasets, huggingface_hub, torch) as they come.",
)
@click.version_option(package_name="kennethlm", prog_name="klm")
def cli(disable_plugin, verbose):
    """KennethLM: a nanoGPT for experiments, every idea a plugin, every result in bits per byte.

    \b
    klm run                                  train the default GPT on the Danish sample
    klm run --attention flash --posemb alibi choose components by slot
    klm list-plugins                         what is installed, by slot
    klm eval RUN --task all                  evaluate a run
    klm sample RUN --prompt "Der var engang" generate text

    Plugins may add commands; `klm list-plugins` lists them.
    """
    logs.show(verbose)


# -- klm run ---------------------------------------------------------------------------------


def run_options(f):
    """The flags of `klm run`, shared by anything that takes run arguments (klm compare)."""
    opts = [
        click.option("--recipe", help="Start from a recipe in registry.toml (baseline, record)."),
        *[
            click.option(f"--{slot}", help=f"The {slot} component (klm list-plugins).")
            for slot in SLOT_FLAGS
        ],
        click.option(
            "--tweak",
            multiple=True,
            metavar="NAME",
            help="A model tweak (klm list-plugins), applied after the model is built; "
            "repeatable, in order. Replaces the recipe's tweaks.",
        ),
        click.option(
            "--callback",
            multiple=True,
            metavar="NAME",
            help="A training-loop callback (klm list-plugins), e.g. ema; repeatable, in order. "
            "Replaces the recipe's callbacks.",
        ),
        click.option(
            "--logger",
            multiple=True,
            metavar="NAME",
            help="An experiment tracker for the run: tensorboard, wandb (docs/loggers.md); "
            "repeatable. Replaces the recipe's loggers.",
        ),
        click.option("--vocab-size", type=int, help="Tokenizer vocabulary size (0: its default)."),
        click.option("--corpus", help="Corpus: sample, dagw, dynaword, hf:OWNER/NAME or a path."),
        click.option(
            "--mix",
            help="Domain weights for training batches: books=0.5,speech=0.5 (domains left out "
            "get none, but are still scored on validation), or temperature=ALPHA: weights "
            "proportional to each domain's natural share to the power ALPHA (1: natural, the "
            "default; 0: uniform).",
        ),
        click.option("--n-layer", type=int, help="Transformer blocks."),
        click.option("--n-head", type=int, help="Attention heads."),
        click.option("--n-embd", type=int, help="Width of the residual stream."),
        click.option("--block-size", type=int, help="Context length in tokens."),
        click.option("--batch-size", type=int, help="Sequences per step."),
        click.option("--lr", type=float, help="Peak learning rate."),
        click.option("--dropout", type=float, help="Dropout probability."),
        click.option(
            "--size",
            type=click.Choice(["auto"]),
            help="auto: layers, heads and width chosen for the --time budget on this machine "
            "(measured tokens/s and the project's size rule).",
        ),
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
            "--compile/--no-compile",
            "compile_",
            default=None,
            help="torch.compile the model for training (compilation counts as training time).",
        ),
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
    tweaks = params.pop("tweak", ()) or ()
    callbacks = params.pop("callback", ()) or ()
    loggers = params.pop("logger", ()) or ()
    if params.get("compile_") is not None:
        params["compile"] = params.pop("compile_")
    params.pop("compile_", None)
    overrides = {k: v for k, v in params.items() if v is not None}
    if tweaks:
        overrides["tweak"] = ",".join(tweaks)
    if callbacks:
        overrides["callback"] = ",".join(callbacks)
    if loggers:
        overrides["logger"] = ",".join(loggers)
    overrides.update(parse_set(settings))
    return recipe, overrides


@click.command()
@run_options
def _run_args(**params):
    """Parses run arguments given as text (the candidate of a comparison)."""


def run_flags() -> set[str]:
    """The settings that have a flag of their own in `klm run` (the rest go through --set)."""
    names = {p.name for p in _run_args.params} - {"recipe", "settings", "time_", "compile_"}
    return names | {"time"}


def run_command(settings: dict[str, Any], recipe: str) -> str:
    """The ``klm run`` command line that trains with ``settings`` on top of ``recipe``."""
    import shlex

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
    return overrides_from(_run_args.make_context("run", list(args)).params)


@cli.command()
@run_options
@click.option("--out", type=click.Path(path_type=Path), help="Run folder (default runs/<time>).")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this folder.")
@click.option("--force", is_flag=True, help="Replace the run already in --out.")
@click.option(
    "--allow-changes",
    is_flag=True,
    help="With --resume: continue even if the code or data changed since the run started "
    "(recorded in provenance.json).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--nproc",
    type=int,
    default=1,
    show_default=True,
    help="Train in N processes with DDP (launches torchrun with these arguments).",
)
@click.pass_context
def run(ctx, out, resume, force, allow_changes, quiet, nproc, **params):
    """Train a model and write a run folder.

    \b
    config.json      everything needed to repeat the run
    metrics.jsonl    step, tokens, train_time_s, lr, train_loss, val_bpb per evaluation
    provenance.json  the corpus, data pipeline, tokenizer and code (commit, plugins) it used
    model.safetensors, checkpoint.safetensors, tokenizer/, summary.json
    """
    from kennethlm_core import distributed, provenance
    from kennethlm_core.config import build_config, resolve
    from kennethlm_core.rundir import check_run_dir, resume_config
    from kennethlm_core.train import preflight

    registry = _registry(ctx)
    recipe, overrides = overrides_from(params)
    if nproc < 1:
        raise KLMError(f"--nproc must be at least 1, got {nproc}")
    if resume:
        if out or recipe or force:
            raise KLMError("--resume continues an existing run; drop --out, --recipe and --force")
        out = resume
        cfg = resume_config(out, overrides, registry)
    elif allow_changes:
        raise KLMError("--allow-changes goes with --resume: a new run has nothing to change")
    else:
        cfg = resolve(build_config(recipe, overrides), registry)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: launch it
        distributed.check_batch(cfg.batch_size, nproc)
        preflight(cfg, registry)  # bad settings fail here, once, not in every process
        if resume:
            current = provenance.planned_provenance(cfg, registry)
            provenance.check_resume(out, current, allow_changes)
        else:
            out = out or _default_out()
            check_run_dir(out, cfg, force)
        sys.exit(distributed.launch(nproc, _launch_args(out)))
    dist = distributed.setup()
    if not resume:
        out = out or dist.broadcast(_default_out())  # one folder for all processes
    quiet = quiet or not dist.is_main
    console = _console(stderr=True)
    size = None
    if cfg.size == "auto" and not resume:  # a resumed run keeps the shape it started with
        if nproc > 1 or dist.active:
            raise KLMError("--size auto runs in one process; drop --nproc or give the shape")
        from kennethlm_core.sizing import auto_size

        preflight(cfg, registry)  # bad settings and folders fail before the probes
        check_run_dir(out, cfg, force)
        say = (lambda m: None) if quiet else console.print
        cfg, size = auto_size(cfg, registry, log=lambda m: say(m) if "auto: " in m else None)
    summary = _train_with_progress(
        cfg,
        out,
        registry,
        resume=bool(resume),
        force=force,
        allow_changes=allow_changes,
        quiet=quiet,
        console=console,
    )
    if size is not None:  # the choice goes with the run's figures
        from kennethlm_core.checkpoint import atomic_write_json

        summary["size"] = size.to_dict()
        atomic_write_json(out / "summary.json", summary)
    if dist.is_main:
        _print_summary(summary, out)


def _launch_args(out: Path) -> list[str]:
    """This command's arguments for the processes torchrun starts: without --nproc, and with
    the run folder chosen here."""
    args, skip = [], False
    for arg in _argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    if (
        "--out" not in args
        and "--resume" not in args
        and not any(a.startswith(("--out=", "--resume=")) for a in args)
    ):
        args += ["--out", str(out)]
    return args


def _default_out() -> Path:
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _train_with_progress(cfg, out, registry, *, resume, force, allow_changes, quiet, console):
    """Train with a live progress bar on a terminal, or a line per evaluation otherwise."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from kennethlm_core.train import preflight, train

    preflight(cfg, registry)  # refuse bad settings before drawing anything
    flush_warnings()  # the components it needs are loaded: other plugins' warnings now

    def line(row):
        if not quiet:
            loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
            console.print(
                f"step {row['step']:>6}  train_loss {loss}  val_bpb "
                f"{row['val_bpb']:.4f}  {row['train_time_s']:.1f}s"
            )

    common = dict(registry=registry, resume=resume, force=force, allow_changes=allow_changes)
    if quiet or not console.is_terminal:
        log = (lambda message: None) if quiet else console.print
        return train(cfg, out, log=log, on_eval=line, **common)

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

        return train(cfg, out, log=log, progress=progress, on_eval=line, **common)


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
    from kennethlm_core.ledger import component_status

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


# -- klm export ------------------------------------------------------------------------------


@cli.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--to", "out", required=True, type=click.Path(path_type=Path), help="The model folder."
)
@click.option("--force", is_flag=True, help="Replace an earlier export in --to.")
@click.option(
    "--push-to-hub", "repo", metavar="REPO", help="Then upload it as this hub model (user/name)."
)
@click.pass_context
def export_(ctx, run_dir, out, force, repo):
    """Export a run as a Hugging Face model folder (docs/export.md).

    A GPT of the baseline components becomes a stock GPT-2; any other model, remote code
    that builds it through kennethlm_core and the run's plugins (trust_remote_code=True).
    The tokenizer gives klm's ids; README.md is the model card. --to must be new or empty;
    --force replaces only an earlier export.
    """
    # imported here, not at the top: klm --help must not import torch or transformers
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise KLMError("klm export needs transformers: pip install 'kennethlm[hf]'") from None
    from kennethlm_core.export import export_run, push

    done = export_run(
        run_dir, out, force=force, registry=_registry(ctx), log=lambda m: click.echo(m, err=True)
    )
    click.echo(
        f"wrote {run_dir} to {out} as {done.kind}: {done.params:,} parameters, "
        f"{done.bytes / 1e6:.1f} MB in {', '.join(done.files)}"
    )
    if repo:
        click.echo(f"pushed to {push(out, repo)}")


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
    "one subfolder per task (acceptability/, sentiment/, qa/, summarization/, knowledge/). "
    "For --task bpb alone: any text (a file, folder, exported split or corpus name), all of "
    "it scored.",
)
@click.option("--corpus", help="For bpb: score this corpus' --split instead of the run's.")
@click.option(
    "--split",
    default="validation",
    show_default=True,
    help="For bpb: the split of the corpus to score (validation or test).",
)
@click.option(
    "--stride",
    type=int,
    default=0,
    help="For bpb: targets per window (default: the run's eval_stride, block_size / 2); "
    "block_size gives the old non-overlapping windows.",
)
@click.option("--limit", type=int, help="Examples per task (for bpb: bytes of text).")
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def eval_(ctx, run_dir, tasks, data, corpus, split, stride, limit, device):
    """Evaluate a run on tasks; print a table and write eval.json in the run folder.

    The test split is held back: score it for a record or a publication, never to choose
    between settings (klm compare and the ledger use validation).
    """
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
        split=split,
        stride=stride,
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


# -- klm data --------------------------------------------------------------------------------


@cli.group()
def data():
    """Corpora, tokenizers and the token cache."""


@data.command("stats")
@click.option("--corpus", help="Corpus: sample, dagw, dynaword, hf:OWNER/NAME or a path.")
@click.option("--tokenizer", help="The tokenizer (klm list-plugins --slot tokenizer).")
@click.option("--vocab-size", type=int, help="Tokenizer vocabulary size (0: its default).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Any setting.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def data_stats(ctx, corpus, tokenizer, vocab_size, settings, as_json):
    """Documents (and how many are in validation and test), bytes, tokens and bytes per
    token, per domain.

    Prepares the data the way `klm run` does (training the tokenizer and filling the token
    cache the first time), so a later run with the same corpus and tokenizer starts at once.
    """
    from kennethlm_core.config import build_config, parse_set, resolve
    from kennethlm_core.data import domain_stats, prepare_data

    registry = _registry(ctx)
    flags = {"corpus": corpus, "tokenizer": tokenizer, "vocab_size": vocab_size}
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_set(settings)
    cfg = resolve(build_config(overrides=overrides), registry)
    err = _console(stderr=True)
    prepared = prepare_data(cfg, registry, log=err.print)
    stats = domain_stats(prepared)
    if as_json:
        info = {"corpus": cfg.corpus, "tokenizer": cfg.tokenizer}
        info |= {"vocab_size": prepared.tokenizer.vocab_size, "cache": str(prepared.cache_dir)}
        click.echo(json.dumps({**info, "domains": stats}, indent=2))
        return
    from rich.table import Table

    title = f"{cfg.corpus} · {cfg.tokenizer} ({prepared.tokenizer.vocab_size:,} tokens)"
    table = Table(title=title)
    table.add_column("domain", no_wrap=True)
    for column in ("docs", "val/test", "bytes", "tokens", "bytes/token", "train share"):
        table.add_column(column, justify="right")
    for name, s in stats.items():
        table.add_row(
            f"[bold]{name}[/]" if name == "total" else name,
            f"{s['documents']:,}",
            f"{s['validation_documents']:,}/{s['test_documents']:,}",
            f"{s['bytes']:,}",
            f"{s['tokens']:,}",
            f"{s['bytes_per_token']:.3f}",
            f"{s['train_share']:.3f}",
            end_section=name == list(stats)[-2],
        )
    _console().print(table)


@data.command("export")
@click.option("--corpus", help="A corpus name (dagw, dynaword, sample) or a path.")
@click.option("--split", required=True, help="The split to publish: test or validation.")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="The dataset folder to write."
)
@click.option("--force", is_flag=True, help="Replace an earlier export in --out.")
@click.option(
    "--push-to-hub", "repo", metavar="REPO", help="Then upload it as this hub dataset (user/name)."
)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Any setting.")
@click.pass_context
def data_export(ctx, corpus, split, out, force, repo, settings):
    """Publish a split of a corpus as a Hugging Face dataset folder.

    Writes the split's documents (id, text, domain, and source and license where the corpus
    has them) as parquet files under OUT/data/, and a dataset card, OUT/README.md, that says
    how the split is made. `datasets.load_dataset(OUT)` reads it back; `klm eval RUN --task
    bpb --data OUT` scores it. The split is the one `klm run` uses, so set val_fraction and
    test_fraction (--set) as the runs did. Only validation and test are published.
    """
    from kennethlm_core.config import build_config, parse_set, resolve
    from kennethlm_core.publish import check_out, check_split, export, push_to_hub

    check_split(split)  # before anything is read
    check_out(out, force)
    registry = _registry(ctx)
    overrides = ({"corpus": corpus} if corpus else {}) | parse_set(settings)
    cfg = resolve(build_config(overrides=overrides), registry)

    def note(message: str) -> None:
        click.echo(message, err=True)

    done = export(cfg, registry, split, out, force=force, repo=repo or "", log=note)
    click.echo(
        f"wrote the {split} split of {cfg.corpus} to {out}: {done.documents:,} documents, "
        f"{done.bytes:,} bytes in {', '.join(done.files)}"
    )
    if done.unknown_licences:
        named = [s for s in done.unknown_licences if s]
        what = f"source {', '.join(named)}" if named else "this text (the rows name no source)"
        note(f"note: the licence of {what} is unknown to klm; see the card")
    if repo:
        click.echo(f"pushed to {push_to_hub(out, repo, split)}")


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
    from kennethlm_core.scaffold import check_request, new_plugin

    check_request(name, slot, directory)  # a bad name or slot fails before loading plugins
    target = new_plugin(name, slot, directory, registry=_registry(ctx))
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    click.echo(f"wrote {target}/: {', '.join(files)}")
    click.echo(f"install it:  .venv/bin/pip install --no-build-isolation -e {target}")
    click.echo(f"test it:     .venv/bin/pytest {target}")
    flag = "klm eval RUN --task" if slot == "task" else f"klm run --{slot}"
    click.echo(f"try it:      {flag} {name}")


# -- klm compare -----------------------------------------------------------------------------


def _arm(option: str, text: str):
    """An arm of a comparison: a recipe name, or klm run arguments in one string."""
    import shlex

    from kennethlm_core.experiment import Arm

    text = text.strip()
    if not text.startswith("-"):
        return Arm(text, recipe=text or None)
    try:
        recipe, overrides = parse_run_args(shlex.split(text))
    except click.UsageError as e:
        raise KLMError(f"--{option} '{text}': {e.format_message()}") from None
    except ValueError as e:
        raise KLMError(f"--{option} '{text}': {e}") from None
    return Arm(text, recipe, overrides)


@cli.command()
@run_options
@click.option(
    "--baseline",
    default="record",
    show_default=True,
    metavar="RECIPE|ARGS",
    help="A recipe in registry.toml, or klm run arguments in quotes.",
)
@click.option(
    "--candidate",
    required=True,
    metavar="ARGS|RECIPE",
    help="klm run arguments in quotes, applied on top of the baseline; or a recipe.",
)
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds per arm.")
@click.option(
    "--metric",
    default="bpb",
    show_default=True,
    help="Decision metric: bpb (final val_bpb) or TASK/METRIC of klm eval (sentiment/mcc).",
)
@click.option("--metric-data", help="Data for the metric's task (as klm eval --data).")
@click.option(
    "--min-effect",
    type=float,
    default=MIN_EFFECT,
    show_default=True,
    help="Smallest improvement accepted, in the metric's units.",
)
@click.option(
    "--alpha",
    type=float,
    default=ALPHA,
    show_default=True,
    help="Significance level of the one-sided tests.",
)
@click.option(
    "--branch-at",
    type=float,
    metavar="FRACTION",
    help="Start the candidate from the baseline's checkpoint at this fraction of the budget.",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    help="Start both arms from this run's checkpoint (the baseline arm is the control).",
)
@click.option("--jobs", type=int, default=1, show_default=True, help="Runs in parallel.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Experiment folder (default experiments/<baseline>-vs-<candidate>-...).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace runs made with another configuration, or with other code or data.",
)
@click.option(
    "--allow-changes",
    is_flag=True,
    help="Reuse or resume runs whose code or data changed since they ran (recorded in "
    "summary.json).",
)
@click.option("--record", is_flag=True, help="Append the result to registry.toml's ledger.")
@click.option("--promote", is_flag=True, help="If better: make the candidate the record recipe.")
@click.option(
    "--secondary-data",
    metavar="PATH|none",
    help="Data of the second, non-deciding metric that --record scores on every run "
    "(summarization: bpb of the reference and chrF++), as klm eval --data: a folder like "
    "../shared/data/eval, or the task's own file or folder. Default: the task's own data (its "
    "hub set); 'none': record without it. Checked before training.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only the result table.")
@click.pass_context
def compare(
    ctx,
    baseline,
    candidate,
    seeds,
    metric,
    metric_data,
    min_effect,
    alpha,
    branch_at,
    init_from,
    jobs,
    out,
    force,
    allow_changes,
    record,
    promote,
    secondary_data,
    quiet,
    **params,
):
    """Compare a candidate with a baseline over seeds: the improvement protocol.

    Both arms train with the same seeds (same initial weights and batches) and the same budget;
    the verdict comes from a one-sided paired t-test on the final metric. Any klm run flag given
    here applies to both arms (--corpus, sizes, --set ...); the budget (--steps, --tokens or
    --time) defaults to the standard comparison budget, --steps {steps}. --seed is the first
    of the seeds (default 1).
    Runs go to the experiment folder; running the same comparison again reuses finished runs
    and resumes interrupted ones, unless their code or data changed (--allow-changes, --force).

    \b
    klm compare --candidate "--posemb none"                     vs the record recipe
    klm compare --baseline baseline --candidate "--set lr=3e-3" --corpus ../shared/data/corpus
    klm compare --candidate "--posemb none" --branch-at 0.5     does it bend the trajectory?
    """
    from kennethlm_core import experiment
    from kennethlm_core.config import BUDGET_KEYS

    registry = _registry(ctx)
    recipe, shared = overrides_from(params)
    if recipe:
        raise KLMError("klm compare takes the baseline as --baseline RECIPE, not --recipe")
    if seeds < 2:
        raise KLMError("--seeds must be at least 2 for a paired test; the protocol uses 5")
    if jobs < 1:
        raise KLMError("--jobs must be at least 1")
    first = shared.pop("seed", 1)
    logger = shared.pop("logger", None)  # how the runs are watched, not what is compared
    comp = experiment.Comparison(
        baseline=_arm("baseline", baseline),
        candidate=_arm("candidate", candidate),
        shared=shared,
        seeds=list(range(first, first + seeds)),
        metric=metric,
        metric_data=metric_data,
        min_effect=min_effect,
        alpha=alpha,
        branch_at=branch_at,
        init_from=init_from,
        logger=logger,
    )
    console = _console(stderr=True)
    say = (lambda message: None) if quiet else (lambda m: console.print(m, soft_wrap=True))
    if not any(k in shared for k in BUDGET_KEYS):
        shared["steps"] = STANDARD_STEPS
    experiment.arm_configs(comp, registry)  # bad arms fail in one line, before any notes
    if "time" in shared:
        say("note: a --time budget makes the verdict depend on this machine's speed and load")
    if promote and (comp.baseline.recipe != "record" or comp.baseline.overrides):
        raise KLMError("--promote needs --baseline record: a new record must beat the old one")
    secondary = None
    if secondary_data != "none" and (record or promote or secondary_data):
        secondary = experiment.SecondaryMetric(data=secondary_data)
    folder = out or experiment.default_folder(comp)
    say(f"experiment folder: {folder}")
    summary = experiment.run_comparison(
        comp,
        folder,
        registry=registry,
        jobs=jobs,
        force=force,
        allow_changes=allow_changes,
        disabled=_disabled(ctx),
        say=say,
        secondary=secondary,
    )
    _print_comparison(summary)
    if summary.get("secondary"):
        from kennethlm_core.ledger import secondary_cell, secondary_entry

        sec = summary["secondary"]
        cell = secondary_cell({sec["task"]: secondary_entry(sec)}, sec["task"])
        click.echo(f"{sec['task']} (not deciding, {sec['n']} examples a run): {cell}")
    click.echo(f"written to {folder / 'summary.json'} and {folder / 'trajectories.png'}")
    if record or promote:
        _record(summary, promote)


compare.help = compare.help.replace("{steps}", str(STANDARD_STEPS))


def _print_comparison(s: dict[str, Any]) -> None:
    from rich.table import Table

    metric = "val_bpb" if s["metric"] == "bpb" else s["metric"]
    base, cand = s["arms"]["baseline"], s["arms"]["candidate"]
    table = Table("seed", f"baseline {metric}", f"candidate {metric}", "Δ", title=s["name"])
    for seed, b, c in zip(s["seeds"], base["values"], cand["values"], strict=True):
        table.add_row(str(seed), f"{b:.4f}", f"{c:.4f}", f"{c - b:+.4f}")
    table.add_section()
    table.add_row(
        "mean ± std",
        f"{base['mean']:.4f} ± {base['std']:.4f}",
        f"{cand['mean']:.4f} ± {cand['std']:.4f}",
        f"{s['delta']:+.4f} ± {s['delta_std']:.4f}",
    )
    table.add_row(
        "tokens/s", f"{base['tokens_per_s']:,.0f}", f"{cand['tokens_per_s']:,.0f}", "", style="dim"
    )
    console = _console()
    console.print(table)
    lo, hi = s["delta_ci"]
    colour = {"better": "green", "worse": "red"}.get(s["verdict"], "yellow")
    better = "higher" if s["higher_is_better"] else "lower"
    console.print(
        f"Δ {metric} {s['delta']:+.4f} (95% CI {lo:+.4f} to {hi:+.4f}; {better} is better)"
    )
    console.print(
        f"one-sided paired t-test: p(better) = {s['p_better']:.2g}, p(worse) = {s['p_worse']:.2g}"
    )
    console.print(
        f"verdict: [bold {colour}]{s['verdict']}[/] "
        f"(min effect {s['min_effect']:g}, alpha {s['alpha']:g})"
    )


def _record(summary: dict[str, Any], promote: bool) -> None:
    from kennethlm_core.config import registry_path
    from kennethlm_core.ledger import (
        append_experiment,
        ledger_entry,
        ledger_lock,
        test_scored_before,
        test_scores,
    )
    from kennethlm_core.ledger import promote as promote_entry

    path = registry_path()
    entry = ledger_entry(summary)
    test = None
    if promote and summary["verdict"] == "better":  # a record reports its held-back test figure
        # the baseline arm is the previous record, scored when it was promoted (the same
        # recipe and seeds); only the chain's first promotion scores its baseline too
        arms = ("candidate",) if test_scored_before(path) else ("baseline", "candidate")
        test = test_scores(summary, _test_bpb, arms)
        click.echo(
            "test split (reported, not deciding): "
            + ", ".join(f"{arm} {test[f'{arm}_mean']:.4f}" for arm in arms)
        )
    with ledger_lock(path):  # the append, the promotion and the render as one step
        if append_experiment(entry, path):
            click.echo(f"recorded in {path} ({summary['verdict']})")
        else:
            click.echo(f"{path} has this result already; not recorded again")
        if promote and summary["verdict"] != "better":
            print(
                f"klm: not promoted: the verdict is {summary['verdict']}; only a better "
                "candidate becomes the record",
                file=sys.stderr,
            )
        elif promote:
            run = Path(summary["arms"]["candidate"]["runs"][0])
            config = json.loads((run / "config.json").read_text())
            promote_entry(entry, config, path, test=test)
            click.echo(f"promoted: {summary['candidate']} is part of the record recipe now")
        _render_pages(path)


def _test_bpb(run: Path) -> float:
    """A run's bits per byte on its corpus' test split (cached in its eval.json)."""
    from kennethlm_core.evaluate import run_tasks

    cached = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    result = cached.get("bpb/test") or run_tasks(run, ["bpb"], split="test")["bpb/test"]
    return float(result["metrics"]["bpb"]["value"])


def _render_pages(path: Path) -> None:
    """Keep the results page and README's current record in step with the ledger, where they
    are beside it."""
    from kennethlm_core.ledger import pages, render_files

    for page in render_files(pages(path), path):
        click.echo(f"updated the results tables in {page}")


# -- klm ladder ------------------------------------------------------------------------------


@cli.command()
@run_options
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds per step.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Runs in parallel.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Ladder folder (default experiments/ladder-<budget>-...).",
)
@click.option("--force", is_flag=True, help="Replace runs made with another configuration.")
@click.option(
    "--allow-changes",
    is_flag=True,
    help="Reuse or resume runs whose code or data changed since they ran (in summary.json).",
)
@click.option("--list", "list_", is_flag=True, help="Only print each step's klm run command.")
@click.option("-q", "--quiet", is_flag=True, help="Only the result table.")
@click.pass_context
def ladder(ctx, seeds, jobs, out, force, allow_changes, list_, quiet, **params):
    """From a bigram table to a GPT, one change at a time: train every step, compare them.

    \b
    bigram -> mean of the past -> one head -> four heads -> + feed-forward -> four blocks
    -> + residual -> + layer norm -> + dropout -> scaled up
    Every step trains on the same seeds, data and budget (default --steps {steps}); any klm run
    flag given here applies to every step (--corpus, --tokenizer, --set ...) unless the step
    itself sets it. --recipe is the starting point (default baseline). Runs go to one folder;
    running the same ladder again reuses finished runs. Prints val_bpb per step and saves
    ladder.png.
    """
    from kennethlm_core import ladder as ladder_mod
    from kennethlm_core.config import BUDGET_KEYS

    registry = _registry(ctx)
    recipe, shared = overrides_from(params)
    recipe = recipe or ladder_mod.BASE_RECIPE
    if seeds < 1:
        raise KLMError("--seeds must be at least 1")
    if jobs < 1:
        raise KLMError("--jobs must be at least 1")
    first = shared.pop("seed", 1)
    if not any(k in shared for k in BUDGET_KEYS):
        shared["steps"] = STANDARD_STEPS
    steps = ladder_mod.LADDER
    ladder_mod.step_configs(shared, registry, recipe, steps)  # bad settings fail here
    if list_:
        for step, changes in zip(steps, ladder_mod.step_overrides(steps), strict=True):
            click.echo(f"# {step.name}: {step.change}")
            click.echo(run_command({**shared, **changes}, recipe))
        return
    folder = out or ladder_mod.default_folder(shared)
    console = _console(stderr=True)
    say = (lambda message: None) if quiet else (lambda m: console.print(m, soft_wrap=True))
    say(f"ladder folder: {folder}")
    summary = ladder_mod.run_ladder(
        shared,
        folder,
        registry=registry,
        seeds=list(range(first, first + seeds)),
        recipe=recipe,
        jobs=jobs,
        force=force,
        allow_changes=allow_changes,
        disabled=_disabled(ctx),
        say=say,
    )
    _print_ladder(summary)
    click.echo(f"written to {folder / 'summary.json'} and {folder / 'ladder.png'}")


ladder.help = ladder.help.replace("{steps}", str(STANDARD_STEPS))


def _print_ladder(s: dict[str, Any]) -> None:
    from rich.table import Table

    budget = ", ".join(f"{v:g} {k}" for k, v in s["budget"].items())
    n = len(s["seeds"])
    title = f"Building GPT step by step · {budget} · {n} seed{'s' * (n > 1)} · {s['machine']}"
    table = Table("step", "change", "val_bpb", "Δ", "params", "tok/s", title=title)
    for r in s["steps"]:
        value = f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if n > 1 else "")
        delta = "" if r["delta"] is None else f"{r['delta']:+.4f}"
        colour = "green" if r["delta"] is not None and r["delta"] < 0 else "red"
        table.add_row(
            r["step"],
            r["change"],
            value,
            f"[{colour}]{delta}[/]" if delta else "",
            f"{r['params']:,}",
            f"{r['tokens_per_s']:,.0f}",
        )
    console = _console()
    if not console.is_terminal:  # a log file or a pipe: no wrapping at 80 columns
        console.width = max(console.width, 110)
    console.print(table)


# -- klm sweep -------------------------------------------------------------------------------


@cli.command()
@run_options
@click.option(
    "--grid",
    multiple=True,
    metavar="KEY=V1,V2",
    help="A setting and its values (split at ';' instead when a value has commas); "
    "repeatable: the sweep trains every combination.",
)
@click.option(
    "--bytes",
    "text_bytes",
    metavar="N",
    help="Budget: training text in UTF-8 bytes (500k, 20M), the same for every cell: each "
    "trains on the tokens that hold that much text, by its tokenizer and mix.",
)
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per cell.")
@click.option("--x", "x_key", metavar="KEY", help="The grid key the plot draws along.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Runs in parallel.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Sweep folder (default experiments/sweep-<keys>-<budget>-...).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace runs made with another configuration, or with other code or data.",
)
@click.option(
    "--allow-changes",
    is_flag=True,
    help="Reuse or resume runs whose code or data changed since they ran (in summary.json).",
)
@click.option("-q", "--quiet", is_flag=True, help="Only the result table.")
@click.pass_context
def sweep(ctx, grid, text_bytes, seeds, x_key, jobs, out, force, allow_changes, quiet, **params):
    """Train a grid of settings on seeds: val_bpb per cell, a table and a plot.

    \b
    klm sweep --grid tokenizer=bpe,unigram --grid vocab_size=1024,4096 --seeds 3
    klm sweep --recipe record --grid lr=1e-3,3e-3,1e-2 --time 5m --jobs 2
    klm sweep --grid mix=temperature=0,temperature=0.5,temperature=1 --corpus PATH

    Every cell trains on the same seeds and budget (default --steps {steps}; --bytes N: the
    same text for every cell, whatever its tokenizer); any klm run flag given here applies to
    every cell. A cell that cannot run (the byte tokenizer with a vocabulary size, a setting
    the configuration refuses, the same run as another cell) is skipped with its reason.
    Running the same sweep again reuses finished runs and resumes interrupted ones. Prints
    mean ± std of val_bpb per cell and saves summary.json and sweep.png (val_bpb against the
    --x key, default the last numeric grid key; one line per value of the other keys).
    """
    from kennethlm_core import sweep as sweep_mod
    from kennethlm_core.config import BUDGET_KEYS, parse_count

    registry = _registry(ctx)
    recipe, shared = overrides_from(params)
    if seeds < 1:
        raise KLMError("--seeds must be at least 1")
    if jobs < 1:
        raise KLMError("--jobs must be at least 1")
    first = shared.pop("seed", 1)
    axes = sweep_mod.parse_grid(grid, registry)
    twice = [a.key for a in axes if a.key in shared]
    if twice:
        raise KLMError(f"{twice[0]} is set by --grid and by a flag or --set; give it once")
    text_bytes = parse_count(text_bytes) if text_bytes is not None else None
    if text_bytes is not None and text_bytes < 1:
        raise KLMError(f"--bytes must be at least 1, got {text_bytes}")
    text_bytes = text_bytes or 0
    budgets = [a.key for a in axes if a.key in BUDGET_KEYS] + [
        k for k in BUDGET_KEYS if k in shared
    ]
    budgets += ["bytes"] * (text_bytes != 0)
    if len(budgets) > 1:
        raise KLMError(f"give one budget, in the grid or as a flag; got {' and '.join(budgets)}")
    if not budgets:
        shared["steps"] = STANDARD_STEPS
    x_key = sweep_mod.x_axis(axes, x_key)
    checked = {**shared, "tokens": text_bytes} if text_bytes else shared
    sweep_mod.grid_cells(axes, checked, registry, recipe)  # refused cells fail here, quietly
    folder = out or sweep_mod.default_folder(axes, shared, text_bytes)
    if folder.exists() and not folder.is_dir():
        raise KLMError(f"{folder} is a file; give --out a folder for the sweep")
    console = _console(stderr=True)
    say = (lambda message: None) if quiet else (lambda m: console.print(m, soft_wrap=True))
    say(f"sweep folder: {folder}")
    summary = sweep_mod.run_sweep(
        axes,
        shared,
        folder,
        registry=registry,
        seeds=list(range(first, first + seeds)),
        recipe=recipe,
        x=x_key,
        jobs=jobs,
        force=force,
        allow_changes=allow_changes,
        disabled=_disabled(ctx),
        say=say,
        text_bytes=text_bytes,
    )
    console = _console()
    if not console.is_terminal:  # a log file or a pipe: no wrapping at 80 columns
        console.width = max(console.width, 120)
    console.print(sweep_mod.table(summary))
    for line in sweep_mod.notes(summary):
        console.print(line, soft_wrap=True)
    click.echo(f"written to {folder / 'summary.json'} and {folder / 'sweep.png'}")


sweep.help = sweep.help.replace("{steps}", str(STANDARD_STEPS))


# -- klm plot --------------------------------------------------------------------------------


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="PNG file (default: trajectories.png in the one folder given, else here).",
)
@click.option("--title", help="Title above the panels.")
def plot(paths, out, title):
    """Plot val_bpb against tokens and time for runs or experiments (a band over seeds)."""
    from kennethlm_core.plots import plot_paths

    for path in paths:
        if not path.is_dir():
            raise KLMError(f"{path} is not a folder; give run or experiment folders")
    out = out or (paths[0] if len(paths) == 1 else Path(".")) / "trajectories.png"
    click.echo(f"written to {plot_paths(list(paths), out, title)}")


# -- klm registry ----------------------------------------------------------------------------


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
    from kennethlm_core.config import load_registry_doc, registry_path
    from kennethlm_core.ledger import RESULTS_PAGE, pages, render_files, render_page

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
    from kennethlm_core.config import registry_path
    from kennethlm_core.ledger import LEDGER_SCHEMA, reset_record

    path = registry_path()
    kept = reset_record(path, keep_as)
    click.echo(f"kept the record as [recipes.{keep_as}] ({kept['description'].split(':')[0]})")
    click.echo(
        f"[recipes.record] is the baseline recipe again; the schema-{LEDGER_SCHEMA} chain "
        f"starts there (written to {path})"
    )


# -- entry point -----------------------------------------------------------------------------


_argv: list[str] = []  # the arguments of this invocation (klm run --nproc passes them on)
_held: list[str] = []  # warnings about broken plugins, printed by flush_warnings


def _showwarning(message, category, filename, lineno, file=None, line=None):
    from kennethlm_core.plugins import PluginWarning

    if issubclass(category, PluginWarning):  # held: an error about that plugin says it all
        _held.append(str(message))
    else:
        print(f"klm: warning: {message}", file=sys.stderr)


def flush_warnings(error: str = "") -> None:
    """Print the held plugin warnings, except those about a plugin the error names."""
    for message in _held:
        plugin = message.split("'")[1] if message.count("'") >= 2 else message
        if f"'{plugin}'" not in error:
            print(f"klm: warning: {message}", file=sys.stderr)
    _held.clear()


def _plugin_failure(error: BaseException) -> str | None:
    """One line for an exception raised inside a plugin's code (a bug in the plugin, not in
    the user's input), or None when it came from elsewhere."""
    import traceback

    from kennethlm_core.plugins import _cache

    modules = {}
    for registry in _cache.values():
        for name, module in registry.pm.list_name_plugin():
            path = getattr(module, "__file__", None)
            if path and name in registry._dist and registry._dist[name][0] != "kennethlm":
                modules[str(Path(path).resolve())] = (name, registry._dist[name][0])
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        hit = modules.get(str(Path(frame.filename).resolve()))
        if hit:
            name, dist = hit
            what = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            return (
                f"plugin '{name}' ({dist}) failed: {what} (line {frame.lineno} of "
                f"{Path(frame.filename).name}); report it to its authors, or run without it: "
                f"--disable-plugin {name}"
            )
    return None


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit 2."""
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _showwarning
    logs.hold()  # a library's log line must not come before klm's one line
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
        from kennethlm_core.errors import Interrupted

        message = " ".join(str(e).splitlines())  # one line, whatever the input held
        if isinstance(e, Interrupted) and os.environ.get("RANK", "0") != "0":
            sys.exit(130)  # several processes: rank 0 says it once
        flush_warnings(message)
        print(
            f"klm: {'stopped' if isinstance(e, Interrupted) else 'error'}: {message}",
            file=sys.stderr,
        )
        sys.exit(130 if isinstance(e, Interrupted) else 2)
    except Exception as e:
        message = _plugin_failure(e)
        if message is None:
            flush_warnings()
            raise  # a bug in KennethLM itself: the traceback is for its developers
        flush_warnings(message)
        print(f"klm: error: {message}", file=sys.stderr)
        sys.exit(2)
    flush_warnings()
    if logs.summary():
        print(f"klm: note: {logs.summary()}", file=sys.stderr)
    sys.exit(0)
