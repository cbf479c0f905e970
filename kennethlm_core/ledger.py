"""registry.toml: recipes and the ledger of experiments, as the rest of KennethLM reads them.

The ledger is written with tomlkit, which keeps the file's comments, order and layout: an
experiment is appended as one ``[[experiments]]`` table, a promotion edits ``[recipes.record]``
in place, and every write replaces the file atomically. The results page of the
documentation (``docs/results.md`` beside registry.toml) is generated from the ledger (``klm
registry render``), between marker comments, and so is README.md's table of the current record.

Every read-modify-write of registry.toml (an append, a promotion, a reset of the record, and
the render of the pages that follows them) holds a file lock, ``registry.toml.lock`` beside it, so
two ``klm compare --record`` at once never lose an entry.

The ledger has a schema version: ``ledger_schema`` at the top of the file is the schema new
entries are written in, and every entry says its own (``schema``; none means 1).

    1  the old split and metric: validation chunks cut from the same documents as the training
       chunks, bits per byte over non-overlapping windows. Superseded; kept as history.
    2  document-level train/validation/test splits, strided bits per byte.

The current tables show entries of the current schema only (the record log too: its r0,
r1, ... count promotions of that schema); schema-1 entries are shown apart, as history.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kennethlm_core.config import RunConfig, registry_path
from kennethlm_core.errors import ConfigError

VERDICT_STATUS = {"better": "accepted", "worse": "negative", "inconclusive": "negative"}
# The schema new ledger entries are written in (see the module's docstring).
LEDGER_SCHEMA = 2
# How long a write waits for another klm holding registry.toml's lock.
LOCK_TIMEOUT_S = 120.0


def entry_schema(exp: dict[str, Any]) -> int:
    """The schema an entry was measured under: its ``schema``, 1 when it has none."""
    return int(exp.get("schema", 1))


def lock_path(path: Path | None = None) -> Path:
    path = Path(path or registry_path())
    return path.with_name(path.name + ".lock")


@contextmanager
def ledger_lock(path: Path | None = None) -> Iterator[None]:
    """Hold registry.toml's lock (``registry.toml.lock`` beside it) for a read-modify-write.

    Reentrant within a process (one lock object per file), so ``klm compare --record`` holds it
    across the append, the promotion and the render of the pages, and each of those takes it again.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(path).resolve()), is_singleton=True)
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise ConfigError(
            f"another klm has held {lock.lock_file} for {LOCK_TIMEOUT_S:g}s; try again when it "
            "is done"
        ) from None
    try:
        yield
    finally:
        lock.release()


def component_status(doc: dict[str, Any], slot: str, name: str) -> str:
    """'record', 'baseline', the latest ledger verdict on it, or 'untested'."""
    defaults = RunConfig().to_dict()
    recipes = doc.get("recipes", {})
    for recipe in ("record", "baseline"):
        if recipe in recipes and recipes[recipe].get(slot, defaults.get(slot)) == name:
            return recipe
    for exp in reversed(doc.get("experiments", [])):
        if exp.get("candidate_settings", {}).get(slot) == name:
            return VERDICT_STATUS.get(exp.get("verdict", ""), exp.get("verdict", "?"))
    return "untested" if slot in defaults else "-"


# -- the ledger ------------------------------------------------------------------------------


def _num(x: float) -> float:
    """Six significant digits: enough for any difference the protocol can detect."""
    return float(f"{x:.6g}")


def ledger_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """The [[experiments]] entry of a comparison's summary.json (flat, TOML-friendly), in the
    current schema. With a time budget it keeps the load average when the comparison started
    (``load_avg_start``: 1, 5 and 15 minutes); with a secondary metric, its per-arm means and
    deltas under the task's name (``summarization = {bpb_baseline = ..., ...}``)."""
    arms = summary["arms"]
    entry: dict[str, Any] = {
        "schema": LEDGER_SCHEMA,
        "name": summary["name"],
        "date": summary["date"],
        "commit": summary["commit"],
        "machine": summary["machine"],
        "baseline": summary["baseline"],
        "candidate": summary["candidate"],
        "candidate_settings": summary["candidate_settings"],
        "shared_settings": summary["shared_settings"],
        "budget": summary["budget"],
        "seeds": summary["seeds"],
        "metric": summary["metric"],
        "higher_is_better": summary["higher_is_better"],
    }
    for key in ("branch_at", "init_from"):
        if summary.get(key) is not None:
            entry[key] = summary[key]
    if "time" in summary["budget"] and summary.get("load_avg_start"):
        entry["load_avg_start"] = [round(v, 2) for v in summary["load_avg_start"]]
    for arm in ("baseline", "candidate"):
        entry[f"{arm}_values"] = [_num(v) for v in arms[arm]["values"]]
        entry[f"{arm}_mean"] = _num(arms[arm]["mean"])
        entry[f"{arm}_std"] = _num(arms[arm]["std"])
        entry[f"{arm}_tokens_per_s"] = round(arms[arm]["tokens_per_s"])
    entry.update(
        delta=_num(summary["delta"]),
        delta_ci=[_num(v) for v in summary["delta_ci"]],
        p=_num(summary["p"]),
        min_effect=summary["min_effect"],
        alpha=summary["alpha"],
        verdict=summary["verdict"],
    )
    if summary.get("secondary"):
        entry[summary["secondary"]["task"]] = secondary_entry(summary["secondary"])
    return entry


