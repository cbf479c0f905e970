"""The tables rendered from the ledger (``klm registry render``): docs/results.md beside
registry.toml (the record log, the accepted improvements, the negative results and the
schema-1 history) and README.md's table of the current record, each between marker comments.
Text in, text out: ledger.render_files writes the pages, under registry.toml's lock.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kennethlm_core.comparison import describe_budget
from kennethlm_core.config import registry_path
from kennethlm_core.entries import LEDGER_SCHEMA, entry_schema, promotions
from kennethlm_core.errors import ConfigError
from kennethlm_core.report import SECONDARY_TASK

MARKERS = {
    "record-log": ("<!-- record-log:begin (klm registry render) -->", "<!-- record-log:end -->"),
    "results": ("<!-- results:begin (klm registry render) -->", "<!-- results:end -->"),
    "negative": (
        "<!-- negative-results:begin (klm registry render) -->",
        "<!-- negative-results:end -->",
    ),
    "ledger-v1": ("<!-- ledger-v1:begin (klm registry render) -->", "<!-- ledger-v1:end -->"),
    "current-record": (
        "<!-- current-record:begin (klm registry render) -->",
        "<!-- current-record:end -->",
    ),
}
# The results page, relative to registry.toml's folder, and the tables it must hold; README.md
# beside registry.toml gets the tables whose markers it has (the current record).
RESULTS_PAGE = "docs/results.md"
RESULTS_TABLES = ("record-log", "results", "negative", "ledger-v1")
# the results page's section of the schema-1 tables, and its anchor
OLD_SECTION = "Measured on the old split and metric (schema 1)"
OLD_ANCHOR = "#measured-on-the-old-split-and-metric-schema-1"
# how a secondary metric's keys are shown (entries.metric_key of the task's metric names)
METRIC_LABELS = {"bpb": ("bpb", ".3f"), "chrf": ("chrF++", ".1f")}


def _settings(value: dict[str, Any]) -> str:
    # threads changes the speed of a run, not its result
    return ", ".join(f"{k}={v}" for k, v in value.items() if k != "threads")


def _budget(exp: dict[str, Any]) -> str:
    text = describe_budget(exp.get("budget", {}))
    if exp.get("branch_at") is not None:
        text += f", branched at {exp['branch_at']:g}"
    if exp.get("load_avg_start"):  # a time budget: how busy the machine was at the start
        text += f", load {exp['load_avg_start'][0]:.1f}"
    return text


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def secondary_cell(exp: dict[str, Any], task: str) -> str:
    """'bpb 2.912→2.850, chrF++ 12.3→13.1' from the entry's table for ``task``; '-' without."""
    values = exp.get(task)
    if not values:
        return "-"
    parts = []
    for key in [k[: -len("_baseline")] for k in values if k.endswith("_baseline")]:
        label, fmt = METRIC_LABELS.get(key, (key, ".4g"))
        base, cand = values[f"{key}_baseline"], values[f"{key}_candidate"]
        parts.append(f"{label} {base:{fmt}}→{cand:{fmt}}")
    return ", ".join(parts)


def record_log(exps: list[dict[str, Any]], schema: int = LEDGER_SCHEMA) -> str:
    """The record's history on one ledger schema: the baseline, then each promotion of that
    schema with its comparison."""
    steps = promotions(exps, schema)
    if not steps:
        return f"No promotions on ledger schema {schema} yet."
    # the held-back test split, where promotions scored it (schema 1 never did)
    tested = any(e.get("test_bpb") for e in steps)
    head = "| record | change | val_bpb |" + (" test_bpb |" if tested else "")
    lines = [head + " Δ | 95% CI | p | budget | date |", "|---" * (8 + tested) + "|"]
    first = steps[0]

    def test(e: dict[str, Any], arm: str) -> str:
        value = (e.get("test_bpb") or {}).get(f"{arm}_mean")
        return (f" {value:.4f} |" if value is not None else "  |") if tested else ""

    r0 = f"| r0 | the baseline recipe | {first['baseline_mean']:.4f} |{test(first, 'baseline')}"
    lines.append(r0 + " | | | | |")
    for n, e in enumerate(steps, 1):
        lo, hi = e["delta_ci"]
        lines.append(
            f"| r{n} | `{_cell(e['candidate'])}` | {e['candidate_mean']:.4f} |"
            f"{test(e, 'candidate')} {e['delta']:+.4f} | [{lo:+.4f}, {hi:+.4f}] "
            f"| {e['p']:.2g} | {_budget(e)} | {e['date']} |"
        )
    return "\n".join(lines)


