"""Evaluation: what tasks see of a model, and the task runner.

Tasks (the ``task`` slot) talk to a model only through ``LanguageModel`` below: scoring
continuations in batches and greedy generation, both inside the model's context; ``LoadedRun``
is a trained run folder behind that interface. ``run_tasks`` runs tasks on a run folder. The
helpers the task plugins share (``choose``, ``mcc``, ``macro_f1``, ``mean_metric``,
``load_rows``, ``sample_rows``) are in ``kennethlm_core.tasktools`` and importable from here,
the plugins' public module. The metric itself, bits per byte, is in ``kennethlm_core.metric``;
the built-in ``bpb`` task in ``kennethlm_core.builtin.tasks``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kennethlm_core import precision
from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.checkpoint import WEIGHTS, load_weights
from kennethlm_core.data import SPLITS
from kennethlm_core.device import pick_device
from kennethlm_core.errors import ConfigError, DataError
from kennethlm_core.model import build_model, stream
from kennethlm_core.plugins import get_registry
from kennethlm_core.precision import Precision
from kennethlm_core.rundir import load_run_config
from kennethlm_core.tasktools import EVAL_LAYOUT

# isort: split
# Moved to their own modules; kept importable from here for code written before the move, and
# the helpers for tasks (tasktools) for the task plugins, whose public module this is.
from kennethlm_core.builtin.tasks import BPBTask  # noqa: F401
from kennethlm_core.metric import BPB, bits_per_byte, bootstrap_ratio, score_windows  # noqa: F401
from kennethlm_core.tasktools import (  # noqa: F401
    TABLE_BUILDERS,
    choose,
    data_files,
    load_rows,
    macro_f1,
    mcc,
    mean_metric,
    paired_metric,
    sample_rows,
)

# -- what a task sees of a model ------------------------------------------------------------


def answer_text(text: str, stop: str | None) -> tuple[str, bool]:
    """(answer, complete): generated text cut at the first ``stop``, and whether it was.

    With a stop string, whitespace before the answer is not part of it: small models often
    open with a line break, and ``stop="\\n"`` must then end the answer's line, not the empty
    one before it. Without one, the text is returned as generated.
    """
    if not stop:
        return text, False
    text = text.lstrip()
    answer, found, _ = text.partition(stop)
    return answer, bool(found)


class LanguageModel:
    """The small interface evaluation tasks talk to. LoadedRun is the real one; tests write
    fixture models (an oracle, a uniform model) by subclassing this.

    A subclass provides:

    - ``tokenizer``: has ``doc_id``, the document token every prompt starts with.
    - ``block_size``: the context length in tokens.
    - ``encode(text) -> ids`` and ``decode(ids) -> text``.
    - ``logprobs(requests) -> list[float]``: for each ``(ids, start)``, the summed
      log-probability in nats of ``ids[start:]`` given ``ids[:start]``. No target sees more
      than ``block_size`` tokens: long inputs are cut from the left, and a continuation longer
      than one window is scored in further non-overlapping windows. Many requests at once are
      scored in batches: give a task's whole set in one call.
    - ``generate(prompt, max_new_tokens, stop=None) -> str``: the greedy continuation of a
      document start and ``prompt``, seeing the last ``block_size`` tokens at every step (so the
      prompt is cut from the left); it ends at a document token, at ``max_new_tokens``, or where
      ``stop`` first appears (``stop`` and what follows it are dropped).

    and gets, built on those: ``score``, ``score_many``, ``n_tokens`` and ``fit``.
    """

    tokenizer: Any
    block_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def logprobs(self, requests: list[tuple[list[int], int]]) -> list[float]:
        raise NotImplementedError

    def generate(self, prompt: str, max_new_tokens: int = 100, stop: str | None = None) -> str:
        """Greedy continuation of ``prompt``; with ``stop``, the answer as `answer_text` cuts it."""
        raise NotImplementedError

    def score(self, context: str, continuation: str) -> float:
        """log P(continuation | document start + context), in nats."""
        return self.score_many([(context, continuation)])[0]

    def score_many(self, pairs: list[tuple[str, str]]) -> list[float]:
        """``score`` for many (context, continuation) pairs, in one batched call."""
        requests = []
        for context, continuation in pairs:
            ctx = [self.tokenizer.doc_id, *self.encode(context)]
            requests.append((ctx + self.encode(continuation), len(ctx)))
        return self.logprobs(requests)

    def n_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def fit(self, text: str, max_tokens: int, keep: str = "end") -> str:
        """The longest end (``keep="end"``) or start (``"start"``) of ``text`` that encodes to at
        most ``max_tokens`` tokens, cut at a space when there is one to cut at."""
        if self.n_tokens(text) <= max_tokens:
            return text
        lo, hi = 0, len(text)  # characters to keep: lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            part = text[len(text) - mid :] if keep == "end" else text[:mid]
            lo, hi = (mid, hi) if self.n_tokens(part) <= max_tokens else (lo, mid)
        if keep == "end":
            part = text[len(text) - lo :] if lo else ""
            if lo and not text[len(text) - lo - 1].isspace() and " " in part:
                part = part.split(" ", 1)[1]  # the first word was cut: drop what is left of it
        else:
            part = text[:lo]
            if not text[lo].isspace() and " " in part:
                part = part.rsplit(" ", 1)[0]
        return part


class LoadedRun(LanguageModel):
    """A trained run ready for evaluation: model, tokenizer and config, scoring in batches."""

    def __init__(self, run_dir: str | Path, device: str = "auto", registry: Any = None):

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
        # the precision the run trained in (summary.json), so that scores repeat the run's
        summary = self.dir / "summary.json"
        used = json.loads(summary.read_text()).get("dtype") if summary.exists() else None
        if used and self.config.dtype == "auto":
            self.precision = Precision(used, "the run's own")
        else:
            self.precision = precision.choose(self.device, self.config.dtype)
        self.autocast = self.precision.autocast(self.device)
        self.block_size = self.config.block_size

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    @torch.inference_mode()
    def logprobs(
        self, requests: list[tuple[list[int], int]], batch_tokens: int = 16384
    ) -> list[float]:
        T = self.block_size
        windows = []  # (request, input ids, position of the first target, target ids)
        for r, (ids, start) in enumerate(requests):
            for a in range(max(1, start), len(ids), T):
                b = min(len(ids), a + T)
                s = max(0, b - 1 - T)
                windows.append((r, ids[s : b - 1], a - 1 - s, ids[a:b]))
        windows.sort(key=lambda w: len(w[1]))  # similar widths share a batch: little padding
        # cap the logits of a batch (tokens x vocabulary) at 64 M floats
        batch_tokens = max(T, min(batch_tokens, 2**26 // self.tokenizer.vocab_size))
        totals = torch.zeros(len(requests), dtype=torch.float64)
        i = 0
        while i < len(windows):
            j = i + 1
            while j < len(windows) and (j + 1 - i) * len(windows[j][1]) <= batch_tokens:
                j += 1
            batch, i = windows[i:j], j
            x = np.zeros((len(batch), len(batch[-1][1])), dtype=np.int64)
            rows, cols, targets, owners = [], [], [], []
            for k, (r, inp, off, tgt) in enumerate(batch):
                x[k, : len(inp)] = inp
                rows += [k] * len(tgt)
                cols += range(off, off + len(tgt))
                targets += tgt
                owners += [r] * len(tgt)
            with self.autocast:
                logits, _ = self.model(torch.from_numpy(x).to(self.device))
            at = (
                torch.tensor(rows, device=logits.device),
                torch.tensor(cols, device=logits.device),
            )
            picked = logits[at].float().log_softmax(-1)
            lp = picked.gather(1, torch.tensor(targets, device=logits.device)[:, None])[:, 0]
            totals.index_add_(0, torch.tensor(owners), lp.double().cpu())
        return totals.tolist()

    @torch.inference_mode()
    def generate(self, prompt: str, max_new_tokens: int = 100, stop: str | None = None) -> str:
        doc_id = self.tokenizer.doc_id
        x = torch.tensor([[doc_id, *self.encode(prompt)]], device=self.device)
        new: list[int] = []
        with self.autocast:
            for nxt in islice(stream(self.model, x, self.block_size, 0), max_new_tokens):
                if int(nxt) == doc_id:
                    break
                new.append(int(nxt))
                if answer_text(self.decode(new), stop)[1]:
                    break
        return answer_text(self.decode(new), stop)[0]


# -- the task runner --------------------------------------------------------


def task_data(task: Any, data: str | None, several: bool) -> str | None:
    """What ``--data`` means for one task.

    A folder with a subfolder named after the task's ``data_dir`` (the layout of
    ../shared/data/eval) gives that subfolder. Otherwise, with one task, ``data`` goes to it as
    it is (a file or a folder); with several, the task keeps its own default data, and a
    single file is refused (one file cannot feed several tasks).
    """
    if data is None:
        return None
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data {data}: no such file or folder")
    sub = getattr(task, "data_dir", None)
    if path.is_dir() and sub and (path / sub).is_dir():
        return str(path / sub)
    if not several:
        return str(path)
    if path.is_file():
        raise ConfigError(
            f"--data {data} is one file, but several tasks were asked for; "
            f"give one --task, or {EVAL_LAYOUT}"
        )
    return None


def run_tasks(
    run_dir: str | Path,
    names: list[str],
    data: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    registry: Any = None,
    corpus: str | None = None,
    split: str = "validation",
    stride: int = 0,
    log: Callable[[str], None] = lambda message: None,
    save: bool = True,
) -> dict[str, Any]:
    """Evaluate a run on tasks; merge each result into the run's eval.json as it comes.

    ``data`` is resolved per task by ``task_data``, except that the bpb task alone takes it as
    it is (any corpus: a path or a name); ``corpus``, ``split`` and ``stride`` are the bpb
    task's (another corpus, which of its splits to score, targets per window). ``limit`` caps
    every task's examples (bpb: bytes); without it each task uses its ``default_limit``.
    Results go to eval.json under the task's name; bpb on anything but the run's own
    validation split goes under a key that says what it scored ("bpb/test", "bpb@PATH");
    ``save=False`` writes nothing.
    """

    if split not in SPLITS[1:]:
        raise ConfigError(f"unknown split '{split}'; --split is validation or test")
    registry = registry or get_registry()
    comps = {n: registry.get("task", n) for n in names}  # unknown names fail before loading
    lm = LoadedRun(run_dir, device=device, registry=registry)
    tasks = {n: c.factory(lm.config) for n, c in comps.items()}
    paths = {n: task_data(t, data, len(tasks) > 1) for n, t in tasks.items() if n != "bpb"}
    keys = {n: n for n in tasks}
    if "bpb" in tasks:
        bpb = tasks["bpb"]
        bpb.split, bpb.corpus, bpb.stride = split, corpus, stride
        paths["bpb"] = data if len(tasks) == 1 else None
        if paths["bpb"] is not None:
            keys["bpb"] = f"bpb@{paths['bpb']}"
        elif corpus is not None or split != "validation":
            keys["bpb"] = f"bpb/{split}" + (f"@{corpus}" if corpus is not None else "")
        if stride:
            keys["bpb"] += f"/stride-{stride}"
    results, path = {}, Path(run_dir) / "eval.json"
    for name, task in tasks.items():
        if len(tasks) > 1:  # with one task, an error is the only line on stderr
            log(f"{keys[name]} ...")
        t0 = time.perf_counter()
        res = task.evaluate(lm, data=paths[name], limit=limit).to_json()
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results[keys[name]] = res
        if not save:  # the caller keeps the result its own way
            continue
        existing = json.loads(path.read_text()) if path.exists() else {}
        atomic_write_json(path, {**existing, keys[name]: res})
    return results
