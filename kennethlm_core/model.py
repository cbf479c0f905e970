"""The models: a bigram table and a GPT assembled from slot components.

With attention ``naive``, posemb ``learned``, norm ``layernorm`` and mlp ``gelu`` the GPT is
nanoGPT's: pre-norm blocks, tied input and output embeddings, N(0, 0.02) initialisation with
the residual projections (``c_proj``) scaled by 1/sqrt(2 * n_layer), optional biases, dropout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kennethlm_core.config import MODEL_SLOTS, RunConfig, component_names
from kennethlm_core.errors import ConfigError


class Parts:
    """The factories of the components a model assembles, chosen by the run config.

    ``parts.attention(cfg)``, ``parts.posemb(cfg)``, ``parts.norm(cfg, dim)``, ``parts.mlp(cfg)``.
    A factory may return None for "no such sublayer" (mlp ``none``).
    """

    def __init__(self, cfg: RunConfig, registry: Any):
        for slot in MODEL_SLOTS:
            setattr(self, slot, registry.get(slot, getattr(cfg, slot)).factory)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: RunConfig, parts: Parts):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v at once
        self.attend = parts.attention(cfg)  # the attention slot: (q, k, v, bias) -> y
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.qk_transform = None  # a tweak's (q, k) -> (q, k), e.g. QK-norm (hookspecs.py)

    def forward(self, x, posemb, bias, ve=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        if ve is not None:  # value embeddings (B, T, C), from the model's value_input seam
            v = v + ve
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_transform is not None:
            q, k = self.qk_transform(q, k)
        q, k = posemb.rotate(q, k)
        y = self.attend(q, k, v, bias)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: RunConfig, parts: Parts):
        super().__init__()
        self.residual = cfg.residual
        self.ln_1 = parts.norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, parts)
        self.ln_2 = parts.norm(cfg, cfg.n_embd)
        self.mlp = parts.mlp(cfg)

    def forward(self, x, posemb, bias, ve=None):
        if self.residual:
            x = x + self.attn(self.ln_1(x), posemb, bias, ve)
            if self.mlp is not None:
                x = x + self.mlp(self.ln_2(x))
        else:  # the ladder's "before residual connections" step
            x = self.attn(self.ln_1(x), posemb, bias, ve)
            if self.mlp is not None:
                x = self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: RunConfig, vocab_size: int, parts: Parts):
        super().__init__()
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.posemb = parts.posemb(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg, parts) for _ in range(cfg.n_layer)])
        self.ln_f = parts.norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying: one matrix reads and writes tokens
        # the seams tweaks use (hookspecs.klm_register_tweak); None: a plain GPT
        self.token_input = None  # (idx, x) -> x on the token embeddings (hashed bigrams)
        self.block_input = None  # (i, x, xs) -> x before block i: how blocks are wired
        self.value_input = None  # (i, idx) -> (B, T, C) or None, added to block i's values
        self.logits_transform = None  # logits -> logits (soft-capping)
        self.output_mix = None  # (idx, logits) -> logits: another model mixed in (n-grams)

        self.apply(init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections, GPT-2's scaled init
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, idx, targets=None):
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.block_size}")
        x = self.wte(idx)
        if self.token_input is not None:
            x = self.token_input(idx, x)
        x = self.drop(self.posemb.embed(x))
        bias = self.posemb.score_bias(T, idx.device)
        xs = [x]  # the embedded input, then each block's output
        for i, block in enumerate(self.blocks):
            if self.block_input is not None:
                x = self.block_input(i, x, xs)
            ve = self.value_input(i, idx) if self.value_input is not None else None
            x = block(x, self.posemb, bias, ve)
            xs.append(x)
        logits = self.lm_head(self.ln_f(x))
        if self.logits_transform is not None:
            logits = self.logits_transform(logits)
        if self.output_mix is not None:
            logits = self.output_mix(idx, logits)
        return logits, lm_loss(logits, targets)


class Bigram(nn.Module):
    """Each token's logits for the next token, read from a table: no context at all."""

    def __init__(self, cfg: RunConfig, vocab_size: int, parts: Parts | None = None):
        super().__init__()
        self.block_size = cfg.block_size
        self.table = nn.Embedding(vocab_size, vocab_size)
        nn.init.normal_(self.table.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        logits = self.table(idx)
        return logits, lm_loss(logits, targets)


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def lm_loss(logits, targets):
    """Mean cross-entropy over targets; -1 marks positions not to score."""
    if targets is None:
        return None
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def build_model(cfg: RunConfig, vocab_size: int, registry: Any) -> nn.Module:
    """The run's model, built by the model slot's factory from the other slots' components,
    then changed by the run's tweaks, in order."""
    model = registry.get("model", cfg.model).factory(cfg, vocab_size, Parts(cfg, registry))
    for name in component_names(cfg.tweak):
        registry.get("tweak", name).factory(model, cfg)
    return model


def hold_seam(model: nn.Module, seam: str, tweak: str, make: Callable[[], nn.Module]) -> None:
    """Put the module ``make()`` builds into the model's ``seam`` (``token_input``,
    ``block_input``, ``value_input``, ...: hookspecs.klm_register_tweak) for tweak ``tweak``;
    a model without that seam, or whose seam another tweak holds, is refused before ``make``
    runs (it may read the model's shape)."""
    if not hasattr(model, seam):
        raise ConfigError(f"tweak '{tweak}' needs a model with a {seam} seam (a GPT)")
    if getattr(model, seam) is not None:
        raise ConfigError(f"tweak '{tweak}': another tweak already holds the model's {seam} seam")
    setattr(model, seam, make())


def count_params(model: nn.Module) -> int:
    """Parameters, counting tied weights once."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def stream(
    model: nn.Module,
    idx: torch.Tensor,
    block_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """The next token of every row of idx (B, T), as a (B, 1) tensor, again and again: each
    sees the last ``block_size`` tokens before it. Temperature 0 is greedy; ``top_k`` samples
    among the k likeliest tokens. The one generation loop: `generate` and
    ``LoadedRun.generate`` (evaluation's greedy answers) both take their tokens from it."""
    while True:
        logits, _ = model(idx[:, -block_size:])
        logits = logits[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator)
        yield nxt
        idx = torch.cat((idx, nxt), dim=1)


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    stop_id: int | None = None,
) -> torch.Tensor:
    """Extend idx (B, T) by up to ``max_new_tokens`` tokens of `stream`. Stops early when
    every row has produced ``stop_id``."""
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    tokens = stream(model, idx, block_size, temperature, top_k, generator)
    for nxt in islice(tokens, max_new_tokens):  # no forward pass past the last token
        idx = torch.cat((idx, nxt), dim=1)
        if stop_id is not None:
            done |= nxt.squeeze(1) == stop_id
            if bool(done.all()):
                break
    return idx
