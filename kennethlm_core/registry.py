"""registry.toml: recipes and the ledger of experiments, as the rest of KennethLM reads them.

The ledger is written with tomlkit, which keeps the file's comments, order and layout: an
experiment is appended as one ``[[experiments]]`` table, a promotion edits ``[recipes.record]``
in place, and every write replaces the file atomically. README.md's results tables are
generated from the ledger (``klm registry render``), between marker comments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kennethlm_core.config import RunConfig, registry_path
from kennethlm_core.errors import ConfigError

VERDICT_STATUS = {"better": "accepted", "worse": "negative", "inconclusive": "negative"}


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
    """The [[experiments]] entry of a comparison's summary.json (flat, TOML-friendly)."""
    arms = summary["arms"]
    entry: dict[str, Any] = {
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
    return entry


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


def append_experiment(entry: dict[str, Any], path: Path | None = None) -> bool:
    """Add an [[experiments]] table at the end of registry.toml; the rest stays as it was.
    False, and nothing written, when the same result is in the ledger already."""
    import tomlkit

    path = path or registry_path()
    doc = _read(path)
    if _find(doc, entry) is not None:
        return False
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
    entry: dict[str, Any], candidate_config: dict[str, Any], path: Path | None = None
) -> dict[str, Any]:
    """Make a `better` candidate the `record` recipe; the old record goes into its ledger entry.
    The entry must be in the ledger and measured against the record as it is: no comparison
    after it was promoted. Settings the candidate's configuration no longer has (an option of a
    component it replaced) leave the recipe. Returns the new record.
    """
    import tomlkit

    path = path or registry_path()
    doc = _read(path)
    record = doc.get("recipes", {}).get("record")
    if record is None:
        raise ConfigError(f"{path} has no [recipes.record] to replace")
    last = _find(doc, entry)
    if last is None or last.get("verdict") != "better" or last.get("baseline") != "record":
        raise ConfigError(
            "only a recorded comparison against record with the verdict 'better' is promoted"
        )
    later = doc["experiments"][doc["experiments"].index(last) + 1 :]
    if last.get("promoted") or any(exp.get("promoted") for exp in later):
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
    _write(path, doc)
    return record.unwrap()


# -- README tables ---------------------------------------------------------------------------

MARKERS = {
    "record-log": ("<!-- record-log:begin (klm registry render) -->", "<!-- record-log:end -->"),
    "results": ("<!-- results:begin (klm registry render) -->", "<!-- results:end -->"),
    "negative": (
        "<!-- negative-results:begin (klm registry render) -->",
        "<!-- negative-results:end -->",
    ),
}


def _settings(value: dict[str, Any]) -> str:
    # threads changes the speed of a run, not its result
    return ", ".join(f"{k}={v}" for k, v in value.items() if k != "threads")


def _budget(exp: dict[str, Any]) -> str:
    from kennethlm_core.experiment import describe_budget

    text = describe_budget(exp.get("budget", {}))
    if exp.get("branch_at") is not None:
        text += f", branched at {exp['branch_at']:g}"
    return text


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def record_log(exps: list[dict[str, Any]]) -> str:
    """The record's history: the baseline, then each promoted step with its comparison."""
    steps = [e for e in exps if e.get("promoted")]
    if not steps:
        return "No promotions yet: `record` is the baseline recipe."
    lines = ["| record | change | val_bpb | Δ | 95% CI | p | budget | date |", "|---" * 8 + "|"]
    first = steps[0]
    lines.append(f"| r0 | the baseline recipe | {first['baseline_mean']:.4f} | | | | | |")
    for n, e in enumerate(steps, 1):
        lo, hi = e["delta_ci"]
        lines.append(
            f"| r{n} | `{_cell(e['candidate'])}` | {e['candidate_mean']:.4f} | {e['delta']:+.4f} "
            f"| [{lo:+.4f}, {hi:+.4f}] | {e['p']:.2g} | {_budget(e)} | {e['date']} |"
        )
    return "\n".join(lines)


def render_tables(doc: dict[str, Any]) -> dict[str, str]:
    """{'record-log', 'results', 'negative': markdown} from the ledger."""
    exps = list(doc.get("experiments", []))
    accepted = [e for e in exps if e.get("verdict") == "better"]
    negative = [e for e in exps if e.get("verdict") in ("worse", "inconclusive")]
    # which record (r0, r1, ...) each entry was measured against: the promotions made before it
    # was appended (a promotion may come after later entries: promoted_at says when)
    made = [e.get("promoted_at", i + 1) for i, e in enumerate(exps) if e.get("promoted")]
    generation = {id(e): sum(at <= i for at in made) for i, e in enumerate(exps)}

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
        return "| " + " | ".join(cells) + " |"

    head = "| candidate | baseline | settings | budget | seeds | metric |"
    tail = " Δ | 95% CI | p |"
    if accepted:
        lines = [head + tail + " date | commit |", "|---" * 11 + "|"]
        lines += [row(e) + f" {e['date']} | {e['commit']} |" for e in accepted]
        results = "\n".join(lines)
    else:
        results = "No accepted improvements yet."
    if negative:
        lines = [head + " baseline | candidate |" + tail + " verdict |", "|---" * 12 + "|"]
        for e in negative:
            arms = [
                f"{e[f'{a}_mean']:.4f} ± {e[f'{a}_std']:.4f}" for a in ("baseline", "candidate")
            ]
            lines.append(row(e, *arms) + f" {e['verdict']} |")
        negatives = "\n".join(lines)
    else:
        negatives = "No negative results yet."
    return {"record-log": record_log(exps), "results": results, "negative": negatives}


def render_readme(readme: str, doc: dict[str, Any]) -> str:
    """README text with the tables between the markers replaced by the ledger's."""
    tables = render_tables(doc)
    for key, (begin, end) in MARKERS.items():
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(readme):
            raise ConfigError(f"README has no '{begin}' ... '{end}' markers for the {key} table")
        readme = pattern.sub(lambda m, k=key, b=begin, e=end: f"{b}\n{tables[k]}\n{e}", readme)
    return readme


def render_readme_file(readme: Path, registry: Path | None = None) -> bool:
    """Rewrite README's tables from registry.toml; True when the file changed."""
    from kennethlm_core.checkpoint import atomic_write_text
    from kennethlm_core.config import load_registry_doc

    old = readme.read_text(encoding="utf-8")
    new = render_readme(old, load_registry_doc(registry or registry_path()))
    if new != old:
        atomic_write_text(readme, new)
    return new != old
