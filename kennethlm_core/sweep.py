"""Sweeps: a grid of ``klm run`` settings, every cell trained on the same seeds and budget.

``klm sweep --grid tokenizer=bpe,unigram --grid vocab_size=1024,4096 --seeds 3`` trains the
four cells of that grid on seeds 1 to 3. A cell is the recipe, then the settings shared by the
whole sweep (``--corpus``, ``--set ...``, the budget), then the cell's own values. A cell that
cannot run is skipped with its reason and the rest go on: one the configuration refuses (the
byte tokenizer with a vocabulary size), a mix the corpus cannot give, or one that would train
the very same thing as a cell before it (char keeps every character seen, so vocabulary caps
above that are all the same run). A run that fails in training (a loss that became
non-finite at a high learning rate) is a result of the sweep too: its cell counts fewer seeds
and says why.

A sweep folder::

    <cell>/seed-<s>/    a complete klm run folder per cell and seed (tokenizer-bpe-vocab-size-1024)
    logs/               the output of runs trained in subprocesses (jobs > 1)
    summary.json        per cell: its values, val_bpb per seed, mean, std, bytes per token, ...
    sweep.png           val_bpb against the swept value, one line per series, ±1 sd over seeds
    sweep-domains.png   val_bpb per cell and scored domain, a heatmap (more than one domain)

Running the same sweep again reuses finished runs and resumes interrupted ones, with the
machinery of ``klm compare``: jobs.run_points, which ``klm ladder`` trains its steps
with too. Its tables (rich, Markdown, per domain) are in sweeptable.
"""

from __future__ import annotations

import difflib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from kennethlm_core import runlock
from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.config import (
    BUDGET_KEYS,
    RunConfig,
    build_config,
    coerce,
    field_names,
    resolve,
)
from kennethlm_core.data import DOC_START, END, START, mix_weights
from kennethlm_core.errors import ConfigError, KLMError
from kennethlm_core.experiment import describe_budget, folder_name, mean_std
from kennethlm_core.jobs import prepare_points, provenance_overrides, run_points, with_resolved_mix
from kennethlm_core.plots import plot_sweep, plot_sweep_domains
from kennethlm_core.provenance import git_commit
from kennethlm_core.sweeptable import domains, notes, table  # noqa: F401  (notes, table: moved)
from kennethlm_core.train import preflight

# -- the grid --------------------------------------------------------------------------------


@dataclass
class Axis:
    """One --grid KEY=V1,V2: a setting and its values (typed), with the text of each."""

    key: str
    values: list[Any]
    texts: list[str]

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.values)


def parse_grid(items: list[str] | tuple[str, ...], registry: Any) -> list[Axis]:
    """['tokenizer=bpe,unigram', 'vocab_size=1024,4096'] -> two axes, values typed like the
    setting. Values are split at commas, or at semicolons when the text has one (for values
    with commas of their own: --grid "mix=news=1,legal=1;news=1")."""
    if not items:
        raise ConfigError("a sweep needs a grid: give --grid KEY=V1,V2 (e.g. --grid lr=1e-3,3e-3)")
    options = {k: v for c in registry.all() for k, v in c.options.items()}
    types = {**{k: getattr(RunConfig(), k) for k in field_names()}, **options}
    axes: list[Axis] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        texts = [t.strip() for t in text.split(";" if ";" in text else ",")]
        if not sep or not key or not all(texts):
            raise ConfigError(
                f"--grid expects KEY=V1,V2,... with no empty value, got {item!r} "
                "(for example --grid vocab_size=1024,4096)"
            )
        if key == "seed":
            raise ConfigError("--grid seed: the seeds are the sweep's own; give --seeds N")
        if key not in types:
            raise ConfigError(_not_a_setting(key, sorted(types)))
        if key in (a.key for a in axes):
            raise ConfigError(f"--grid gives {key} twice; give all its values in one --grid")
        try:
            values = [coerce(key, t, types[key]) for t in texts]
        except ConfigError as e:
            raise ConfigError(f"--grid {key}: {e}") from None
        if len({json.dumps(v) for v in values}) < len(values):  # 1e-3 and 0.001 too
            raise ConfigError(f"--grid {key} lists a value twice: {text.strip()}")
        axes.append(Axis(key, values, texts))
    return axes


