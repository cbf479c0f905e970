"""``--size auto``: the model's shape for a time budget, on the machine the run is on.

A model trained for a fixed time can be small and see many tokens, or large and see few; the
best trade lies between. For a budget of D training tokens the best number of parameters
(outside the embedding tables and the read-out, as scaling laws count) follows a power law,

    N*(D) = K * D ** A,

fitted by ``benchmarks/size_rule.py`` from this project's own runs of the record recipe at
several token budgets (docs/size-rule.md has the runs, the fit and its plot). How many tokens
a shape sees in the time depends on the machine, so ``--size auto`` measures it: for the
shapes of SHAPES, smallest first, a few training steps of the run's own model, optimizer,
batch, context and precision give tokens/s, and D = tokens/s x the time budget. It stops at the
first shape at least as big as its own D asks for and takes that one or the one before,
whichever is nearer to N*(D) on a log scale (all smaller than they ask: the largest).

Depth and width come from SHAPES (heads of 32 dimensions); batch, context and vocabulary stay
the recipe's. The choice and every probe's figures go to summary.json (``size``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kennethlm_core.config import RunConfig

# (n_layer, n_embd), smallest first; n_head = n_embd // 32
SHAPES = (
    (2, 64),
    (4, 64),
    (4, 96),
    (4, 128),
    (4, 160),
    (4, 192),
    (6, 256),
    (8, 384),
    (12, 512),
    (12, 768),
)
HEAD_SIZE = 32
# N*(D) = K * D**A: benchmarks/size_rule.py on the record recipe, see docs/size-rule.md
K, A = 1.0, 0.5
PROBE_S = 1.5  # seconds of training steps per probed shape


def best_n(tokens: float) -> float:
    """N*(D): the best size outside the embedding for ``tokens`` training tokens."""
    return K * tokens**A


def shaped(cfg: RunConfig, n_layer: int, n_embd: int) -> RunConfig:
    return cfg.replace(n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // HEAD_SIZE))


def body_params(model: torch.nn.Module) -> int:
    """Parameters outside the embedding tables (tokens, learned positions) and the read-out,
    as scaling laws count a model's size."""
    outside = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None:
        outside[id(head.weight)] = head.weight
    skip = set(outside)
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def tokens_per_s(
    cfg: RunConfig, registry: Any, vocab_size: int, device, autocast, seconds: float = PROBE_S
) -> tuple[float, int]:
    """(tokens/s of a few training steps of ``cfg``'s model, its body_params), on random
    tokens, with the run's optimizer and precision (``autocast``: a context manager)."""
    from kennethlm_core.model import build_model

    rng = torch.get_rng_state()
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size, registry).to(device)
    optimizer = registry.get("optimizer", cfg.optimizer).factory(cfg, model)
    x = torch.randint(0, vocab_size, (cfg.batch_size, cfg.block_size), device=device)
    y = torch.roll(x, -1, dims=1)
    steps, start = -1, 0.0  # the first step warms up and is not counted
    while steps < 3 or time.perf_counter() - start < seconds:
        with autocast():
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the device
        steps += 1
        if steps == 0:
            start = time.perf_counter()
    rate = steps * cfg.batch_size * cfg.block_size / (time.perf_counter() - start)
    torch.set_rng_state(rng)
    return rate, body_params(model)


@dataclass
class Choice:
    n_layer: int
    n_head: int
    n_embd: int
    reason: str
    probes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rule = {"k": K, "a": A}
        return {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd,
                "reason": self.reason, "rule": rule, "probes": self.probes}  # fmt: skip


def choose(cfg: RunConfig, registry: Any, vocab_size: int, device, autocast, log=print) -> Choice:
    """The shape for ``cfg``'s time budget on this machine (see the module docstring)."""
    probes: list[dict[str, Any]] = []
    for n_layer, n_embd in SHAPES:
        rate, n = tokens_per_s(shaped(cfg, n_layer, n_embd), registry, vocab_size, device, autocast)
        tokens = rate * cfg.time
        probes.append({"n_layer": n_layer, "n_embd": n_embd, "params": n,
                       "tokens_per_s": round(rate, 1), "tokens": round(tokens),
                       "best_params": round(best_n(tokens))})  # fmt: skip
        log(
            f"size auto: {n_layer} x {n_embd}: {rate:,.0f} tokens/s, {tokens / 1e6:.1f}M tokens "
            f"in {cfg.time:g}s, best size for those {best_n(tokens):,.0f}, this one {n:,}"
        )
        if n >= best_n(tokens):
            break
    off = [abs(math.log(p["params"] / p["best_params"])) for p in probes]
    pick = probes[-1] if len(probes) == 1 or off[-1] <= off[-2] else probes[-2]
    if pick["params"] < pick["best_params"] and pick is probes[-1]:
        why = "the largest shape, and still smaller than its tokens ask for"
    else:
        why = "the shape nearest the size its tokens ask for"
    n_head = max(1, pick["n_embd"] // HEAD_SIZE)
    reason = (
        f"{pick['n_layer']} layers x {pick['n_embd']} ({n_head} heads): {why} "
        f"({pick['params']:,} parameters for {pick['tokens'] / 1e6:.1f}M tokens; the rule "
        f"N* = {K:.3g} D^{A:.3f} asks for {pick['best_params']:,})"
    )
    return Choice(pick["n_layer"], n_head, pick["n_embd"], reason, probes)


def auto_size(cfg: RunConfig, registry: Any, log=print) -> tuple[RunConfig, Choice]:
    """``cfg`` with the shape ``choose`` picks (``cfg.size == "auto"``), and the choice.

    The data is prepared first (the vocabulary is the tokenizer's; ``train`` then finds it in
    the cache), and the probes run in the precision ``--dtype`` gives the recipe's shape."""
    from kennethlm_core import precision
    from kennethlm_core.config import resolve
    from kennethlm_core.data import prepare_data
    from kennethlm_core.model import build_model
    from kennethlm_core.train import pick_device

    vocab_size = prepare_data(cfg, registry, log=log).tokenizer.vocab_size
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = build_model(cfg, vocab_size, registry).to(device)
    shape = (cfg.batch_size, cfg.block_size)
    chosen = precision.choose(device, cfg.dtype, model, shape, vocab_size)
    choice = choose(cfg, registry, vocab_size, device, lambda: chosen.autocast(device), log)
    log(f"size auto: {choice.reason}")
    sized = cfg.replace(n_layer=choice.n_layer, n_head=choice.n_head, n_embd=choice.n_embd)
    return resolve(sized, registry), choice
