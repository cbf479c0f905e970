"""``klm run``, ``klm sample``, ``klm export`` and ``klm eval``: one run, and what is done
with it."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kennethlm_core import provenance
from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.cli import base
from kennethlm_core.cli.base import _console, _registry, cli, flush_warnings
from kennethlm_core.cli.options import (
    overrides_from,
    run_options,
)
from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import KLMError


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
    from kennethlm_core import distributed  # imports torch: not at the top, for `klm --help`
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
        # imports torch: not at the top, for `klm --help`
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
        summary["size"] = size.to_dict()
        atomic_write_json(out / "summary.json", summary)
    if dist.is_main:
        _print_summary(summary, out)


def _launch_args(out: Path) -> list[str]:
    """This command's arguments for the processes torchrun starts: without --nproc, and with
    the run folder chosen here."""
    args, skip = [], False
    for arg in base.argv():
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
    # imports torch: not at the top, for `klm --help`
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
    console.print(f"run files: {out}", soft_wrap=True)  # a path to copy: never wrapped


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
    import torch  # not at the top, for `klm --help`

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
    try:  # transformers is an extra, and heavy: imported here, not for `klm --help`
        import transformers  # noqa: F401 (see above)
    except ImportError:
        raise KLMError("klm export needs transformers: pip install 'kennethlm[hf]'") from None
    from kennethlm_core.export import export_run, push  # imports torch and transformers, as above

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
    from kennethlm_core.evaluate import run_tasks  # imports torch: not at the top, for `klm --help`

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