def _not_a_setting(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return (
        f"--grid {key}: '{key}' is not a setting of klm run{hint} (a grid key is a setting, "
        "as --set takes: klm run --help and klm list-plugins list them)"
    )


@dataclass
class Cell:
    values: dict[str, Any]  # the grid's values for this cell
    texts: dict[str, str]  # the same, as given
    cfg: RunConfig | None = None  # resolved, before the seed; None when skipped
    reason: str = ""  # why it is skipped
    prepared: Any = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.texts.items())

    @property
    def name(self) -> str:
        return folder_name([f"{k} {v}" for k, v in self.texts.items()])


def grid_cells(
    axes: list[Axis], shared: dict[str, Any], registry: Any, recipe: str | None = None
) -> list[Cell]:
    """Every cell of the grid, its configuration checked as klm run checks one before it reads
    any data: a cell the configuration refuses is skipped with that reason. A grid whose every
    cell is refused is an error."""
    cells = []
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        values = {a.key: a.values[i] for a, i in zip(axes, combo, strict=True)}
        texts = {a.key: a.texts[i] for a, i in zip(axes, combo, strict=True)}
        cell = Cell(values, texts)
        try:
            cfg = resolve(build_config(recipe, {**shared, **values}), registry)
            if cfg.size == "auto":
                raise ConfigError(
                    "--size auto chooses a shape for one klm run; a sweep trains fixed shapes"
                )
            preflight(cfg, registry)
            cell.cfg = cfg
        except KLMError as e:
            cell.reason = " ".join(str(e).split())
        cells.append(cell)
    names = [c.name for c in cells]
    if len(set(names)) < len(names):
        raise ConfigError("two cells of the grid would share a folder; give plainer values")
    _all_refused(cells)
    return cells


def prepare_cells(
    cells: list[Cell], registry: Any, say: Callable[[str], None], text_bytes: int = 0
) -> None:
    """Prepare the data of every runnable cell, then skip those the data refuses: a mix the
    corpus cannot give, or a cell that trains the same thing as one before it (a tokenizer
    whose vocabulary stops short of the size asked). A mix is written as the weights a run
    records (with_resolved_mix). With ``text_bytes`` each cell's budget becomes the tokens
    that hold that much training text (tokens_for_bytes)."""
    runnable = [c for c in cells if c.cfg is not None]
    for cell, data in zip(
        runnable, prepare_points([c.cfg for c in runnable], registry, say), strict=True
    ):
        cell.prepared = data
        try:
            cell.cfg = with_resolved_mix(cell.cfg, data)
        except KLMError as e:
            cell.cfg, cell.reason = None, " ".join(str(e).split())
            continue
        if text_bytes:
            cell.cfg = cell.cfg.replace(tokens=tokens_for_bytes(text_bytes, cell.cfg, data))
    _skip_duplicates(cells)
    _all_refused(cells)


def _all_refused(cells: list[Cell]) -> None:
    if not any(c.cfg is not None for c in cells):
        first = cells[0]
        raise ConfigError(f"every cell of the grid is refused, e.g. {first.label}: {first.reason}")


def _skip_duplicates(cells: list[Cell]) -> None:
    """A cell whose run would be another cell's run: the same settings but vocab_size, and a
    tokenizer that came out the same (char keeps every character seen, whatever the cap above
    that)."""
    seen: dict[tuple, Cell] = {}
    for cell in cells:
        if cell.cfg is None:
            continue
        rest = {k: v for k, v in cell.cfg.to_dict().items() if k != "vocab_size"}
        key = (json.dumps(rest, sort_keys=True), cell.prepared.tokenizer.to_json())
        if key in seen:
            tok = cell.prepared.tokenizer
            cell.reason = (
                f"the same run as {seen[key].label}: {cell.cfg.tokenizer} comes out the same "
                f"on this corpus, {tok.vocab_size:,} tokens"
            )
            cell.cfg = None
        else:
            seen[key] = cell


