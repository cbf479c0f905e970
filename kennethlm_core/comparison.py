"""What a comparison compares: its two arms (``Arm``: a recipe and/or run settings), what they
share (``Comparison``: the budget, the seeds, the metric), the resolved configuration of each
arm (``arm_configs``) and what the candidate changes, and the experiment folder's default
name. Import these names from ``experiment``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kennethlm_core.config import (
    BUDGET_KEYS,
    WATCHING,
    RunConfig,
    build_config,
    logger_components,
    parse_count,
    parse_duration,
    resolve,
)
from kennethlm_core.errors import ConfigError
from kennethlm_core.verdict import ALPHA, MIN_EFFECT

ARMS = ("baseline", "candidate")


@dataclass
class Arm:
    """One side of a comparison: a recipe and/or run settings, and the text they came from."""

    text: str
    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    baseline: Arm
    candidate: Arm  # with no recipe of its own: settings applied on top of the baseline
    shared: dict[str, Any] = field(default_factory=dict)  # settings of both arms, budget too
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    metric: str = "bpb"
    metric_data: str | None = None
    min_effect: float = MIN_EFFECT
    alpha: float = ALPHA
    branch_at: float | None = None  # candidate starts from the baseline's checkpoint there
    init_from: Path | None = None  # both arms start from this run's checkpoint
    logger: str | None = None  # the runs' loggers (None: the arms'), grouped by the folder

    def budget(self) -> dict[str, Any]:
        return {k: self.shared[k] for k in BUDGET_KEYS if k in self.shared}

    def settings(self) -> dict[str, Any]:
        """The shared settings other than the budget."""
        return {k: v for k, v in self.shared.items() if k not in BUDGET_KEYS}


def arm_configs(comp: Comparison, registry: Any) -> dict[str, RunConfig]:
    """The resolved configuration of each arm (before the seed is set).

    Precedence, lowest first: the arm's recipe, the shared settings, the arm's own settings;
    a candidate without a recipe of its own adds its settings to the baseline's.
    """
    for arm_name, arm in zip(ARMS, (comp.baseline, comp.candidate), strict=True):
        fixed = sorted({*BUDGET_KEYS, "seed"} & set(arm.overrides))
        if fixed:
            raise ConfigError(
                f"--{arm_name} sets {', '.join(fixed)}; the budget and the seeds belong to the "
                "comparison (give --steps, --tokens or --time and --seeds to klm compare)"
            )
    if not any(k in comp.shared for k in BUDGET_KEYS):
        raise ConfigError("a comparison needs a budget: --steps, --tokens or --time")
    base, cand = comp.baseline, comp.candidate
    baseline = build_config(base.recipe, {**comp.shared, **base.overrides})
    if cand.recipe:
        candidate = build_config(cand.recipe, {**comp.shared, **cand.overrides})
    else:
        candidate = build_config(base.recipe, {**comp.shared, **base.overrides, **cand.overrides})
    cfgs = {"baseline": resolve(baseline, registry), "candidate": resolve(candidate, registry)}
    if comp.logger:  # an unknown logger fails now, before any run
        logger_components(cfgs["baseline"].replace(logger=comp.logger), registry)
    sized = [arm for arm, cfg in cfgs.items() if cfg.size == "auto"]
    if sized:
        raise ConfigError(
            f"the {' and '.join(sized)} arm asks for --size auto, which chooses a shape for one "
            "klm run; a comparison trains fixed shapes: give --n-layer, --n-embd and --n-head "
            "(klm run --size auto says which it would choose)"
        )
    if _computed(cfgs["baseline"]) == _computed(cfgs["candidate"]):
        raise ConfigError(
            f"the candidate ({cand.text!r}) is the same configuration as the baseline; "
            "give it a change, for example --candidate '--posemb none'"
        )
    return cfgs


def candidate_settings(cfgs: dict[str, RunConfig]) -> dict[str, Any]:
    """What the candidate changes: its settings that differ from the baseline's."""
    base, cand = _computed(cfgs["baseline"]), _computed(cfgs["candidate"])
    return {k: v for k, v in cand.items() if base.get(k) != v}


def _computed(cfg: RunConfig) -> dict[str, Any]:
    """The settings that change what a run computes: all but how it is watched (loggers)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in WATCHING}


def default_folder(comp: Comparison, root: Path = Path("experiments")) -> Path:
    """experiments/<baseline>-vs-<candidate>-<budget>[-branch...][-<shared settings>]."""
    parts = [comp.baseline.text or "defaults", "vs", comp.candidate.text]
    parts.append(describe_budget(comp.budget()))
    if comp.branch_at is not None:
        parts.append(f"branch {comp.branch_at:g}")
    if comp.init_from is not None:
        parts.append(f"from {Path(comp.init_from).name}")
    parts += [f"{k} {v}" for k, v in sorted(comp.settings().items())]
    return root / folder_name(parts)


def folder_name(parts: list[str]) -> str:
    """A folder name from words: lowercase, dashes, dots only in numbers; a long name is cut
    and ends in a hash of the whole, so different experiments never share one."""
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", " ".join(parts).lower())
    slug = re.sub(r"[^a-z0-9.]+", "-", text).strip("-")
    if len(slug) > 100:
        slug = slug[:90].rstrip("-") + "-" + hashlib.sha256(slug.encode()).hexdigest()[:8]
    return slug


def describe_budget(budget: dict[str, Any]) -> str:
    if budget.get("steps"):
        return f"{parse_count(budget['steps'])} steps"
    if budget.get("tokens"):
        return f"{parse_count(budget['tokens']):,} tokens"
    return f"{parse_duration(budget['time']):g}s"
