"""Base classes for components whose interface is more than a function call.

Attention kernels, norms and MLPs are plain ``nn.Module`` factories (see hookspecs.py). The
components below have several entry points, so they get a small base class with working
defaults: subclass it and override what your idea changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
import torch
from torch import nn

from kennethlm_core.atomic import atomic_write_text
from kennethlm_core.errors import CheckpointError, ConfigError


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


class Counted(nn.Module):
    """A model part trained by counting the training tokens rather than by gradients (an
    n-gram model, ``--tweak ngram``). Its counts are buffers, saved with the weights.

    A new run calls ``count(tokens)`` once, before its first step, with the whole training
    split (a resumed or branched run loads the counts from its checkpoint), and charges the
    time to its training clock. Counts differ in size from run to run, so the buffers are
    built empty and ``resize`` makes them the size of those being loaded.
    """

    counted = True  # what checkpoint.load_state looks for (it sits below this module)

    def count(self, tokens: Any) -> None:
        """Count ``tokens``, the (N,) training token ids, into the buffers."""
        raise NotImplementedError

    def resize(self, saved: dict[str, torch.Tensor]) -> None:
        """Make each buffer named in ``saved`` an empty tensor of that one's shape and dtype."""
        for name, t in saved.items():
            if name in self._buffers:
                setattr(self, name, torch.empty_like(t, device=self._buffers[name].device))


@dataclass(frozen=True)
class Document:
    """One document of a corpus. ``source`` names where it comes from (a file's ``source``
    column, a hub corpus' config) and ``license`` its licence as the rows state it; both are
    "" when unknown, and only ``klm data export`` reads them."""

    id: str
    text: str
    domain: str = "default"
    source: str = ""
    license: str = ""


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
        """The token cache encodes through this, a few MB of text at a time: override it to
        use several cores."""
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
        atomic_write_text(Path(directory) / "tokenizer.json", self.to_json())

    def load(self, directory: str | os.PathLike) -> None:
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


