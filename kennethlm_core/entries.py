"""A ledger entry: what registry.toml's ``[[experiments]]`` holds of a comparison, and the
schema it was measured under. Plain dicts in, plain dicts out; reading and writing the file
is ledger.py's, rendering its tables results.py's.

The ledger has a schema version: ``ledger_schema`` at the top of the file is the schema new
entries are written in, and every entry says its own (``schema``; none means 1).

    1  the old split and metric: validation chunks cut from the same documents as the training
       chunks, bits per byte over non-overlapping windows. Superseded; kept as history.
    2  document-level train/validation/test splits, strided bits per byte.

The current tables show entries of the current schema only (the record log too: its r0,
r1, ... count promotions of that schema); schema-1 entries are shown apart, as history.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kennethlm_core.config import RunConfig

VERDICT_STATUS = {"better": "accepted", "worse": "negative", "inconclusive": "negative"}
# The schema new ledger entries are written in (see the module's docstring).
LEDGER_SCHEMA = 2


def entry_schema(exp: dict[str, Any]) -> int:
    """The schema an entry was measured under: its ``schema``, 1 when it has none."""
    return int(exp.get("schema", 1))


def promotions(exps: list[dict[str, Any]], schema: int) -> list[dict[str, Any]]:
    """The promoted entries of ``schema``, in ledger order: r1, r2, ... of its record chain."""
    return [e for e in exps if e.get("promoted") and entry_schema(e) == schema]


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