def current_record(exps: list[dict[str, Any]], schema: int = LEDGER_SCHEMA) -> str:
    """The record now, beside the baseline it started from: a two-row table for README.md."""
    steps = promotions(exps, schema)
    if not steps:
        return f"The baseline recipe: no promotions on ledger schema {schema} yet."
    first, last = steps[0], steps[-1]
    n = len(steps)

    def test(e: dict[str, Any], arm: str) -> str:
        value = (e.get("test_bpb") or {}).get(f"{arm}_mean")
        return f"{value:.4f}" if value is not None else "-"

    lo, hi = last["delta_ci"]
    measured = [_budget(last), f"{len(last['seeds'])} seeds", _settings(last["shared_settings"])]
    lines = [
        f"| record | val_bpb | test_bpb | change (on r{n - 1}) | Δ | 95% CI | measured | date |",
        "|---" * 8 + "|",
        f"| r0 | {first['baseline_mean']:.4f} | {test(first, 'baseline')} | the baseline recipe "
        "| | | | |",
        f"| **r{n}** | **{last['candidate_mean']:.4f}** | {test(last, 'candidate')} "
        f"| `{_cell(last['candidate'])}` | {last['delta']:+.4f} | [{lo:+.4f}, {hi:+.4f}] "
        f"| {_cell(', '.join(m for m in measured if m))} | {last['date']} |",
    ]
    return "\n".join(lines)


def _generations(exps: list[dict[str, Any]]) -> dict[int, int]:
    """id(entry) -> which record (r0, r1, ...) of its schema's chain it was measured against:
    the promotions of its schema made before it was appended (a promotion may come after later
    entries: promoted_at says when)."""
    made: dict[int, list[int]] = {}
    for i, e in enumerate(exps):
        if e.get("promoted"):
            made.setdefault(entry_schema(e), []).append(e.get("promoted_at", i + 1))
    return {id(e): sum(at <= i for at in made.get(entry_schema(e), [])) for i, e in enumerate(exps)}


def _verdicts(exps: list[dict[str, Any]], *verdicts: str) -> list[dict[str, Any]]:
    return [e for e in exps if e.get("verdict") in verdicts]


def _result_tables(
    exps: list[dict[str, Any]], generation: dict[int, int], secondary: str | None
) -> tuple[str, str]:
    """(accepted, negative) markdown tables of these entries; ``secondary`` names the task
    whose non-deciding metric gets a column."""
    accepted = _verdicts(exps, "better")
    negative = _verdicts(exps, "worse", "inconclusive")

    def row(e: dict[str, Any], *extra: str) -> str:
        lo, hi = e["delta_ci"]
        base = f"`{_cell(e['baseline'])}`"
        cells = [
            f"`{_cell(e['candidate'])}`",
            base + f" r{generation[id(e)]}" if e["baseline"] == "record" else base,
            _cell(_settings(e.get("shared_settings", {})) or "-"),
            _budget(e),
            str(len(e["seeds"])),
            e["metric"],
            *extra,
            f"{e['delta']:+.4f}",
            f"[{lo:+.4f}, {hi:+.4f}]",
            f"{e['p']:.2g}",
        ]
        if secondary:
            cells.append(_cell(secondary_cell(e, secondary)))
        return "| " + " | ".join(cells) + " |"

    head = "| candidate | baseline | settings | budget | seeds | metric |"
    tail = " Δ | 95% CI | p |" + (f" {secondary} (not deciding) |" if secondary else "")
    width = 9 + bool(secondary)
    if accepted:
        lines = [head + tail + " date | commit |", "|---" * (width + 2) + "|"]
        lines += [row(e) + f" {e['date']} | {e['commit']} |" for e in accepted]
        results = "\n".join(lines)
    else:
        results = "No accepted improvements yet."
    if negative:
        lines = [head + " baseline | candidate |" + tail + " verdict |", "|---" * (width + 3) + "|"]
        for e in negative:
            arms = [
                f"{e[f'{a}_mean']:.4f} ± {e[f'{a}_std']:.4f}" for a in ("baseline", "candidate")
            ]
            lines.append(row(e, *arms) + f" {e['verdict']} |")
        negatives = "\n".join(lines)
    else:
        negatives = "No negative results yet."
    return results, negatives


