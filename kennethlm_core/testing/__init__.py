"""The conformance kit: what every component of a slot must do, as ready-made pytest tests.

A plugin package's tests use it in one line per component:

    from kennethlm_core.testing import conformance

    TestFlash = conformance("attention", "flash")
    TestWindow = conformance("attention", "window", window=4)  # settings, as --set gives them

``conformance`` returns a test class that pytest collects (its name must start with ``Test``).
The component is looked up through the registry by slot and name, so the package must be
installed (``make test`` installs every package under ``plugins/``). It is built from a tiny
configuration (``TINY``, then the settings given) and checked for its slot:

- **attention, norm, mlp, model**: output shape, dtype, device, causality (with and without
  a score bias), finite gradients, determinism under a seed, dropout only in training,
  save/load round trip through safetensors (kennethlm_core.checkpoint); attention also: a
  score bias is taken (``provides={"score_bias"}``) or refused with ValueError; norm and mlp
  also: each position and sequence is processed on its own.
- **posemb**: the same, for what ``embed`` and ``rotate`` make of a sequence; ``score_bias``
  is None or a finite float bias that broadcasts to the scores, on the device asked for, the
  same from a seed and from a saved copy; positions do not depend on the sequence length; a
  GPT built with it is causal and trains (finite gradients).
- **optimizer**: a few steps lower a loss; deterministic; parameters stay finite, in their
  dtype and on their device; optimizer state survives a checkpoint round trip.
- **schedule**: the multiplier is finite and in [0, 1] over the whole budget, and lets
  training happen; it is a pure function of (step, progress), so a resumed run gets the same.
- **tokenizer**: exact round trip of Danish text (æøå, newlines, tabs, emoji, unseen
  characters), ids in range, a document token that carries no text, JSON save and restore,
  deterministic training.
- **corpus**: documents are Documents with unique ids, in the same order on every pass, with
  a stable fingerprint.
- **task**: evaluating a tiny untrained run gives a TaskResult of finite metrics, the same
  twice. Set ``data`` and ``limit`` on a subclass to point the task at local files.
- **tweak**: a tiny GPT built with the tweak passes the model checks, differs from a plain
  GPT of the same seed, and learns a simple sequence with AdamW.
- **callback**: a tiny run on the embedded sample trains with it, and a run stopped half
  way and resumed ends exactly like one that was not stopped.

A check that does not apply is not run; a check that fails says which component broke which
rule. Subclass the returned class to add checks of your own, or set ``registry`` to test a
component that is registered by hand rather than installed.

The kits live in modules by what they check: ``base`` (the tiny configuration, ``tiny_gpt``,
``Conformance``), ``modules`` (attention, norm, mlp, posemb), ``models`` (model, tweak),
``training`` (optimizer, schedule, callback), ``data`` (tokenizer, corpus) and ``tasks``.
Import their names from here (``from kennethlm_core.testing import TINY``).
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any

from kennethlm_core.errors import UnknownComponent
from kennethlm_core.hookspecs import SLOTS
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing.base import (
    SEED,
    TINY,
    VOCAB,
    Conformance,
    devices,
    lengths,
    tiny_gpt,
)
from kennethlm_core.testing.data import DANISH, CorpusChecks, TokenizerChecks
from kennethlm_core.testing.models import ModelChecks, TweakChecks
from kennethlm_core.testing.modules import (
    AttentionChecks,
    MlpChecks,
    ModuleChecks,
    NormChecks,
    PosembChecks,
)
from kennethlm_core.testing.tasks import TaskChecks
from kennethlm_core.testing.training import CallbackChecks, OptimizerChecks, ScheduleChecks

__all__ = [
    "DANISH",
    "KITS",
    "SEED",
    "TINY",
    "VOCAB",
    "AttentionChecks",
    "CallbackChecks",
    "Conformance",
    "CorpusChecks",
    "MlpChecks",
    "ModelChecks",
    "ModuleChecks",
    "NormChecks",
    "OptimizerChecks",
    "PosembChecks",
    "ScheduleChecks",
    "TaskChecks",
    "TokenizerChecks",
    "TweakChecks",
    "conformance",
    "devices",
    "lengths",
    "tiny_gpt",
]

KITS: dict[str, type[Conformance]] = {
    "model": ModelChecks,
    "attention": AttentionChecks,
    "posemb": PosembChecks,
    "norm": NormChecks,
    "mlp": MlpChecks,
    "optimizer": OptimizerChecks,
    "schedule": ScheduleChecks,
    "tokenizer": TokenizerChecks,
    "corpus": CorpusChecks,
    "task": TaskChecks,
    "tweak": TweakChecks,
    "callback": CallbackChecks,
}


def conformance(slot: str, name: str, *, registry: Any = None, **settings: Any) -> type:
    """A pytest test class checking component ``name`` of ``slot`` against its slot's rules.

    ``settings`` are run settings (as ``--set`` would give them) for the tiny configuration
    the component is built from; ``registry`` defaults to the installed plugins.
    """
    if slot not in KITS:
        close = difflib.get_close_matches(slot, SLOTS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownComponent(f"unknown slot '{slot}'; {hint}slots: {', '.join(SLOTS)}")
    if registry is None:
        registry = get_registry()
    registry.get(slot, name)  # an unknown name fails now, at collection, listing known ones
    title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name))
    caller = sys._getframe(1).f_globals.get("__name__", __name__)  # pytest reports it there
    attrs = dict(slot=slot, name=name, settings=settings, registry=registry, __module__=caller)
    return type(f"Test{title}", (KITS[slot],), attrs)