def tokens_for_bytes(text_bytes: int, cfg: RunConfig, data: Any) -> int:
    """The training tokens that hold ``text_bytes`` bytes of text on average: windows come
    from domain d with the mix's weight w_d and carry bytes_d / tokens_d bytes a token there
    (document tokens counted as the windows count them), so a token is worth sum w_d bytes_d
    / tokens_d bytes."""
    split = data.train
    nbytes = split.domain_bytes()
    weights = np.array(list(mix_weights(cfg.mix, split, cfg.block_size).values()))
    per_token = float((weights * nbytes / np.maximum(1, split.domain_tokens())).sum())
    return max(1, round(text_bytes / per_token))


def bytes_per_token(split: Any) -> float:
    """UTF-8 bytes per token of the chunks of a tokenized split (a document's first chunk
    holds its document token, which stands for no text: not counted)."""
    rows = split.rows
    tokens = int(
        (rows[:, END] - rows[:, START]).sum() - (rows[:, START] == rows[:, DOC_START]).sum()
    )
    return split.n_bytes / max(1, tokens)


def scored_bytes(split: Any) -> dict[str, int]:
    """UTF-8 bytes per domain in a slice of a split: how much text each domain's figure is."""
    return {d: int(n) for d, n in zip(split.domains, split.domain_bytes(), strict=True) if n}


def x_axis(axes: list[Axis], x: str | None = None) -> str:
    """The key the plot draws along: ``x`` if given, else the last numeric grid key, else the
    last key."""
    keys = [a.key for a in axes]
    if x is not None:
        x = x.replace("-", "_")
        if x not in keys:
            raise ConfigError(f"--x {x} is not a grid key; grid keys: {', '.join(keys)}")
        return x
    numeric = [a.key for a in axes if a.numeric]
    return (numeric or keys)[-1]


def default_folder(
    axes: list[Axis], shared: dict[str, Any], text_bytes: int = 0, root: Path = Path("experiments")
) -> Path:
    """experiments/sweep-<keys>-<budget>[-<shared settings>], named like klm compare's."""
    parts = ["sweep", *(a.key for a in axes), budget_text(shared, text_bytes)]
    parts += [f"{k} {v}" for k, v in sorted(shared.items()) if k not in BUDGET_KEYS]
    return root / folder_name(parts)


# -- a whole sweep ---------------------------------------------------------------------------


def run_sweep(
    axes: list[Axis],
    shared: dict[str, Any],
    folder: Path,
    *,
    registry: Any,
    seeds: list[int],
    recipe: str | None = None,
    x: str | None = None,
    jobs: int = 1,
    force: bool = False,
    allow_changes: bool = False,
    disabled: list[str] | None = None,
    say: Callable[[str], None] = lambda msg: None,
    text_bytes: int = 0,
) -> dict[str, Any]:
    """Train (or reuse) every runnable cell on every seed, holding the folder's lock; write
    summary.json and sweep.png, and return the summary. ``text_bytes``: the budget is that
    much training text, in each cell's tokens (tokens_for_bytes)."""
    budgets = [k for k in BUDGET_KEYS if k in shared] + [
        a.key for a in axes if a.key in BUDGET_KEYS
    ]
    if len(budgets) + bool(text_bytes) != 1:
        raise ConfigError("a sweep needs one budget: --steps, --tokens, --time or --bytes")
    x = x_axis(axes, x)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; give --out a folder for the sweep")
    with runlock.hold(folder, "running this sweep"):
        cells = grid_cells(
            axes, {**shared, "tokens": text_bytes} if text_bytes else shared, registry, recipe
        )
        prepare_cells(cells, registry, say, text_bytes)
        for cell in cells:
            if cell.cfg is None:
                say(f"skipped {cell.label}: {cell.reason}")
        points = [(c.name, c.cfg) for c in cells if c.cfg is not None]
        plan, failed = run_points(
            points,
            folder,
            seeds=seeds,
            registry=registry,
            jobs=jobs,
            force=force,
            allow_changes=allow_changes,
            disabled=disabled,
            say=say,
            again="klm sweep",
            keep_going=True,
            vocab_size=next(c for c in cells if c.cfg is not None).prepared.tokenizer.vocab_size,
        )
        summary = summarise(axes, x, cells, plan, failed, shared, seeds, recipe, folder)
        if text_bytes:
            summary["budget"] = {"bytes": text_bytes}
        summary["budget_text"] = budget_text(shared, text_bytes)
        summary["provenance_overrides"] = provenance_overrides(plan)
        atomic_write_json(folder / "summary.json", summary)
        plot_sweep(summary, folder / "sweep.png")
        if len(domains(summary)) > 1:
            plot_sweep_domains(summary, folder / "sweep-domains.png")
    return summary


