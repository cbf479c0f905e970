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
on the machine does not count. The prediction falls, then rises: probing stops at the first
shape that predicts worse than the best so far, so no shape more than one past the best costs
a probe's time and memory; one that predicts worse by less than MARGIN, as a probe slowed by
other work might, is probed again first, and the faster of the two counts.

Then the batch: the loss model has no term for it, since below the critical batch size (far
above the few thousand tokens per step of a CPU run; McCandlish et al., 2018) a larger batch
needs proportionally fewer steps for the same loss, so tokens/s is all a batch buys. At the
chosen shape the batch is doubled while a doubling raises the rate by RATE_GAIN or more and the
run keeps at least MIN_STEPS steps; the learning rates (``lr`` and every ``*_lr`` option) grow
with the square root of the batch, as the speedrun recipe's search found them to (lr 2e-3,
muon_lr 0.03 at batch 24; 3e-3, 0.045 at 48). A larger batch makes the fixed costs of a step
(the optimizer's, which for Muon grow with the matrices, not the tokens) smaller per token,
most for the largest shapes, so if the batch grew, the shapes above the chosen one are probed
again at the new batch and the lowest prediction wins.

Last the vocabulary, at the chosen shape and batch, for a recipe that sets ``vocab_size``:
the recipe's tokenizer is learnt at twice the size (and cached), its bytes per token measured
on the corpus and the shape probed with it (the larger read-out is in the rate, the longer
tokens in the text the rule counts); doubling goes on while the prediction falls, and if twice
the size did not win, halving is tried the same way. Each size is tried between 256 and 32,768
(VOCABULARIES).

The context stays the recipe's: the rule has no term for it. The choice, the fit and every
probe's figures go to summary.json (``size``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
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
MARGIN = 0.02  # a shape predicting worse by less is probed again (a rate 5% off: ~0.005)
RATE_GAIN = 1.05  # a doubled batch is taken when it is at least this much faster
MIN_STEPS = 1000  # and the run keeps at least this many optimizer steps
MAX_DOUBLINGS = 5  # the batch grows to at most 32 times the recipe's
VOCABULARIES = (256, 32768)  # the vocabulary sizes the rule may try, smallest and largest


def predicted_bpb(n: float, tokens: float, bytes_per_token: float | None = None) -> float:
    """The fitted val_bpb of a model with ``n`` parameters (body_params) after ``tokens`` of a
    tokenizer with ``bytes_per_token`` (None: the fit's own)."""
    f = FIT
    if bytes_per_token is not None:
        tokens = tokens * bytes_per_token / FIT_BYTES_PER_TOKEN
    return f["E"] + f["A"] * n ** -f["alpha"] + f["B"] * max(tokens, 1.0) ** -f["beta"]


def shaped(cfg: RunConfig, n_layer: int, n_head: int, n_embd: int) -> RunConfig:
    return cfg.replace(n_layer=n_layer, n_head=n_head, n_embd=n_embd)


def batched(cfg: RunConfig, batch_size: int) -> dict[str, Any]:
    """The settings that train ``cfg`` at ``batch_size``: the batch, and every learning rate
    (``lr`` and the ``*_lr`` options; 0, "lr's", stays 0) times sqrt(batch_size / cfg's)."""
    scale = math.sqrt(batch_size / cfg.batch_size)
    rates = {k: float(v) * scale for k, v in cfg.options.items() if k.endswith("_lr")}
    return {"batch_size": batch_size, "lr": cfg.lr * scale, **rates}


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
    settings: dict[str, Any] = field(default_factory=dict)  # what changed: batch, rates, vocab

    def to_dict(self) -> dict[str, Any]:
        return {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd,
                **self.settings, "reason": self.reason, "fit": dict(FIT),
                "fit_bytes_per_token": FIT_BYTES_PER_TOKEN,
                "bytes_per_token": self.bytes_per_token, "probes": self.probes}  # fmt: skip


@dataclass
class Vocabulary:
    """A candidate vocabulary: the ``vocab_size`` setting, the size the tokenizer gave (at most
    the setting) and its bytes per token on the run's corpus."""

    setting: int
    vocab_size: int
    bytes_per_token: float


class _Prober:
    """Probes (shape, batch) pairs for ``cfg``'s budget, keeping every probe's figures."""

    def __init__(self, cfg, registry, vocab_size, device, autocast, log, bytes_per_token):
        self.cfg, self.registry, self.vocab_size = cfg, registry, vocab_size
        self.device, self.autocast, self.log = device, autocast, log
        self.bytes_per_token = bytes_per_token
        self.probes: list[dict[str, Any]] = []

    def probe(
        self, shape: tuple[int, int, int], batch: int, vocab: Vocabulary | None = None
    ) -> dict[str, Any]:
        """Probes ``shape`` at ``batch``, with the recipe's vocabulary or ``vocab``."""
        n_layer, n_head, n_embd = shape
        cfg = self.cfg
        run = shaped(cfg, *shape).replace(**batched(cfg, batch))
        vocab_size, per_token = self.vocab_size, self.bytes_per_token
        if vocab is not None:
            run = run.replace(vocab_size=vocab.setting)
            vocab_size, per_token = vocab.vocab_size, vocab.bytes_per_token
        rate, n = tokens_per_s(run, self.registry, vocab_size, self.device, self.autocast)
        tokens = rate * cfg.time
        bpb = predicted_bpb(n, tokens, per_token)
        p = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "batch_size": batch,
             "vocab_size": vocab_size, "bytes_per_token": per_token, "params": n,
             "tokens_per_s": round(rate, 1), "tokens": round(tokens),
             "steps": round(tokens / (batch * cfg.block_size)),
             "predicted_bpb": round(bpb, 4), "_bpb": bpb,
             "_setting": vocab.setting if vocab else cfg.vocab_size}  # fmt: skip
        self.probes.append(p)
        self.log(
            f"size auto: {n_layer} x {n_embd} ({n:,} parameters), batch {batch}, vocabulary "
            f"{vocab_size:,}: {rate:,.0f} tokens/s, {tokens / 1e6:.1f}M tokens in "
            f"{cfg.time:g}s, predicted val_bpb {bpb:.3f}"
        )
        return p

    def ladder(self, shapes, batch: int, best: dict[str, Any] | None = None) -> dict[str, Any]:
        """The best of ``shapes`` (smallest first) at ``batch`` and ``best`` (a probe already
        made), stopping at the first shape that predicts worse than the best so far. One that
        predicts worse by less than MARGIN, as a probe slowed by other work might, is probed
        again first and the faster of the two counts."""
        tried = [best] if best else []
        lowest = best["_bpb"] if best else float("inf")
        for shape in shapes:
            p = self.probe(shape, batch)
            if lowest < p["_bpb"] <= lowest + MARGIN:
                p = min(p, self.probe(shape, batch), key=lambda q: q["_bpb"])
            tried.append(p)
            if p["_bpb"] > lowest:
                break  # past the best: bigger shapes see ever fewer tokens
            lowest = p["_bpb"]
        return min(tried, key=lambda p: p["_bpb"])


