"""Base classes for components whose interface is more than a function call.

Attention kernels, norms and MLPs are plain ``nn.Module`` factories (see hookspecs.py). The
components below have several entry points, so they get a small base class with working
defaults: subclass it and override what your idea changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


class PositionalEmbedding(nn.Module):
    """How a GPT knows where each token is. The defaults do nothing (NoPE).

    A positional embedding may add to the token embeddings (learned, sinusoidal), rotate the
    queries and keys (RoPE), add a bias to the attention scores (ALiBi), or any mix of these.
    """

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, C) in, embeddings with position information out."""
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys (B, H, T, D) in each block, before attention."""
        return q, k

    def score_bias(self, T: int, device: torch.device) -> torch.Tensor | None:
        """An additive bias for the attention scores, broadcastable to (B, H, T, T), or None."""
        return None


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    domain: str = "default"


class Corpus:
    """A source of documents. ``fingerprint`` changes whenever the documents may change."""

    name = "corpus"

    def documents(self) -> Iterator[Document]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError


class Tokenizer:
    """Text to token ids and back, exactly.

    Every tokenizer reserves one id, ``doc_id``, that marks the start of a document; it never
    stands for text, so it carries no bytes in bits-per-byte. State is one JSON string
    (``to_json`` / ``restore``), saved as ``tokenizer.json`` in the run folder: loading a
    tokenizer never executes code.
    """

    name = "tokenizer"

    def train(self, texts: Iterable[str]) -> None:
        """Learn the vocabulary from training text (already capped in size by the caller)."""

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def doc_id(self) -> int:
        raise NotImplementedError

    def to_json(self) -> str:
        raise NotImplementedError

    def restore(self, state: str) -> None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.name}\n{self.to_json()}".encode()).hexdigest()[:16]

    def save(self, directory: str | os.PathLike) -> None:
        from kennethlm_core.checkpoint import atomic_write_text

        atomic_write_text(Path(directory) / "tokenizer.json", self.to_json())

    def load(self, directory: str | os.PathLike) -> None:
        from kennethlm_core.errors import CheckpointError

        path = Path(directory) / "tokenizer.json"
        try:
            self.restore(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(
                f"{path} is missing; the run's tokenizer cannot be loaded"
            ) from None
        except Exception as e:
            raise CheckpointError(
                f"{path} is corrupt ({type(e).__name__}: {str(e)[:80]}); "
                "retrain the run or restore the file"
            ) from None


@dataclass
class Metric:
    """One number a task reports, with its 95% interval and what guessing would score."""

    value: float
    ci: tuple[float, float] | None = None
    chance: float | None = None
    higher_is_better: bool = True
    n: int | None = None  # examples behind this number, when not the task's n

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "higher_is_better": self.higher_is_better}
        if self.n is not None:
            out["n"] = self.n
        if self.ci is not None:
            out["ci"] = list(self.ci)
        if self.chance is not None:
            out["chance"] = self.chance
        return out


@dataclass
class TaskResult:
    metrics: dict[str, Metric]
    n: int = 0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": {k: m.to_json() for k, m in self.metrics.items()},
            "n": self.n,
            "notes": self.notes,
            **self.extra,
        }


class Task:
    """An evaluation task, registered in the ``task`` slot: ``factory(cfg) -> Task``.

    ``evaluate(lm, data=, limit=)`` talks to the model only through ``lm``, an
    ``evaluate.LanguageModel`` (a trained run in practice, a fixture model in tests):
    ``tokenizer.doc_id``, ``block_size``, ``encode``/``decode``, ``logprobs(requests)`` and
    ``score``/``score_many`` (log-likelihoods, batched), ``fit`` (cut text to a token budget)
    and ``generate(prompt, max_new_tokens, stop)`` (greedy). Its docstring says how inputs
    longer than the context are cut. (A LoadedRun also has ``model``, ``config`` and
    ``device``, which the bpb task uses.)

    ``data`` is a local file or folder in the task's columns, or None for the task's own
    default (a hub dataset); ``limit`` caps the examples (None: ``default_limit``, chosen so
    that ``klm eval --task all`` stays quick). ``data_dir`` names the subfolder the task reads
    in a folder laid out like ../shared/data/eval, so one ``--data`` serves ``--task all``.
    Every Metric carries its 95% interval and chance level; ``notes`` says what was scored and
    how prompts were cut to fit the context.
    """

    name = "task"
    data_dir: str | None = None
    default_limit: int | None = None

    def evaluate(self, lm: Any, *, data: str | None = None, limit: int | None = None) -> TaskResult:
        raise NotImplementedError