class HFTokenizer(Tokenizer):
    """A subword tokenizer trained with the Hugging Face ``tokenizers`` library, over bytes.

    The ByteLevel pre-tokenizer spells text as its UTF-8 bytes (one printable stand-in
    character per byte) and splits it GPT-2 style; the ByteLevel decoder turns the bytes back
    into text. All 256 bytes are in the vocabulary, so every text round-trips exactly and no
    token is ever unknown. The document token ``<|doc|>`` is a special token that encoding
    never produces: the literal text "<|doc|>" is spelled in ordinary tokens.

    ``vocab_size`` counts every token, the document token included (0: DEFAULT_VOCAB). A
    subclass names the library's model and trainer (see the bpe and unigram plugins).
    Training and batch encoding run on all cores (the library is multithreaded).
    """

    DOC = "<|doc|>"
    DEFAULT_VOCAB = 4096

    def __init__(self, vocab_size: int = 0):
        if vocab_size and vocab_size <= 257:
            raise ConfigError(
                f"{self.name} vocab_size must exceed 257 (256 bytes + the document token), "
                f"got {vocab_size}; 0 gives {self.DEFAULT_VOCAB}"
            )
        self.target_size = vocab_size or self.DEFAULT_VOCAB
        self.lib = tokenizers.Tokenizer(self.model())
        self.lib.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
            add_prefix_space=False, use_regex=True
        )
        self.lib.decoder = tokenizers.decoders.ByteLevel()
        self._ready()

    def model(self) -> Any:
        """An untrained ``tokenizers.models`` model, e.g. ``models.BPE()``."""
        raise NotImplementedError

    def trainer(self, **settings: Any) -> Any:
        """The matching ``tokenizers.trainers`` trainer, built with ``settings``."""
        raise NotImplementedError

    def _ready(self) -> None:
        # Not part of the saved JSON, so set after every training and loading.
        self.lib.encode_special_tokens = True

    def train(self, texts: Iterable[str]) -> None:
        trainer = self.trainer(
            vocab_size=self.target_size,
            special_tokens=[self.DOC],
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        self.lib.train_from_iterator(texts, trainer)
        self._ready()

    def encode(self, text: str) -> list[int]:
        return self.lib.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.lib.encode_batch_fast(list(texts), add_special_tokens=False)  # no offsets
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self.lib.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self.lib.get_vocab_size()

    @property
    def doc_id(self) -> int:
        return self.lib.token_to_id(self.DOC)

    def to_json(self) -> str:
        return self.lib.to_str()

    def restore(self, state: str) -> None:
        kind = type(self.model()).__name__
        data = json.loads(state)
        specials = {t.get("content") for t in data.get("added_tokens") or []}
        if data.get("model", {}).get("type") != kind or self.DOC not in specials:
            raise ValueError(f"not a {self.name} tokenizer ({kind} with {self.DOC})")
        self.lib = tokenizers.Tokenizer.from_str(state)
        self._ready()


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

    A task implements ``measure(lm, data=, limit=)``; klm calls ``evaluate`` (the same
    arguments), which resolves the limit first. ``measure`` talks to the model only through
    ``lm``, an ``evaluate.LanguageModel`` (a trained run in practice, a fixture model in
    tests): ``tokenizer.doc_id``, ``block_size``, ``encode``/``decode``, ``logprobs(requests)``
    and ``score``/``score_many`` (log-likelihoods, batched), ``fit`` (cut text to a token
    budget) and ``generate(prompt, max_new_tokens, stop)`` (greedy). Its docstring says how
    inputs longer than the context are cut. (A LoadedRun also has ``model``, ``config`` and
    ``device``, which the bpb task uses.)

    ``data`` is a local file or folder in the task's columns, or None for the task's own
    default (a hub dataset); ``limit`` caps the examples (None: ``default_limit``, chosen so
    that ``klm eval --task all`` stays quick; ``measure`` gets it resolved). ``data_dir`` names
    the subfolder the task reads in a folder laid out like ../shared/data/eval, so one
    ``--data`` serves ``--task all``. Every Metric carries its 95% interval and chance level;
    ``notes`` says what was scored and how prompts were cut to fit the context.
    """

    name = "task"
    data_dir: str | None = None
    default_limit: int | None = None

    def evaluate(self, lm: Any, *, data: str | None = None, limit: int | None = None) -> TaskResult:
        """The task's result on ``lm``: ``measure``, with ``limit`` None as ``default_limit``."""
        return self.measure(lm, data=data, limit=self.default_limit if limit is None else limit)

    def measure(self, lm: Any, *, data: str | None = None, limit: int | None = None) -> TaskResult:
        raise NotImplementedError


@dataclass
class Loop:
    """What a training-loop callback sees: the live run. ``clock`` is the training clock
    (``clock.step``, ``clock.tokens``, ``clock.train_time``); ``is_main`` is False in every
    process of a multi-process run but the first (which alone evaluates, logs and writes).
    ``resumed``: the run continues its own checkpoint. ``loss``: the last step's training
    loss, a 0-dim tensor on the device (reading it waits for the device)."""

    cfg: Any
    out: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    clock: Any
    log: Any
    is_main: bool = True
    resumed: bool = False
    loss: torch.Tensor | None = None


class Callback:
    """Code the trainer runs at fixed points of its loop (the ``callback`` slot:
    ``factory(cfg) -> Callback``); every method is optional and gets the live ``Loop``.

    - ``started(loop)``: the model and optimizer are built (and restored, when resuming);
    - ``stepped(loop)``: after each optimizer step, in every process (``loop.step`` counts it);
    - ``evaluating(loop)``: a context manager around every evaluation and around the final
      scoring and saving of ``model.safetensors`` (an EMA swaps its weights in there);
    - ``evaluated(loop, row)``: each row written to metrics.jsonl;
    - ``finished(loop, summary)``: after summary.json is written;
    - ``state_dict()`` / ``load_state_dict(state)``: tensors kept in the checkpoint, so that a
      resumed run continues the callback exactly.

    Only the first process of a multi-process run evaluates, so only there are
    ``evaluating``, ``evaluated`` and ``finished`` called. A callback must not change the
    training itself (the weights between steps, the data): that is what the other slots are for.
    """

    def started(self, loop: Loop) -> None:
        pass

    def stepped(self, loop: Loop) -> None:
        pass

    def evaluating(self, loop: Loop) -> Any:
        return contextlib.nullcontext()

    def evaluated(self, loop: Loop, row: dict[str, Any]) -> None:
        pass

    def finished(self, loop: Loop, summary: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass
