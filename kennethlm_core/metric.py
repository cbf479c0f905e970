"""The metric: bits per byte, and bootstrap intervals for it.

Bits per byte: the total negative log-likelihood of a split's text in bits, divided by its
UTF-8 bytes. The text is the split's documents, each preceded by the tokenizer's document token,
scored in strided windows of the model's context (``score_windows``). Document tokens are
context, never targets, so every tokenizer predicts exactly the same bytes and their scores
compare. Training scores its validation split with ``bits_per_byte``; so does the ``bpb`` task.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kennethlm_core.data import BYTES, DOC, DOMAIN, TokenSplit

LN2 = math.log(2)


@dataclass
class BPB:
    bpb: float
    by_domain: dict[str, float]
    doc_bits: np.ndarray  # bits per document scored (all its chunks in the slice)
    doc_bytes: np.ndarray
    doc_domain: np.ndarray

    def ci(self, iters: int = 1000, seed: int = 0) -> tuple[float, float] | None:
        """95% bootstrap interval over documents (None for a single document)."""
        return bootstrap_ratio(self.doc_bits, self.doc_bytes, iters, seed)


def score_windows(split: TokenSplit, block_size: int, stride: int = 0) -> np.ndarray:
    """The windows that score every target of ``split`` once: rows of (start, lo, hi, row).

    Window ``(start, lo, hi, row)`` scores part of chunk ``split.rows[row]``: it feeds
    ``tokens[start : start + block_size]`` to the model and keeps its predictions
    ``lo <= j < hi``, which are of the tokens ``start + 1 + j``. Targets go in blocks of
    ``stride`` (default ``block_size // 2``), and each block's window ends at its last target,
    so every target sees at least ``block_size - stride + 1`` tokens of context, or all of its
    document before it where the document is shorter. A window never reaches back past its
    document's start; near the start one window scores everything its context allows.
    Document tokens are context only: a chunk's targets begin after its document's token.
    """
    T = block_size
    S = stride or max(1, T // 2)
    out = []
    for row, (start, end, _, _, _, doc_start) in enumerate(split.rows.tolist()):
        q = max(start, doc_start + 1)  # the first target
        while q < end:
            w = max(doc_start, q + S - 1 - T)  # the window's first input token
            stop = min(end, w + T + 1)  # its last target + 1
            out.append((w, q - w - 1, stop - w - 1, row))
            q = stop
    return np.array(out, dtype=np.int64).reshape(-1, 4)


@torch.no_grad()
def bits_per_byte(
    model: torch.nn.Module,
    split: TokenSplit,
    block_size: int,
    doc_id: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    autocast: Any = None,
    stride: int = 0,
) -> BPB:
    """Bits per byte of the chunks in ``split``, scored in strided windows (score_windows).

    Every byte is counted once; bits and bytes are summed per document, so the interval
    bootstraps over documents. ``doc_id`` is unused since document tokens are never targets by
    construction, and is kept so that callers name the tokenizer they score with.
    """
    device = torch.device(device)
    T = block_size
    windows = score_windows(split, T, stride)
    tokens = np.asarray(split.tokens)
    doc_of_row = split.rows[:, DOC]
    offsets = np.arange(T + 1)
    last = len(tokens) - 1

    was_training = model.training
    model.eval()
    n_docs = int(doc_of_row.max()) + 1 if len(doc_of_row) else 0
    doc_bits = torch.zeros(n_docs, dtype=torch.float64)
    ctx = autocast or contextlib.nullcontext()
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size]
        xy = torch.from_numpy(tokens[np.minimum(w[:, :1] + offsets, last)].astype(np.int64))
        j = torch.arange(T)
        keep = (j >= torch.from_numpy(w[:, 1:2])) & (j < torch.from_numpy(w[:, 2:3]))
        with ctx:
            logits, _ = model(xy[:, :-1].to(device))
        nll = (
            F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                xy[:, 1:].reshape(-1).to(device),
                reduction="none",
            )
            .view(len(w), T)
            .cpu()
            .double()
        )
        bits = torch.where(keep, nll, 0.0).sum(dim=1) / LN2  # inf outside: not 0 * inf
        doc_bits.index_add_(0, torch.from_numpy(doc_of_row[w[:, 3]]), bits)
    model.train(was_training)

    bits = doc_bits.numpy()
    nbytes = np.bincount(doc_of_row, weights=split.rows[:, BYTES], minlength=n_docs)
    dom = np.zeros(n_docs, dtype=np.int64)
    dom[doc_of_row] = split.rows[:, DOMAIN]
    scored = nbytes > 0
    bits, nbytes, dom = bits[scored], nbytes[scored], dom[scored]
    by_domain = {}
    for d, name in enumerate(split.domains):
        if (dom == d).any():
            by_domain[name] = float(bits[dom == d].sum() / nbytes[dom == d].sum())
    return BPB(float(bits.sum() / nbytes.sum()), by_domain, bits, nbytes, dom)


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, iters: int = 1000, seed: int = 0):
    """95% percentile interval of sum(num)/sum(den), resampling items with replacement.

    None when there are fewer than two items: one document says nothing about its spread.
    """
    n = len(num)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(iters, n))
    ratios = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return (float(lo), float(hi))


def bootstrap_mean(values: np.ndarray, iters: int = 1000, seed: int = 0):
    return bootstrap_ratio(np.asarray(values, dtype=np.float64), np.ones(len(values)), iters, seed)


def bootstrap_stat(stat: Callable[[np.ndarray], float], n: int, iters: int = 1000, seed: int = 0):
    """95% percentile interval of ``stat(idx)`` over resamples ``idx`` of ``range(n)``."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n, size=n)) for _ in range(iters)]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))