def render_tables(doc: dict[str, Any]) -> dict[str, str]:
    """{'record-log', 'results', 'negative', 'ledger-v1', 'current-record': markdown} from the
    ledger: all but 'ledger-v1' of the current schema's entries, 'ledger-v1' of schema 1's
    (history, apart)."""
    exps = list(doc.get("experiments", []))
    newer = sorted({entry_schema(e) for e in exps} - set(range(1, LEDGER_SCHEMA + 1)))
    if newer:
        raise ConfigError(
            f"the ledger has entries of schema {newer[0]}; this klm knows up to {LEDGER_SCHEMA}"
        )
    generation = _generations(exps)
    current = [e for e in exps if entry_schema(e) == LEDGER_SCHEMA]
    old = [e for e in exps if entry_schema(e) == 1]
    if current:
        results, negative = _result_tables(current, generation, SECONDARY_TASK)
        tables = {"record-log": record_log(exps), "results": results, "negative": negative}
        tables["current-record"] = current_record(exps)
    else:
        none = (
            f"No entries on ledger schema {LEDGER_SCHEMA} (document-level splits, strided bits "
            "per byte) yet"
        )
        old_steps = len(promotions(exps, 1))
        where = {
            "record-log": f"record chain (r0 to r{old_steps}) is" if old_steps else "",
            "results": "accepted improvements are" if _verdicts(old, "better") else "",
            "negative": "negative results are" if _verdicts(old, "worse", "inconclusive") else "",
        }
        tables = {
            key: none
            + (f"; the schema-1 {what} under [{OLD_SECTION}]({OLD_ANCHOR})." if what else ".")
            for key, what in where.items()
        }
        tables["current-record"] = none + "."
    if old:
        secondary = SECONDARY_TASK if any(SECONDARY_TASK in e for e in old) else None
        results, negative = _result_tables(old, generation, secondary)
        tables["ledger-v1"] = "\n\n".join(
            [
                "### Old record chain (schema 1)",
                record_log(exps, 1),
                "### Old accepted improvements (schema 1)",
                results,
                "### Old negative results (schema 1)",
                negative,
            ]
        )
    else:
        tables["ledger-v1"] = "No schema-1 entries."
    return tables


def page_tables(text: str) -> tuple[str, ...]:
    """The tables whose begin markers are in ``text``."""
    return tuple(key for key, (begin, _) in MARKERS.items() if begin in text)


def render_page(
    text: str, doc: dict[str, Any], tables: tuple[str, ...] | None = None, name: str = "the page"
) -> str:
    """``text`` with each of ``tables`` (default: those whose markers it has) replaced by the
    ledger's, between its markers; a page without the markers of one of them is refused."""
    tables = page_tables(text) if tables is None else tables
    if not tables:
        raise ConfigError(f"{name} has no klm registry render markers ('<!-- results:begin ...')")
    rendered = render_tables(doc)
    for key in tables:
        begin, end = MARKERS[key]
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ConfigError(f"{name} has no '{begin}' ... '{end}' markers for the {key} table")
        text = pattern.sub(lambda m, k=key, b=begin, e=end: f"{b}\n{rendered[k]}\n{e}", text)
    return text


def pages(registry: Path | None = None) -> list[tuple[Path, tuple[str, ...] | None]]:
    """The pages rendered from registry.toml, with the tables each must hold (None: those it
    has markers for): the results page beside it, and README.md when it has markers."""
    root = Path(registry or registry_path()).parent
    found: list[tuple[Path, tuple[str, ...] | None]] = []
    if (root / RESULTS_PAGE).exists():
        found.append((root / RESULTS_PAGE, RESULTS_TABLES))
    readme = root / "README.md"
    if readme.exists() and page_tables(readme.read_text(encoding="utf-8")):
        found.append((readme, None))
    return found
