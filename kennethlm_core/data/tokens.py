"""A tokenized split (``TokenSplit``: its tokens and a row per chunk), the three splits of a
prepared corpus (``PreparedData``), and the statistics of each domain (``domain_stats``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kennethlm_core.components import Tokenizer

# The columns of TokenSplit.rows, one row per chunk.
START, END, DOMAIN, BYTES, DOC, DOC_START = range(6)


@dataclass
class TokenSplit:
    """A tokenized split: one token array, and one row per chunk (columns START ... DOC_START).

    Each document's tokens are contiguous and start with the document token; a row is one
    chunk of a document: its tokens ``[START, END)`` (a document's first chunk includes the
    document token), its domain, its UTF-8 bytes, the document it belongs to (numbered within
    the split) and where that document's tokens start. Rows are in slice order (training: in
    layout order), so ``head`` takes a fixed slice.
    """

    tokens: np.ndarray  # (N,) uint16 or uint32
    rows: np.ndarray  # (C, 6) int64
    domains: list[str]

    @property
    def n_bytes(self) -> int:
        return int(self.rows[:, BYTES].sum())

    @property
    def n_documents(self) -> int:
        return len(np.unique(self.rows[:, DOC]))

    def head(self, max_bytes: int, every_domain: bool = True) -> TokenSplit:
        """The first chunks holding at least ``max_bytes`` bytes (or all of them). With
        ``every_domain``, never fewer than the leading chunks of distinct domains: in slice
        order, one per domain, so that every slice of a split scores every domain. The tokens
        stay whole: a chunk's context is its document's text before it."""
        k = int(np.searchsorted(np.cumsum(self.rows[:, BYTES]), max_bytes)) + 1
        if every_domain:
            domains = self.rows[:, DOMAIN].tolist()
            repeat = (i for i in range(1, len(domains)) if domains[i] in domains[:i])
            k = max(k, next(repeat, len(domains)))
        return TokenSplit(self.tokens, self.rows[: min(k, len(self.rows))], self.domains)

    def domain_tokens(self) -> np.ndarray:
        """Tokens per domain (document tokens included), in the order of ``domains``."""
        lengths = self.rows[:, END] - self.rows[:, START]
        counts = np.bincount(self.rows[:, DOMAIN], weights=lengths, minlength=len(self.domains))
        return counts.astype(np.int64)

    def domain_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text per domain, in the order of ``domains``."""
        counts = np.bincount(self.rows[:, DOMAIN], self.rows[:, BYTES], len(self.domains))
        return counts.astype(np.int64)

    def domain_starts(self) -> np.ndarray:
        """Where each domain's tokens begin; a split grouped by domain (training) only."""
        return np.concatenate([[0], np.cumsum(self.domain_tokens())[:-1]])

    @classmethod
    def load(cls, directory: Path, name: str, domains: list[str]) -> TokenSplit:
        tokens = np.load(directory / f"{name}.tokens.npy", mmap_mode="r", allow_pickle=False)
        rows = np.load(directory / f"{name}.rows.npy", allow_pickle=False)
        return cls(tokens, rows, domains)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: TokenSplit
    val: TokenSplit
    test: TokenSplit
    cache_dir: Path
    reused: bool
    meta: dict[str, Any] = field(default_factory=dict)  # the cache's meta.json

    def split(self, name: str) -> TokenSplit:
        return {"train": self.train, "validation": self.val, "test": self.test}[name]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


# -- statistics ------------------------------------------------------------------------------


def domain_stats(data: PreparedData) -> dict[str, dict[str, float]]:
    """Per domain, and for "total": documents (all, and in validation and test), bytes, tokens
    (text only, not the document tokens), bytes per token and the domain's share of the
    training tokens."""
    domains, meta = data.train.domains, data.meta
    zeros = [0] * len(domains)
    documents = np.array(meta.get("documents", zeros), dtype=np.int64)
    in_val = np.array(meta.get("validation_documents", zeros), dtype=np.int64)
    in_test = np.array(meta.get("test_documents", zeros), dtype=np.int64)
    nbytes, tokens = (np.zeros(len(domains), dtype=np.int64) for _ in range(2))
    for split in (data.train, data.val, data.test):
        nbytes += split.domain_bytes()
        tokens += split.domain_tokens()
    tokens -= documents  # each document starts with a document token, which stands for no text
    share = data.train.domain_tokens() / max(1, len(data.train.tokens))

    def row(i) -> dict[str, float]:
        return {
            "documents": int(documents[i].sum()),
            "validation_documents": int(in_val[i].sum()),
            "test_documents": int(in_test[i].sum()),
            "bytes": int(nbytes[i].sum()),
            "tokens": int(tokens[i].sum()),
            "bytes_per_token": float(nbytes[i].sum() / max(1, tokens[i].sum())),
            "train_share": float(share[i].sum()),
        }

    out = {name: row(d) for d, name in enumerate(domains)}
    out["total"] = row(slice(None))
    return out
