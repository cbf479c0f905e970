"""An n-gram model counted from the whole training split, mixed into the GPT's predictions.

A time budget lets a small GPT read a fraction of the training split once; counting all of it
takes seconds. The n-gram model is interpolated absolute discounting: at order n, with
c(h, w) the count of token w after the n - 1 tokens h, c(h) their sum and d(h) the number
of distinct w seen after h,

    p_n(w | h) = max(c(h, w) - D, 0) / c(h) + D d(h) / c(h) p_{n-1}(w | h')

where h' drops the oldest token of h, an unseen h leaves p_{n-1} as it is, and p_1 is the
add-one unigram. In evaluation (every score, and generation) the model predicts

    p(w) = (1 - weight) softmax(logits)(w) + weight p_N(w | h)

and returns log p as its logits; in training the GPT learns alone, from its own loss, since
the counts already hold each training target (they would teach it to lean on them).

The counts are buffers, saved with the weights: per order, the sorted keys of the n-grams
seen (h packed with w) and the running sum of their counts, so the grams after h are one
contiguous range, found by binary search. A new run counts before its first step
(``components.Counted``); at 30M tokens and order 5, about 47M grams, 0.6 GB. It holds the
model's ``output_mix`` seam.
"""

from __future__ import annotations

import numpy as np
import torch

from kennethlm_core import hookimpl
from kennethlm_core.components import Counted
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import hold_seam


def key_bits(vocab_size: int) -> int:
    """Bits that hold one token id."""
    return max(1, (vocab_size - 1).bit_length())