def metric_key(metric: str) -> str:
    """A task metric's name as a bare TOML key: 'chrf++' -> 'chrf'."""
    return re.sub(r"[^a-z0-9_]+", "", metric.lower()) or "value"


def secondary_entry(secondary: dict[str, Any]) -> dict[str, Any]:
    """The ledger's inline table for a secondary metric (experiment.secondary_values): per
    metric the mean of each arm over its runs and the candidate's delta, and the examples
    scored per run."""
    out: dict[str, Any] = {}
    for metric, values in secondary["metrics"].items():
        key = metric_key(metric)
        base, cand = (sum(values[a]) / len(values[a]) for a in ("baseline", "candidate"))
        out[f"{key}_baseline"] = _num(base)
        out[f"{key}_candidate"] = _num(cand)
        out[f"{key}_delta"] = _num(cand - base)
    out["n"] = secondary["n"]
    return out


def _read(path: Path):
    import tomlkit

    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return tomlkit.document()
    except Exception as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); fix or restore it") from None


def _write(path: Path, doc) -> None:
    import tomlkit

    from kennethlm_core.checkpoint import atomic_write_text

    atomic_write_text(path, tomlkit.dumps(doc))


def _toml(value: Any):
    """Dicts become inline tables, so an entry stays one block under [[experiments]]."""
    import tomlkit

    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update({k: _toml(v) for k, v in value.items()})
        return table
    return value


def _find(doc, entry: dict[str, Any]):
    """The ledger's table for this result (same runs, same values), or None. The recording
    commit is not compared: reused runs recorded again from a later commit are the same result."""
    same = ("name", "baseline_values", "candidate_values", "verdict")
    for exp in doc.get("experiments", []):
        if all(exp.get(k) == entry[k] for k in same):
            return exp
    return None


def _check_schema(doc, path: Path) -> None:
    """Refuse a ledger written by a newer klm; give one without ``ledger_schema`` the current."""
    import tomlkit

    found = doc.get("ledger_schema", 1)
    if found > LEDGER_SCHEMA:
        raise ConfigError(
            f"{path} is ledger schema {found}; this klm writes schema {LEDGER_SCHEMA}: update it"
        )
    if "ledger_schema" not in doc:
        item = tomlkit.item(LEDGER_SCHEMA)
        item.comment("the schema of new [[experiments]] entries (ledger.py)")
        doc.add("ledger_schema", item)
    elif found < LEDGER_SCHEMA:
        doc["ledger_schema"] = LEDGER_SCHEMA


def append_experiment(entry: dict[str, Any], path: Path | None = None) -> bool:
    """Add an [[experiments]] table at the end of registry.toml; the rest stays as it was.
    False, and nothing written, when the same result is in the ledger already."""
    import tomlkit

    path = path or registry_path()
    with ledger_lock(path):
        doc = _read(path)
        if _find(doc, entry) is not None:
            return False
        _check_schema(doc, path)
        if "experiments" not in doc:
            doc.add(tomlkit.nl())
            doc.add("experiments", tomlkit.aot())
        table = tomlkit.table()
        for key, value in entry.items():
            table.add(key, _toml(value))
        doc["experiments"].append(table)
        _write(path, doc)
    return True


