"""registry.toml: recipes and the ledger of experiments, as the rest of KennethLM reads them."""

from __future__ import annotations

from typing import Any

from kennethlm_core.config import RunConfig

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
