"""Scoring: bits per byte, a loaded run's helpers for tasks, and the task runner.

Bits per byte: the total negative log-likelihood of the validation text in bits, divided by its
UTF-8 bytes. The text is the concatenation of validation documents, each preceded by the
tokenizer's document token, scored in non-overlapping windows of the model's context. Document
tokens are context, never targets, so every tokenizer predicts exactly the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kennethlm_core.components import Metric, TaskResult
from kennethlm_core.data import TokenSplit

LN2 = math.log(2)


@dataclass
class BPB:
    bpb: float
    by_domain: dict[str, float]
    doc_bits: np.ndarray  # bits per validation document
    doc_bytes: np.ndarray
    doc_domain: np.ndarray

    def ci(self, iters: int = 1000, seed: int = 0) -> tuple[float, float] | None:
        """95% bootstrap interval over documents (None for a single document)."""
        return bootstrap_ratio(self.doc_bits, self.doc_bytes, iters, seed)


@torch.no_grad()
def bits_per_byte(
    model: torch.nn.Module,
    split: TokenSplit,
    block_size: int,
    doc_id: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    autocast: Any = None,
) -> BPB:
    device = torch.device(device)
    tokens = torch.from_numpy(np.asarray(split.tokens, dtype=np.int64))
    n_targets = len(tokens) - 1
    T = block_size
    n_win = max(1, math.ceil(n_targets / T))
    padded = torch.full((n_win * T + 1,), -1, dtype=torch.long)
    padded[: len(tokens)] = tokens
    x = padded[:-1].view(n_win, T).clamp(min=0)  # padding only ever follows real tokens
    y = padded[1:].view(n_win, T).clone()
    y[y == doc_id] = -1  # document tokens carry no bytes: context only
    doc_of = np.full(n_win * T, -1, dtype=np.int64)
    starts = np.append(split.docs[:, 0], len(tokens))
    doc_of[:n_targets] = np.repeat(np.arange(len(split.docs)), np.diff(starts))[1:]
    doc_of = torch.from_numpy(doc_of).view(n_win, T)

    was_training = model.training
    model.eval()
    doc_bits = torch.zeros(len(split.docs), dtype=torch.float64)
    ctx = autocast or contextlib.nullcontext()
    for i in range(0, n_win, batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with ctx:
            logits, _ = model(xb)
        nll = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            yb.reshape(-1),
            ignore_index=-1,
            reduction="none",
        )
        keep = yb.reshape(-1).cpu() >= 0
        doc_bits.index_add_(
            0, doc_of[i : i + batch_size].reshape(-1)[keep], nll.cpu().double()[keep] / LN2
        )
    model.train(was_training)

    bits, nbytes, dom = doc_bits.numpy(), split.docs[:, 2].astype(np.float64), split.docs[:, 1]
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


# -- a loaded run, as tasks see it -----------------------------------------------------------


class LoadedRun:
    """A trained run ready for evaluation: model, tokenizer, config and scoring helpers."""

    def __init__(self, run_dir: str | Path, device: str = "auto", registry: Any = None):
        from kennethlm_core.checkpoint import WEIGHTS, load_weights
        from kennethlm_core.model import build_model
        from kennethlm_core.plugins import get_registry
        from kennethlm_core.train import autocast_context, load_run_config, pick_device

        self.dir = Path(run_dir)
        self.registry = registry or get_registry()
        self.config = load_run_config(self.dir, self.registry)
        self.device = pick_device(device if device != "auto" else self.config.device)
        self.tokenizer = self.registry.get("tokenizer", self.config.tokenizer).factory(self.config)
        self.tokenizer.load(self.dir / "tokenizer")
        torch.manual_seed(0)
        self.model = build_model(self.config, self.tokenizer.vocab_size, self.registry)
        load_weights(self.model, self.dir / WEIGHTS)
        self.model.to(self.device).eval()
        self.autocast, _ = autocast_context(self.device, self.config.dtype)
        self.block_size = self.config.block_size

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    @torch.no_grad()
    def logprobs(self, requests: list[tuple[list[int], int]], batch_size: int = 64) -> list[float]:
        """Summed log-probabilities (nats) of ``ids[start:]`` given ``ids[:start]``, per request.

        Long inputs are cut from the left: each target sees at most ``block_size`` tokens of
        context. Targets beyond one window are scored in further windows.
        """
        T = self.block_size
        windows, owners = [], []  # (input ids, first target index in window, n targets)
        for r, (ids, start) in enumerate(requests):
            start = max(1, start)
            for a in range(start, len(ids), T):
                b = min(len(ids), a + T)
                s = max(0, b - 1 - T)
                windows.append((ids[s : b - 1], a - 1 - s, b - a, ids[a:b]))
                owners.append(r)
        totals = [0.0] * len(requests)
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            width = max(len(w[0]) for w in chunk)
            x = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, (inp, *_rest) in enumerate(chunk):
                x[j, : len(inp)] = torch.tensor(inp)
            with self.autocast:
                logits, _ = self.model(x.to(self.device))
            logp = F.log_softmax(logits.float(), dim=-1).cpu()
            for j, (_inp, off, n, targets) in enumerate(chunk):
                rows = logp[j, off : off + n]
                totals[owners[i + j]] += float(rows[torch.arange(n), torch.tensor(targets)].sum())
        return totals

    def score(self, context: str, continuation: str) -> float:
        """log P(continuation | document start + context), in nats."""
        ctx = [self.tokenizer.doc_id, *self.encode(context)]
        return self.logprobs([(ctx + self.encode(continuation), len(ctx))])[0]

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 100) -> str:
        """Greedy continuation of ``prompt`` (cut from the left to fit), until a document token."""
        from kennethlm_core.model import generate

        ids = [self.tokenizer.doc_id, *self.encode(prompt)][-self.block_size :]
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self.autocast:
            out = generate(
                self.model,
                x,
                max_new_tokens,
                self.block_size,
                temperature=0,
                stop_id=self.tokenizer.doc_id,
            )
        new = out[0, len(ids) :].tolist()
        if self.tokenizer.doc_id in new:
            new = new[: new.index(self.tokenizer.doc_id)]
        return self.decode(new)


# -- the bpb task and the task runner --------------------------------------------------------


class BPBTask:
    """Bits per byte on the run's validation split (or another corpus), overall and per domain.

    ``limit`` is in bytes of validation text (default: the run's ``final_eval_bytes``).
    """

    name = "bpb"

    def evaluate(self, lm: LoadedRun, *, data: str | None = None, limit: int | None = None):
        from kennethlm_core.config import resolve
        from kennethlm_core.data import prepare_data

        cfg = lm.config if data is None else resolve(lm.config.replace(corpus=data), lm.registry)
        prepared = prepare_data(cfg, lm.registry, tokenizer=lm.tokenizer)
        split = prepared.val.head(limit or cfg.final_eval_bytes)
        res = bits_per_byte(
            lm.model, split, lm.block_size, lm.tokenizer.doc_id, lm.device, autocast=lm.autocast
        )
        metrics = {"bpb": Metric(res.bpb, res.ci(), chance=8.0, higher_is_better=False)}
        for name, value in res.by_domain.items():
            sel = res.doc_domain == split.domains.index(name)
            ci = bootstrap_ratio(res.doc_bits[sel], res.doc_bytes[sel])
            metrics[f"bpb/{name}"] = Metric(
                value, ci, chance=8.0, higher_is_better=False, n=int(sel.sum())
            )
        return TaskResult(
            metrics, n=len(split.docs), notes=f"{split.n_bytes} bytes of validation text"
        )


def run_tasks(
    run_dir: str | Path,
    names: list[str],
    data: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    registry: Any = None,
) -> dict[str, Any]:
    """Evaluate a run on tasks; merge the results into the run's eval.json and return them."""
    from kennethlm_core.checkpoint import atomic_write_json
    from kennethlm_core.plugins import get_registry

    registry = registry or get_registry()
    tasks = {n: registry.get("task", n) for n in names}  # unknown names fail before loading
    lm = LoadedRun(run_dir, device=device, registry=registry)
    results = {}
    for name, comp in tasks.items():
        task = comp.factory(lm.config)
        results[name] = task.evaluate(lm, data=data, limit=limit).to_json()
    path = Path(run_dir) / "eval.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_json(path, {**existing, **results})
    return results
