"""``--size auto``: the model's shape for a time budget, on the machine the run is on.

A model trained for a fixed time can be small and see many tokens, or large and see few; the
best trade lies between, and where depends on the machine. The project's own runs of the
record recipe at several sizes and token budgets (``benchmarks/size_rule.py``; docs/speed.md,
"The size rule", has the runs, the fit and its plot) fit the loss model of Hoffmann et al.
(2022),

    val_bpb(N, D) = E + A / N**alpha + B / D**beta,

N being the parameters outside the embedding tables and the read-out, D the training text in
tokens of the fit's tokenizer (BPE 1,024, FIT_BYTES_PER_TOKEN). A run with another tokenizer
counts the text it sees, D = its tokens x its bytes per token / the fit's: a token of a larger
vocabulary carries more text, and bits per byte are paid per byte.

``--size auto`` measures, for the shapes of SHAPES, smallest first, the tokens/s of a few
training steps of the run's own model, optimizer, batch, context, precision and compilation;
a shape then sees D = tokens/s x the time budget, and the shape with the lowest predicted
val_bpb wins. A probe's rate is that of its median step, so that a step slowed by other work
on the machine does not count; probing stops once two shapes in a row predict worse than the
best so far (the prediction falls, then rises; one slowed probe does not end the search).

Depth, heads and width come from SHAPES; batch, context and vocabulary stay
the recipe's. The choice, the fit and every probe's figures go to summary.json (``size``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kennethlm_core import precision
from kennethlm_core.config import RunConfig, resolve
from kennethlm_core.data import prepare_data
from kennethlm_core.data.tokens import domain_stats
from kennethlm_core.device import pick_device
from kennethlm_core.model import build_model

# (n_layer, n_head, n_embd), smallest first: heads of 32 dimensions up to width 192, of 64
# (GPT-2's) from 256, where on a CPU with AMX they ran 12% faster (docs/speed.md)
SHAPES = (
    (2, 2, 64),
    (4, 2, 64),
    (4, 3, 96),
    (4, 4, 128),
    (4, 5, 160),
    (4, 6, 192),
    (6, 4, 256),
    (8, 6, 384),
    (12, 8, 512),
    (12, 12, 768),
)
# val_bpb(N, D) = E + A / N**alpha + B / D**beta: benchmarks/size_rule.py, 2026-12-01, the
# record recipe (r3) at widths 64-192 x 0.5M-2M tokens, seed 1; rms residual 0.0135
FIT = {"E": 0.9419, "A": 13.9076, "alpha": 0.25, "B": 337.501, "beta": 0.45}
FIT_BYTES_PER_TOKEN = 2.4787  # the fit's BPE 1,024 on ../shared/data/corpus (size_rule.py)
PROBE_S = 1.5  # seconds of training steps per probed shape
PATIENCE = 2  # probing stops after this many shapes in a row predict worse than the best


def predicted_bpb(n: float, tokens: float, bytes_per_token: float | None = None) -> float:
    """The fitted val_bpb of a model with ``n`` parameters (body_params) after ``tokens`` of a
    tokenizer with ``bytes_per_token`` (None: the fit's own)."""
    f = FIT
    if bytes_per_token is not None:
        tokens = tokens * bytes_per_token / FIT_BYTES_PER_TOKEN
    return f["E"] + f["A"] * n ** -f["alpha"] + f["B"] * max(tokens, 1.0) ** -f["beta"]


def shaped(cfg: RunConfig, n_layer: int, n_head: int, n_embd: int) -> RunConfig:
    return cfg.replace(n_layer=n_layer, n_head=n_head, n_embd=n_embd)


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
    tokens, with the run's optimizer, precision (``autocast``: a context manager) and
    ``compile`` (whose compilation, in the first step, is not counted)."""

    rng = torch.get_rng_state()
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size, registry).to(device)
    optimizer = registry.get("optimizer", cfg.optimizer).factory(cfg, model)
    step = torch.compile(model) if cfg.compile else model
    x = torch.randint(0, vocab_size, (cfg.batch_size, cfg.block_size), device=device)
    y = torch.roll(x, -1, dims=1)
    times: list[float] = []  # the first step warms up (and compiles) and is not counted
    while len(times) < 4 or sum(times[1:]) < seconds:
        t0 = time.perf_counter()
        with autocast():
            _, loss = step(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the device
        times.append(time.perf_counter() - t0)
    torch.set_rng_state(rng)
    if cfg.compile:  # forget the probe's compiled code (inductor's disk cache keeps it): torch
        torch.compiler.reset()  # runs a function eagerly once it has compiled it for 8 models
    return cfg.batch_size * cfg.block_size / statistics.median(times[1:]), body_params(model)


@dataclass
class Choice:
    n_layer: int
    n_head: int
    n_embd: int
    reason: str
    probes: list[dict[str, Any]] = field(default_factory=list)
    bytes_per_token: float | None = None  # the run's tokenizer's, which the rule counted

    def to_dict(self) -> dict[str, Any]:
        return {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd,
                "reason": self.reason, "fit": dict(FIT),
                "fit_bytes_per_token": FIT_BYTES_PER_TOKEN,
                "bytes_per_token": self.bytes_per_token, "probes": self.probes}  # fmt: skip


def choose(
    cfg: RunConfig,
    registry: Any,
    vocab_size: int,
    device,
    autocast,
    log=print,
    bytes_per_token: float | None = None,
) -> Choice:
    """The shape for ``cfg``'s time budget on this machine (see the module docstring), for a
    tokenizer of ``bytes_per_token`` on the run's corpus (None: the fit's)."""
    probes: list[dict[str, Any]] = []
    best, worse = float("inf"), 0
    for n_layer, n_head, n_embd in SHAPES:
        shape = shaped(cfg, n_layer, n_head, n_embd)
        rate, n = tokens_per_s(shape, registry, vocab_size, device, autocast)
        tokens = rate * cfg.time
        bpb = predicted_bpb(n, tokens, bytes_per_token)
        probes.append({"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "params": n,
                       "tokens_per_s": round(rate, 1), "tokens": round(tokens),
                       "predicted_bpb": round(bpb, 4)})  # fmt: skip
        log(
            f"size auto: {n_layer} x {n_embd} ({n:,} parameters): {rate:,.0f} tokens/s, "
            f"{tokens / 1e6:.1f}M tokens in {cfg.time:g}s, predicted val_bpb {bpb:.3f}"
        )
        worse = worse + 1 if bpb > best else 0
        if worse == PATIENCE:
            break  # past the best: bigger shapes see ever fewer tokens
        best = min(best, bpb)
    pick = min(probes, key=lambda p: p["predicted_bpb"])
    n_head = pick["n_head"]
    largest = pick is probes[-1] and len(probes) == len(SHAPES)
    reason = (
        f"{pick['n_layer']} layers x {pick['n_embd']} ({n_head} heads): the lowest predicted "
        f"val_bpb, {pick['predicted_bpb']:.3f}, for {pick['tokens'] / 1e6:.1f}M tokens at "
        f"{pick['tokens_per_s']:,.0f} tokens/s ({pick['tokens'] / pick['params']:.0f} tokens "
        f"per parameter){'; the largest shape there is' if largest else ''}"
    )
    return Choice(pick["n_layer"], n_head, pick["n_embd"], reason, probes, bytes_per_token)


def auto_size(cfg: RunConfig, registry: Any, log=print) -> tuple[RunConfig, Choice]:
    """``cfg`` with the shape ``choose`` picks (``cfg.size == "auto"``), and the choice.

    The data is prepared first (the vocabulary is the tokenizer's; ``train`` then finds it in
    the cache), and the probes run in the precision ``--dtype`` gives the recipe's shape."""

    data = prepare_data(cfg, registry, log=log)
    vocab_size = data.tokenizer.vocab_size
    per_token = domain_stats(data)["total"]["bytes_per_token"]
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = build_model(cfg, vocab_size, registry).to(device)
    shape = (cfg.batch_size, cfg.block_size)
    chosen = precision.choose(device, cfg.dtype, model, shape, vocab_size)
    choice = choose(
        cfg, registry, vocab_size, device, lambda: chosen.autocast(device), log, per_token
    )
    log(f"size auto: {choice.reason}")
    sized = cfg.replace(n_layer=choice.n_layer, n_head=choice.n_head, n_embd=choice.n_embd)
    return resolve(sized, registry), choice