def context_keys(idx: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(..., T) token ids -> (..., T - n + 2) keys of the n - 1 tokens ending at each position
    from the (n - 2)-th on: the tokens packed as digits (each id + 1, so no context is all
    zeros) in an odd base above vocab_size, kept in 63 - key_bits bits: exact while the
    digits fit (order 5 at 4,096), beyond that a hash that still mixes every token in (an odd
    multiplier loses no bits modulo a power of two)."""
    base = (vocab_size + 1) | 1
    mask = (1 << (63 - key_bits(vocab_size))) - 1
    T = idx.size(-1)
    h = torch.zeros_like(idx[..., n - 2 :])
    for back in range(n - 2, -1, -1):  # the oldest token first; in place: 30M tokens count
        h.mul_(base).add_(idx[..., n - 2 - back : T - back]).add_(1).bitwise_and_(mask)
    return h


class NgramMix(Counted):
    def __init__(self, vocab_size: int, order: int, discount: float, weight: float):
        super().__init__()
        self.vocab_size, self.order = vocab_size, order
        self.discount, self.weight = discount, weight
        self.bits = key_bits(vocab_size)
        self.register_buffer("unigram", torch.zeros(vocab_size, dtype=torch.int64))
        for n in range(2, order + 1):
            self.register_buffer(f"keys{n}", torch.zeros(0, dtype=torch.int64))
            self.register_buffer(f"cum{n}", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("dense", None, persistent=False)  # bigram(), made from the counts

    def extra_repr(self) -> str:
        return f"order={self.order}, discount={self.discount}, weight={self.weight}"

    @torch.no_grad()
    def count(self, tokens) -> None:
        t = np.asarray(tokens).astype(np.int64)
        device = self.unigram.device
        self.unigram = torch.from_numpy(np.bincount(t, minlength=self.vocab_size)).to(device)
        for n in range(2, self.order + 1):
            grams = context_keys(torch.from_numpy(t[:-1]), n, self.vocab_size).numpy()
            np.left_shift(grams, self.bits, out=grams)
            np.bitwise_or(grams, t[n - 1 :], out=grams)
            grams.sort()  # in place: a sorted copy with indices would double the memory
            new = np.empty(len(grams), dtype=bool)
            new[:1], new[1:] = True, grams[1:] != grams[:-1]
            keys = grams[new]
            cum = np.empty(len(keys) + 1, dtype=np.int32 if len(t) < 2**31 else np.int64)
            cum[:-1], cum[-1] = np.flatnonzero(new), len(grams)  # where each gram's run starts
            del grams, new
            setattr(self, f"keys{n}", torch.from_numpy(keys).to(device))
            setattr(self, f"cum{n}", torch.from_numpy(cum).to(device))
        self.dense = None

    def resize(self, saved: dict[str, torch.Tensor]) -> None:
        super().resize(saved)
        self.dense = None

    def bigram(self) -> torch.Tensor | None:
        """The dense (vocab_size, vocab_size) table of p_2(next | token) where it is small
        (vocabularies up to 4,096), made once from the counts."""
        if self.vocab_size**2 > 2**24 or self.order < 2:
            return None
        if self.dense is None:
            tokens = torch.arange(self.vocab_size, device=self.unigram.device)[:, None]
            rows = [
                self.probs(tokens[i : i + 256], table=False) for i in range(0, len(tokens), 256)
            ]
            self.dense = torch.cat(rows)[:, 0]
        return self.dense

    def probs(self, idx: torch.Tensor, table: bool = True) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size): p_order(next token | the tokens up to each
        position), from the highest order whose context the window holds; orders 1 and 2 read
        from the dense bigram table where there is one (``table``)."""
        B, T = idx.shape
        V, D = self.vocab_size, self.discount
        table = self.bigram() if table else None
        if table is not None:
            p, lowest = table[idx.reshape(-1)], 3
        else:
            uni = (self.unigram.double() + 1) / (self.unigram.sum() + V)
            p, lowest = uni.float().expand(B * T, V).clone(), 2
        flat = p.view(-1)
        at = torch.arange(B * T, device=idx.device).view(B, T)
        for n in range(lowest, min(self.order, T + 1) + 1):
            keys, cum = getattr(self, f"keys{n}"), getattr(self, f"cum{n}")
            h = context_keys(idx, n, V).reshape(-1)  # positions n - 2 .. T - 1 of each row
            rows = at[:, n - 2 :].reshape(-1)
            lo = torch.searchsorted(keys, h << self.bits)
            hi = torch.searchsorted(keys, (h + 1) << self.bits)
            seen = hi > lo
            rows, lo, hi = rows[seen], lo[seen], hi[seen]
            distinct, total = hi - lo, (cum[hi] - cum[lo]).double()
            backoff = torch.ones(B * T, device=idx.device)
            backoff[rows] = (D * distinct / total).float()
            p *= backoff[:, None]
            # every gram after each context: (row, token, (count - D) / c(h))
            j = torch.repeat_interleave(lo - torch.cumsum(distinct, 0) + distinct, distinct)
            j += torch.arange(len(j), device=idx.device)
            mass = ((cum[j + 1] - cum[j]).double() - D).clamp(min=0)
            mass /= torch.repeat_interleave(total, distinct)
            tok = keys[j] & ((1 << self.bits) - 1)
            flat.index_add_(0, torch.repeat_interleave(rows, distinct) * V + tok, mass.float())
        return p.view(B, T, V)

    def forward(self, idx: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.training:
            return logits
        return self.mix(idx, logits)

    @torch.compiler.disable
    def mix(self, idx: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        net = logits.float().softmax(-1)
        mixed = (1 - self.weight) * net + self.weight * self.probs(idx)
        return mixed.log().to(logits.dtype)


def apply(model, cfg):
    order = int(cfg.get("ngram_order"))
    discount, weight = float(cfg.get("ngram_discount")), float(cfg.get("ngram_weight"))
    if order < 1:
        raise ConfigError(f"ngram_order must be at least 1 (the unigram), got {order}")
    if not 0 < discount < 1:
        raise ConfigError(f"ngram_discount must lie between 0 and 1, got {discount}")
    if not 0 <= weight <= 1:
        raise ConfigError(f"ngram_weight must lie between 0 and 1, got {weight}")
    vocab_size = model.lm_head.weight.shape[0]
    hold_seam(model, "output_mix", "ngram", lambda: NgramMix(vocab_size, order, discount, weight))


@hookimpl
def klm_register_tweak(register):
    register(
        "ngram",
        apply,
        "an n-gram model counted from the whole training split, mixed into the predictions",
        options={"ngram_order": 5, "ngram_discount": 0.75, "ngram_weight": 0.5},
        seams={"output_mix"},
    )