def _shape(p: dict[str, Any]) -> tuple[int, int, int]:
    return p["n_layer"], p["n_head"], p["n_embd"]


def choose(
    cfg: RunConfig,
    registry: Any,
    vocab_size: int,
    device,
    autocast,
    log=print,
    bytes_per_token: float | None = None,
    vocabulary: Callable[[int], Vocabulary | None] | None = None,
) -> Choice:
    """The shape, batch and vocabulary for ``cfg``'s time budget on this machine (see the
    module docstring), for a tokenizer of ``bytes_per_token`` on the run's corpus (None: the
    fit's). ``vocabulary(n)`` gives the Vocabulary of a ``vocab_size`` setting of n (None where
    the tokenizer takes no such size); without it the vocabulary stays the recipe's, as it does
    where the recipe leaves the size to the tokenizer (``vocab_size`` 0)."""
    prober = _Prober(cfg, registry, vocab_size, device, autocast, log, bytes_per_token)
    pick = prober.ladder(SHAPES, cfg.batch_size)
    shape, batch = _shape(pick), cfg.batch_size
    why_batch = ""  # (the loop ending on its own means the batch grew: said below)
    for _ in range(MAX_DOUBLINGS):  # the batch, at the chosen shape
        steps = pick["tokens"] / (2 * batch * cfg.block_size)
        if steps < MIN_STEPS:
            why_batch = f"; batch {batch}: twice would leave {steps:,.0f} steps"
            break
        doubled = prober.probe(shape, 2 * batch)
        gain = doubled["tokens_per_s"] / pick["tokens_per_s"]
        if gain < RATE_GAIN:
            why_batch = f"; batch {batch}: twice was {gain:.2f}x the rate"
            break
        pick, batch = doubled, 2 * batch
    if batch != cfg.batch_size:  # bigger shapes gain the most from a bigger batch
        above = SHAPES[SHAPES.index(shape) + 1 :]
        if above:
            pick = prober.ladder(above, batch, pick)
    why_vocab = ""
    if vocabulary is not None and cfg.vocab_size:
        pick, why_vocab = _vocabulary(prober, pick, batch, vocabulary)
    if batch != cfg.batch_size:
        scale = math.sqrt(batch / cfg.batch_size)
        why_batch = (
            f"; batch {batch}, {pick['steps']:,} steps, learning rates x{scale:.2f}"
            f" (a doubling was {RATE_GAIN:.2f}x the rate or more)"
        )
    largest = _shape(pick) == SHAPES[-1]
    reason = (
        f"{pick['n_layer']} layers x {pick['n_embd']} ({pick['n_head']} heads): the lowest "
        f"predicted val_bpb, {pick['predicted_bpb']:.3f}, for {pick['tokens'] / 1e6:.1f}M tokens "
        f"at {pick['tokens_per_s']:,.0f} tokens/s ({pick['tokens'] / pick['params']:.0f} tokens "
        f"per parameter){'; the largest shape there is' if largest else ''}{why_batch}{why_vocab}"
    )
    settings = batched(cfg, batch) if batch != cfg.batch_size else {}
    if pick["vocab_size"] != vocab_size:
        settings["vocab_size"] = pick["_setting"]
    for p in prober.probes:
        del p["_bpb"], p["_setting"]
    return Choice(*_shape(pick), reason, prober.probes, pick["bytes_per_token"], settings)


