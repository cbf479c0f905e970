"""``klm data``: corpus statistics and publishing a split."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from kennethlm_core.cli.base import _console, _registry, cli
from kennethlm_core.config import build_config, parse_set, resolve


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
    # imports torch: not at the top, for `klm --help`
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
    # imports torch: not at the top, for `klm --help`
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