def promote(
    entry: dict[str, Any],
    candidate_config: dict[str, Any],
    path: Path | None = None,
    test: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make a `better` candidate the `record` recipe; the old record goes into its ledger entry.
    The entry must be in the ledger, of the current schema, and measured against the record as
    it is: no comparison of its schema promoted after it (promotions of another schema belong to
    another record chain). Settings the candidate's configuration no longer has (an option of a
    component it replaced) leave the recipe. ``test`` (the arms' bits per byte on the held-back
    test split, see test_scores) is written into the entry as ``test_bpb``: reported, never
    deciding. Returns the new record.
    """
    path = path or registry_path()
    with ledger_lock(path):
        return _promote(entry, candidate_config, path, test)


def test_scores(
    summary: dict[str, Any], score: Any, arms: tuple[str, ...] = ("baseline", "candidate")
) -> dict[str, Any]:
    """Arms of a comparison on the test split: per-seed values and means.

    ``score(run_dir) -> float`` scores one run (the command line passes the bpb task on the
    test split, whose result each run folder caches in eval.json)."""
    out: dict[str, Any] = {}
    for arm in arms:
        values = [_num(score(Path(run))) for run in summary["arms"][arm]["runs"]]
        out[f"{arm}_values"] = values
        out[f"{arm}_mean"] = _num(sum(values) / len(values))
    return out


def _promote(entry: dict[str, Any], candidate_config: dict[str, Any], path: Path, test=None):
    import tomlkit

    doc = _read(path)
    record = doc.get("recipes", {}).get("record")
    if record is None:
        raise ConfigError(f"{path} has no [recipes.record] to replace")
    last = _find(doc, entry)
    if last is None or last.get("verdict") != "better" or last.get("baseline") != "record":
        raise ConfigError(
            "only a recorded comparison against record with the verdict 'better' is promoted"
        )
    schema = entry_schema(last)
    if schema != LEDGER_SCHEMA:
        raise ConfigError(
            f"{entry['name']} was measured under ledger schema {schema} (the old split and "
            f"metric), not {LEDGER_SCHEMA}; compare it again"
        )
    later = doc["experiments"][doc["experiments"].index(last) + 1 :]
    promoted_later = any(exp.get("promoted") and entry_schema(exp) == schema for exp in later)
    if last.get("promoted") or promoted_later:
        raise ConfigError(
            f"the record changed after {entry['name']} was measured; compare against it again"
        )
    previous = tomlkit.table()
    previous.update(record.unwrap())
    for key in [k for k in record if k != "description" and k not in candidate_config]:
        del record[key]
    for key, value in entry["candidate_settings"].items():
        record[key] = _toml(value)
    record["description"] = (
        f"the best recipe so far: {entry['candidate']} on top of the previous record "
        f"(experiment {entry['name']}, {entry['date']})"
    )
    last["promoted"] = True
    last["promoted_at"] = len(doc["experiments"])  # entries appended later measure the new record
    last["previous_record"] = previous
    if test:
        last["test_bpb"] = _toml(test)
    _write(path, doc)
    return record.unwrap()


def promotions(exps: list[dict[str, Any]], schema: int) -> list[dict[str, Any]]:
    return [e for e in exps if e.get("promoted") and entry_schema(e) == schema]


def reset_record(path: Path | None = None, keep_as: str = "record-v1") -> dict[str, Any]:
    """Restart the record chain on the current schema: the record so far is kept as the recipe
    ``keep_as`` (the speedrun's), and ``[recipes.record]`` becomes the baseline recipe again.

    Refused when ``keep_as`` exists already (the reset was made) or when entries of the
    current schema were measured against the record (they would count as measured against the
    restarted chain's r0). Returns the kept recipe.
    """
    import tomlkit

    path = path or registry_path()
    with ledger_lock(path):
        doc = _read(path)
        recipes = doc.get("recipes", {})
        if "record" not in recipes or "baseline" not in recipes:
            raise ConfigError(f"{path} needs [recipes.record] and [recipes.baseline] to reset")
        if keep_as in recipes:
            raise ConfigError(
                f"{path} has [recipes.{keep_as}] already: the record was reset, or give "
                "another name (--keep-as NAME)"
            )
        exps = list(doc.get("experiments", []))
        measured = [
            e["name"]
            for e in exps
            if entry_schema(e) == LEDGER_SCHEMA and e.get("baseline") == "record"
        ]
        if measured:
            raise ConfigError(
                f"{len(measured)} schema-{LEDGER_SCHEMA} comparisons were measured against the "
                f"record as it is ({measured[0]}, ...); reset before measuring against it"
            )
        _check_schema(doc, path)
        record, baseline = recipes["record"], recipes["baseline"]
        old = [s for s in range(1, LEDGER_SCHEMA) if promotions(exps, s)]
        schema = old[-1] if old else 1
        kept = tomlkit.table()
        kept.update(record.unwrap())
        kept["description"] = (
            f"the schema-{schema} record r{len(promotions(exps, schema))} (measured on the old "
            "split and metric), kept for the speedrun: " + str(record.get("description", ""))
        )
        kept.add(tomlkit.nl())  # the blank line that ended [recipes.record] goes with it
        recipes[keep_as] = kept
        for key in list(record):
            del record[key]
        record["description"] = (
            f"the best recipe so far on ledger schema {LEDGER_SCHEMA}: the record chain restarts "
            "from the baseline recipe (document-level splits, strided bits per byte); the "
            f"schema-{schema} record is [recipes.{keep_as}]"
        )
        for key, value in baseline.unwrap().items():
            if key != "description":
                record[key] = _toml(value)
        _write(path, doc)
    return kept.unwrap()


# -- the pages' tables ----------------------------------------------------------------------

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
# how a secondary metric's keys are shown (registry.metric_key of the task's metric names)
METRIC_LABELS = {"bpb": ("bpb", ".3f"), "chrf": ("chrF++", ".1f")}


def _settings(value: dict[str, Any]) -> str:
    # threads changes the speed of a run, not its result
    return ", ".join(f"{k}={v}" for k, v in value.items() if k != "threads")


def _budget(exp: dict[str, Any]) -> str:
    from kennethlm_core.experiment import describe_budget

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


def test_scored_before(path: Path | None = None) -> bool:
    """Whether a promotion of the current schema has test figures already: its candidate arm
    is the next comparison's baseline (the same recipe and seeds), so later promotions need
    only score their candidate."""
    doc = _read(path or registry_path())
    exps = list(doc.get("experiments", []))
    return any(e.get("test_bpb") for e in promotions(exps, LEDGER_SCHEMA))


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
    from kennethlm_core.experiment import SECONDARY_TASK

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


def render_files(
    files: list[tuple[Path, tuple[str, ...] | None]], registry: Path | None = None
) -> list[Path]:
    """Rewrite the tables of each (page, tables) from registry.toml, under its lock (so a
    render never writes tables from a ledger another klm has changed since); returns the pages
    that changed. Every page is rendered before any is written, so a refused one stops all."""
    from kennethlm_core.checkpoint import atomic_write_text
    from kennethlm_core.config import load_registry_doc

    registry = registry or registry_path()
    with ledger_lock(registry):
        doc = load_registry_doc(registry)
        changed = []
        for page, tables in files:
            old = page.read_text(encoding="utf-8")
            new = render_page(old, doc, tables, name=str(page))
            if new != old:
                changed.append((page, new))
        for page, new in changed:
            atomic_write_text(page, new)
    return [page for page, _ in changed]


# -- recording a comparison (klm compare --record / --promote) -------------------------------


def record(
    summary: dict[str, Any],
    promote_it: bool,
    path: Path | None = None,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> None:
    """Append a comparison's result (its summary.json) to the ledger; with ``promote_it`` and a
    better verdict, score the held-back test split and make the candidate the record; then
    re-render the pages beside the ledger. The append, the promotion and the render hold the
    ledger's lock as one step."""
    path = path or registry_path()
    entry = ledger_entry(summary)
    test = None
    if promote_it and summary["verdict"] == "better":  # a record reports its test figure
        # the baseline arm is the previous record, scored when it was promoted (the same
        # recipe and seeds); only the chain's first promotion scores its baseline too
        arms = ("candidate",) if test_scored_before(path) else ("baseline", "candidate")
        test = test_scores(summary, test_bpb, arms)
        say(
            "test split (reported, not deciding): "
            + ", ".join(f"{arm} {test[f'{arm}_mean']:.4f}" for arm in arms)
        )
    with ledger_lock(path):
        if append_experiment(entry, path):
            say(f"recorded in {path} ({summary['verdict']})")
        else:
            say(f"{path} has this result already; not recorded again")
        if promote_it and summary["verdict"] != "better":
            warn(
                f"klm: not promoted: the verdict is {summary['verdict']}; only a better "
                "candidate becomes the record"
            )
        elif promote_it:
            run = Path(summary["arms"]["candidate"]["runs"][0])
            config = json.loads((run / "config.json").read_text())
            promote(entry, config, path, test=test)
            say(f"promoted: {summary['candidate']} is part of the record recipe now")
        for page in render_files(pages(path), path):
            say(f"updated the results tables in {page}")


def test_bpb(run: Path) -> float:
    """A run's bits per byte on its corpus' test split (cached in its eval.json)."""
    from kennethlm_core.evaluate import run_tasks  # imports torch: not at the top, for --help

    cached = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    result = cached.get("bpb/test") or run_tasks(run, ["bpb"], split="test")["bpb/test"]
    return float(result["metrics"]["bpb"]["value"])