def summarise(axes, x, cells, plan, failed, shared, seeds, recipe, folder) -> dict[str, Any]:
    rows, machine, domain_bytes = [], None, {}
    for cell in cells:
        row: dict[str, Any] = {"cell": cell.values, "texts": cell.texts, "label": cell.label}
        row["folder"] = cell.name
        if cell.cfg is None:
            rows.append({**row, "status": "skipped", "reason": cell.reason, "seeds_done": 0})
            continue
        jobs = plan[cell.name]
        done = [j for j in jobs if str(j.out) not in failed]
        runs = [json.loads((j.out / "summary.json").read_text()) for j in done]
        values = [r["val_bpb"] for r in runs]
        machine = machine or (runs[0]["device"] if runs else None)
        scored = cell.prepared.val.head(cell.cfg.final_eval_bytes)
        domain_bytes = domain_bytes or scored_bytes(scored)
        mean, std = mean_std(values) if values else (None, None)
        by_domain = [r["val_bpb_by_domain"] for r in runs]
        row.update(
            status="done" if len(done) == len(jobs) else ("partial" if done else "failed"),
            seeds_done=len(done),
            values=values,
            mean=mean,
            std=std,
            vocab_size=cell.prepared.tokenizer.vocab_size,
            bytes_per_token=bytes_per_token(scored),
            params=runs[0]["params"] if runs else None,
            tokens_per_s=mean_std([r["tokens_per_s"] for r in runs])[0] if runs else None,
            train_time_s=mean_std([r["train_time_s"] for r in runs])[0] if runs else None,
            # the mean over seeds: under a time budget every seed reaches its own count
            tokens_seen=round(mean_std([r["tokens_seen"] for r in runs])[0]) if runs else None,
            by_domain={d: mean_std([b[d] for b in by_domain]) for d in by_domain[0]}
            if runs
            else {},
            runs=[str(j.out) for j in done],
            failures={str(j.seed): failed[str(j.out)] for j in jobs if str(j.out) in failed},
        )
        rows.append(row)
    budget = {k: v for k, v in shared.items() if k in BUDGET_KEYS}
    return {
        "name": folder.name,
        "date": date.today().isoformat(),
        "commit": git_commit(),
        "machine": machine,
        "recipe": recipe,
        "grid": {a.key: a.texts for a in axes},
        "x": x,
        "shared_settings": {k: v for k, v in shared.items() if k not in BUDGET_KEYS},
        "budget": budget,
        "seeds": list(seeds),
        "cells": rows,
        "skipped": sum(r["status"] == "skipped" for r in rows),
        "domain_bytes": domain_bytes,
    }


def budget_text(shared: dict[str, Any], text_bytes: int = 0) -> str:
    """The budget in words, as klm compare names it, or the bytes of text."""
    budget = {k: v for k, v in shared.items() if k in BUDGET_KEYS}
    if text_bytes:
        return f"{text_bytes:,} bytes of text"
    return describe_budget(budget) if budget else "the budget of each cell"