def _vocabulary(
    prober: _Prober,
    pick: dict[str, Any],
    batch: int,
    vocabulary: Callable[[int], Vocabulary | None],
) -> tuple[dict[str, Any], str]:
    """(the best probe, why) over vocabularies at ``pick``'s shape and ``batch``: doubling the
    recipe's vocabulary while that predicts better, else halving it while that does."""
    cfg, best = prober.cfg, pick
    for factor in (2.0, 0.5):
        setting = cfg.vocab_size
        while VOCABULARIES[0] <= (setting := int(setting * factor)) <= VOCABULARIES[1]:
            vocab = vocabulary(setting)
            if vocab is None:  # the tokenizer takes no such size
                break
            p = prober.probe(_shape(pick), batch, vocab)
            if p["_bpb"] >= best["_bpb"]:
                break
            best = p
        if best is not pick:
            break  # a larger vocabulary won: no need to look below
    tried = sorted({p["vocab_size"] for p in prober.probes if _shape(p) == _shape(pick)})
    sizes = ", ".join(f"{v:,}" for v in tried)
    return best, f"; vocabulary {best['vocab_size']:,} of {sizes}"


def auto_size(cfg: RunConfig, registry: Any, log=print) -> tuple[RunConfig, Choice]:
    """``cfg`` with the shape, batch and vocabulary ``choose`` picks (``cfg.size == "auto"``),
    and the choice.

    The data is prepared first, for every vocabulary tried (each tokenizer is learnt once and
    cached, so ``train`` finds the chosen one's data there), and the probes run in the
    precision ``--dtype`` gives the recipe's shape."""

    data = prepare_data(cfg, registry, log=log)
    vocab_size = data.tokenizer.vocab_size
    per_token = domain_stats(data)["total"]["bytes_per_token"]
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = build_model(cfg, vocab_size, registry).to(device)
    shape = (cfg.batch_size, cfg.block_size)
    chosen = precision.choose(device, cfg.dtype, model, shape, vocab_size)

    def vocabulary(setting: int) -> Vocabulary | None:
        log(f"size auto: the {cfg.tokenizer} tokenizer of {setting:,} tokens (learnt once)")
        other = prepare_data(cfg.replace(vocab_size=setting), registry, log=log)
        size = other.tokenizer.vocab_size
        if size == vocab_size:  # the tokenizer ignores the setting, or has run out of text
            return None
        return Vocabulary(setting, size, domain_stats(other)["total"]["bytes_per_token"])

    choice = choose(
        cfg, registry, vocab_size, device, lambda: chosen.autocast(device), log, per_token,
        vocabulary,
    )  # fmt: skip
    log(f"size auto: {choice.reason}")
    sized = cfg.replace(
        n_layer=choice.n_layer, n_head=choice.n_head, n_embd=choice.n_embd, **choice.settings
    )
    return resolve(sized, registry), choice
