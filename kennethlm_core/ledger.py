"""registry.toml: recipes and the ledger of experiments, read and written.

The ledger is written with tomlkit, which keeps the file's comments, order and layout: an
experiment is appended as one ``[[experiments]]`` table, a promotion edits ``[recipes.record]``
in place, and every write replaces the file atomically. The results page of the
documentation (``docs/results.md`` beside registry.toml) is generated from the ledger (``klm
registry render``), between marker comments, and so is README.md's table of the current record.

Every read-modify-write of registry.toml (an append, a promotion, a reset of the record, and
the render of the pages that follows them) holds a file lock, ``registry.toml.lock`` beside it, so
two ``klm compare --record`` at once never lose an entry. ``record`` is what ``klm compare
--record`` does with a comparison: append it, promote it, render the pages, as one step.

What an entry holds, and the ledger's schema versions, are in entries.py; the tables rendered
from it in results.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomlkit
from filelock import FileLock, Timeout

from kennethlm_core.atomic import atomic_write_text
from kennethlm_core.config import load_registry_doc, registry_path
from kennethlm_core.entries import (
    LEDGER_SCHEMA,
    entry_schema,
    ledger_entry,
    promotions,
    test_scores,
)
from kennethlm_core.errors import ConfigError
from kennethlm_core.results import pages, render_page

# isort: split
# Moved to entries.py and results.py; kept importable from here for code written before the move.
from kennethlm_core.entries import (  # noqa: F401
    VERDICT_STATUS,
    component_status,
    metric_key,
    secondary_entry,
)
from kennethlm_core.results import (  # noqa: F401
    MARKERS,
    METRIC_LABELS,
    OLD_ANCHOR,
    OLD_SECTION,
    RESULTS_PAGE,
    RESULTS_TABLES,
    current_record,
    page_tables,
    record_log,
    render_tables,
    secondary_cell,
)

# How long a write waits for another klm holding registry.toml's lock.
LOCK_TIMEOUT_S = 120.0


def lock_path(path: Path | None = None) -> Path:
    path = Path(path or registry_path())
    return path.with_name(path.name + ".lock")


@contextmanager
def ledger_lock(path: Path | None = None) -> Iterator[None]:
    """Hold registry.toml's lock (``registry.toml.lock`` beside it) for a read-modify-write.

    Reentrant within a process (one lock object per file), so ``klm compare --record`` holds it
    across the append, the promotion and the render of the pages, and each of those takes it again.
    """
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


def _read(path: Path):
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return tomlkit.document()
    except Exception as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); fix or restore it") from None


def _write(path: Path, doc) -> None:
    atomic_write_text(path, tomlkit.dumps(doc))


def _toml(value: Any):
    """Dicts become inline tables, so an entry stays one block under [[experiments]]."""
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


def _promote(entry: dict[str, Any], candidate_config: dict[str, Any], path: Path, test=None):
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


def reset_record(path: Path | None = None, keep_as: str = "record-v1") -> dict[str, Any]:
    """Restart the record chain on the current schema: the record so far is kept as the recipe
    ``keep_as`` (the speedrun's), and ``[recipes.record]`` becomes the baseline recipe again.

    Refused when ``keep_as`` exists already (the reset was made) or when entries of the
    current schema were measured against the record (they would count as measured against the
    restarted chain's r0). Returns the kept recipe.
    """
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


def test_scored_before(path: Path | None = None) -> bool:
    """Whether a promotion of the current schema has test figures already: its candidate arm
    is the next comparison's baseline (the same recipe and seeds), so later promotions need
    only score their candidate."""
    doc = _read(path or registry_path())
    exps = list(doc.get("experiments", []))
    return any(e.get("test_bpb") for e in promotions(exps, LEDGER_SCHEMA))


def render_files(
    files: list[tuple[Path, tuple[str, ...] | None]], registry: Path | None = None
) -> list[Path]:
    """Rewrite the tables of each (page, tables) from registry.toml, under its lock (so a
    render never writes tables from a ledger another klm has changed since); returns the pages
    that changed. Every page is rendered before any is written, so a refused one stops all."""
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
