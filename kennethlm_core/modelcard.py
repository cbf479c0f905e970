"""The model card of a run exported by ``klm export``: README.md of the model folder.

YAML front matter for the hub (library, pipeline, tags) with klm's record of the export under
``klm_export`` (the datacard's ``MARKER``, so that ``--force`` replaces an earlier export and
nothing else), then the sections: how to load and generate, the recipe and its components,
the parameters, the data, and the bits per byte on validation and test. Read from the run
folder's summary.json and eval.json; what a run has not scored says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from kennethlm_core.components import HFTokenizer
from kennethlm_core.config import load_recipe, recipe_names
from kennethlm_core.datacard import MARKER

EXPORT_FORMAT = 1
SLOTS = ("model", "attention", "posemb", "norm", "mlp", "tokenizer", "optimizer", "schedule")


def model_card(run: Path, lm: Any, kind: str, why: list[str], config: Any, diff: float) -> str:
    """README.md of the export of ``run`` (loaded as ``lm``): ``kind`` is "gpt2" or "remote
    code" (``why``: the parts a stock GPT-2 lacks), ``config`` the exported model's
    configuration and ``diff`` its logits' largest difference from the run's."""
    remote = kind != "gpt2"
    summary = _read_json(run / "summary.json")
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["kennethlm", "custom_code" if remote else "gpt2"],
        MARKER: {"format": EXPORT_FORMAT, "kind": "model", "run": run.name, "as": kind},
    }
    lines = [
        f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n",
        f"# {run.name}\n",
        f"A small language model trained with KennethLM (`klm run`), "
        f"exported with `klm export` as {'remote code' if remote else 'a stock GPT-2'}.\n",
        _usage(run.name, remote),
        *_recipe(lm.config, remote, why, config),
        *_model(lm, summary, config, diff),
        *_results(run, summary),
    ]
    return "\n".join(lines)


def _usage(name: str, remote: bool) -> str:
    trust = ", trust_remote_code=True" if remote else ""
    return (
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{name}"{trust})\n'
        'inputs = tokenizer("Der var engang", return_tensors="pt")  # <|doc|> first\n'
        "out = model.generate(**inputs, max_new_tokens=50, do_sample=False)\n"
        "print(tokenizer.decode(out[0], skip_special_tokens=True))\n"
        "```\n"
    )


def _recipe(cfg: Any, remote: bool, why: list[str], config: Any) -> list[str]:
    """The recipe, the shape and the components; for remote code, what builds the network."""
    recipe = recipe_of(cfg)
    shape = (
        f"{cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, context {cfg.block_size}"
    )
    rows = [f"| {slot} | {getattr(cfg, slot)} |" for slot in SLOTS]
    rows += [f"| tweaks | {cfg.tweak} |"] if cfg.tweak else []
    lines = [
        "## Recipe\n",
        (f"The `{recipe}` recipe of registry.toml: " if recipe else "No recipe of registry.toml: ")
        + f"{shape}; every setting is in the run's config.json"
        + (" (and in this folder's config.json, `klm_config`).\n" if remote else ".\n"),
        "| slot | component |\n|---|---|\n" + "\n".join(rows) + "\n",
    ]
    if remote:
        needed = ", ".join(f"`{d}` {v}" for d, v in config.klm_distributions.items())
        lines.append(
            f"Not a stock GPT-2 ({', '.join(why)}): the network is built by the KennethLM "
            f"packages {needed}, which must be installed to load it.\n"
        )
    return lines


def _model(lm: Any, summary: dict[str, Any], config: Any, diff: float) -> list[str]:
    """The parameters, and the data the model was trained on."""
    cfg = lm.config
    params = summary.get("params") or sum(p.numel() for p in lm.model.parameters())
    return [
        "## Parameters\n",
        f"{params:,} parameters"
        + (", embeddings tied" if config.tie_word_embeddings else "")
        + f"; weights in float32. The exported logits differ from klm's by at most {diff:.1e}.\n",
        "## Data\n",
        f"Corpus `{cfg.corpus}`; tokenizer `{cfg.tokenizer}` ({lm.tokenizer.vocab_size:,} "
        f"tokens, `{HFTokenizer.DOC}` marks each document's start); "
        f"{summary.get('tokens_seen', 0):,} training tokens.\n",
    ]


def _results(run: Path, summary: dict[str, Any]) -> list[str]:
    """Bits per byte on validation (by domain too) and test, and how the run was trained."""
    scores = _read_json(run / "eval.json")
    test = (scores.get("bpb/test") or {}).get("metrics", {}).get("bpb", {}).get("value")
    val = summary.get("val_bpb", (scores.get("bpb") or {}).get("metrics", {}).get("bpb", {}))
    val = val.get("value") if isinstance(val, dict) else val
    bpb = lambda v: f"{v:.4f}" if isinstance(v, int | float) else "not scored"
    lines = [
        "## Results\n",
        "| split | bits per byte |\n|---|---|\n"
        f"| validation | {bpb(val)} |\n| test | {bpb(test)} |\n",
    ]
    domains = summary.get("val_bpb_by_domain") or {}
    if domains:
        lines.append(
            "Validation by domain: "
            + ", ".join(f"{d} {v:.4f}" for d, v in sorted(domains.items()))
            + ".\n"
        )
    lines.append(
        f"Trained for {summary.get('train_time_s', 0):.0f} s on {summary.get('device', '?')}, "
        f"commit {summary.get('git_commit') or '?'}; exported {time.strftime('%Y-%m-%d')}.\n"
    )
    return lines


def recipe_of(cfg: Any) -> str | None:
    """The registry.toml recipe whose every setting the run has, if any."""
    saved = cfg.to_dict()
    for name in recipe_names():
        recipe = load_recipe(name)
        if all(
            saved.get(k) == v for k, v in recipe.items() if k not in ("steps", "tokens", "time")
        ):
            return name
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        return {}
