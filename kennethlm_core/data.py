"""From a corpus to batches: chunks, a stable split, a token cache on disk, random windows.

1. Documents are cut into chunks of at most CHUNK_CHARS characters (at a line break or space
   when there is one), so a corpus of a few huge files still gets a fair validation split.
2. A chunk is in validation when a hash of its id falls below ``val_fraction``: the split of a
   chunk never changes when other documents are added. A domain with no validation chunk gets
   its lowest-hash chunk moved to validation, so every domain is scored.
3. Validation chunks are ordered by domain's first chunk, then hash; any prefix of that order
   is a fixed, tokenizer-independent slice ("the first 64 KB of validation").
4. Each split is tokenized once into memory-mapped arrays (every chunk preceded by the
   tokenizer's document token) under ``$KLM_CACHE`` (default ~/.cache/kennethlm), keyed by
   the corpus and tokenizer fingerprints; later runs reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kennethlm_core.components import Corpus, Document, Tokenizer
from kennethlm_core.config import RunConfig, corpus_component
from kennethlm_core.errors import DataError

CHUNK_CHARS = 8192
FORMAT = 1  # bump when the cache layout or the split rule changes


def cache_root() -> Path:
    return Path(os.environ.get("KLM_CACHE") or Path.home() / ".cache" / "kennethlm")


def chunk(doc: Document) -> Iterator[Document]:
    """Cut a document into pieces of at most CHUNK_CHARS; joined, they give the text back."""
    text, start, i = doc.text, 0, 0
    if len(text) <= CHUNK_CHARS:
        yield doc
        return
    while start < len(text):
        end = min(len(text), start + CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind("\n", start + CHUNK_CHARS // 2, end)
            if cut < 0:
                cut = text.rfind(" ", start + CHUNK_CHARS // 2, end)
            if cut >= 0:
                end = cut + 1
        yield Document(f"{doc.id}#{i}", text[start:end], doc.domain)
        start, i = end, i + 1


def unit_hash(key: str, salt: str = "split") -> float:
    """A stable pseudo-random number in [0, 1) for a string."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=salt.encode()[:16])
    return int.from_bytes(digest.digest(), "big") / 2**64


def build_corpus(cfg: RunConfig, registry: Any) -> Corpus:
    return corpus_component(cfg.corpus, registry).factory(cfg)


def chunks_of(corpus: Corpus) -> Iterator[Document]:
    for doc in corpus.documents():
        yield from chunk(doc)


# -- the split plan (text only, no tokenizer) ----------------------------------------------


@dataclass
class Plan:
    """Which chunk (by position in corpus order) goes where."""

    domains: list[str]
    domain: np.ndarray  # domain index per chunk
    nbytes: np.ndarray  # UTF-8 bytes per chunk
    val_order: np.ndarray  # chunk positions of the validation split, in slice order
    tok_sample: np.ndarray  # chunk positions used to train the tokenizer

    @property
    def n_chunks(self) -> int:
        return len(self.domain)


def plan_split(corpus: Corpus, val_fraction: float, tokenizer_bytes: int) -> Plan:
    domains: dict[str, int] = {}
    dom, nbytes, h_split, h_tok = [], [], [], []
    for c in chunks_of(corpus):
        dom.append(domains.setdefault(c.domain, len(domains)))
        nbytes.append(len(c.text.encode("utf-8")))
        h_split.append(unit_hash(c.id))
        h_tok.append(unit_hash(c.id, salt="tokenizer"))
    if not dom or sum(nbytes) == 0:
        raise DataError(
            f"corpus '{corpus.name}' has no text; check the files and the 'text' column"
        )
    dom_a, bytes_a, h = np.array(dom), np.array(nbytes, dtype=np.int64), np.array(h_split)
    is_val = h < val_fraction
    firsts = []
    for d in range(len(domains)):  # every domain gets at least its lowest-hash chunk
        members = np.flatnonzero(dom_a == d)
        first = members[np.argmin(h[members])]
        is_val[first] = True
        firsts.append(first)
    if is_val.all():
        raise DataError(
            f"corpus '{corpus.name}' is too small to split ({len(dom)} chunks, "
            f"{len(domains)} domains); add text, or use fewer domains"
        )
    chosen = set(firsts)
    val_by_hash = np.flatnonzero(is_val)[np.argsort(h[is_val], kind="stable")]
    rest = [i for i in val_by_hash if i not in chosen]
    firsts.sort(key=lambda i: h[i])
    train = np.flatnonzero(~is_val)
    by_tok_hash = train[np.argsort(np.array(h_tok)[train], kind="stable")]
    take = np.searchsorted(np.cumsum(bytes_a[by_tok_hash]), tokenizer_bytes) + 1
    names = sorted(domains, key=domains.get)
    return Plan(names, dom_a, bytes_a, np.array(firsts + rest, dtype=np.int64), by_tok_hash[:take])


# -- token splits --------------------------------------------------------------------------


@dataclass
class TokenSplit:
    """A tokenized split: one token array; per document its start, domain and byte count."""

    tokens: np.ndarray  # (N,) uint16 or uint32, each document preceded by the document token
    docs: np.ndarray  # (D, 3) int64: start of the document token, domain index, UTF-8 bytes
    domains: list[str]

    @property
    def n_bytes(self) -> int:
        return int(self.docs[:, 2].sum())

    def head(self, max_bytes: int) -> TokenSplit:
        """The first documents holding at least ``max_bytes`` bytes (or all of them)."""
        k = int(np.searchsorted(np.cumsum(self.docs[:, 2]), max_bytes)) + 1
        k = min(k, len(self.docs))
        end = int(self.docs[k, 0]) if k < len(self.docs) else len(self.tokens)
        return TokenSplit(self.tokens[:end], self.docs[:k], self.domains)

    def token_domains(self) -> np.ndarray:
        """The domain index of every token."""
        starts = np.append(self.docs[:, 0], len(self.tokens))
        return np.repeat(self.docs[:, 1], np.diff(starts))

    def save(self, directory: Path, name: str) -> None:
        np.save(directory / f"{name}.tokens.npy", self.tokens)
        np.save(directory / f"{name}.docs.npy", self.docs)

    @classmethod
    def load(cls, directory: Path, name: str, domains: list[str]) -> TokenSplit:
        tokens = np.load(directory / f"{name}.tokens.npy", mmap_mode="r", allow_pickle=False)
        docs = np.load(directory / f"{name}.docs.npy", allow_pickle=False)
        return cls(tokens, docs, domains)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: TokenSplit
    val: TokenSplit
    cache_dir: Path
    reused: bool


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def prepare_data(
    cfg: RunConfig,
    registry: Any,
    tokenizer: Tokenizer | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> PreparedData:
    """Tokenized train and validation splits for the run's corpus, from the cache if possible.

    Without ``tokenizer`` the run's tokenizer is trained on the training split (or taken from
    the cache); with one (a resumed run, an evaluation) it is used as it is.
    """
    corpus = build_corpus(cfg, registry)
    split_key = _key(FORMAT, corpus.fingerprint(), cfg.val_fraction, CHUNK_CHARS)
    plan: Plan | None = None

    def get_plan() -> Plan:
        nonlocal plan
        if plan is None:
            plan = plan_split(corpus, cfg.val_fraction, cfg.tokenizer_train_bytes)
        return plan

    if tokenizer is None:
        tokenizer = registry.get("tokenizer", cfg.tokenizer).factory(cfg)
        tok_file = (
            cache_root()
            / "tokenizers"
            / (_key(split_key, tokenizer.name, cfg.vocab_size, cfg.tokenizer_train_bytes) + ".json")
        )
        if tok_file.exists():
            tokenizer.restore(tok_file.read_text(encoding="utf-8"))
        else:
            p = get_plan()
            log(f"training the {tokenizer.name} tokenizer on {_mb(p.nbytes[p.tok_sample].sum())}")
            wanted = set(p.tok_sample.tolist())
            tokenizer.train(c.text for i, c in enumerate(chunks_of(corpus)) if i in wanted)
            tok_file.parent.mkdir(parents=True, exist_ok=True)
            from kennethlm_core.checkpoint import atomic_write_text

            atomic_write_text(tok_file, tokenizer.to_json())

    directory = cache_root() / "tokens" / _key(split_key, tokenizer.fingerprint())
    if (directory / "meta.json").exists():
        meta = json.loads((directory / "meta.json").read_text())
        log(f"reusing the token cache {directory}")
        train = TokenSplit.load(directory, "train", meta["domains"])
        val = TokenSplit.load(directory, "val", meta["domains"])
        return PreparedData(tokenizer, train, val, directory, reused=True)

    p = get_plan()
    log(f"tokenizing {corpus.name} ({_mb(p.nbytes.sum())}) with {tokenizer.name}")
    train, val = _tokenize(corpus, p, tokenizer)
    _publish(directory, train, val, p.domains, corpus, tokenizer)
    return PreparedData(tokenizer, train, val, directory, reused=False)


def _tokenize(corpus: Corpus, plan: Plan, tok: Tokenizer) -> tuple[TokenSplit, TokenSplit]:
    dtype = token_dtype(tok.vocab_size)
    val_rank = np.full(plan.n_chunks, -1, dtype=np.int64)
    val_rank[plan.val_order] = np.arange(len(plan.val_order))
    train_parts: list[list[np.ndarray]] = [[] for _ in plan.domains]
    val_parts: list[np.ndarray | None] = [None] * len(plan.val_order)
    for i, c in enumerate(chunks_of(corpus)):
        ids = np.array([tok.doc_id, *tok.encode(c.text)], dtype=dtype)
        if val_rank[i] >= 0:
            val_parts[val_rank[i]] = ids
        else:
            train_parts[plan.domain[i]].append(ids)
    train_chunks = np.array(
        [
            i
            for d in range(len(plan.domains))
            for i in np.flatnonzero((plan.domain == d) & (val_rank < 0))
        ]
    )
    train = _join([a for parts in train_parts for a in parts], plan, train_chunks)
    return train, _join(val_parts, plan, plan.val_order)


def _join(parts: list, plan: Plan, chunk_ids: np.ndarray) -> TokenSplit:
    lengths = np.array([len(a) for a in parts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    docs = np.stack([starts, plan.domain[chunk_ids], plan.nbytes[chunk_ids]], axis=1)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return TokenSplit(tokens, docs.astype(np.int64), plan.domains)


def _publish(directory, train, val, domains, corpus, tokenizer) -> None:
    """Write the cache into a temporary folder, then rename it into place (atomic)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        train.save(tmp, "train")
        val.save(tmp, "val")
        meta = {
            "format": FORMAT,
            "corpus": corpus.name,
            "corpus_fingerprint": corpus.fingerprint(),
            "tokenizer": tokenizer.name,
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "domains": domains,
            "train_tokens": len(train.tokens),
            "val_tokens": len(val.tokens),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.rename(tmp, directory)
    except OSError:
        if not (directory / "meta.json").exists():  # someone else finished first: fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _key(*parts: Any) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- batches -------------------------------------------------------------------------------


class Batches:
    """Random training windows: x is block_size tokens, y the same shifted by one.

    The order is drawn from its own generator, seeded by the run's seed, so it is the same for
    every arm of a comparison and its state is saved in checkpoints.
    """

    def __init__(self, split: TokenSplit, block_size: int, batch_size: int, seed: int, device):
        if len(split.tokens) < block_size + 2:
            raise DataError(
                f"the training split has {len(split.tokens)} tokens, fewer than one window of "
                f"block_size {block_size}; use a bigger corpus or a smaller --block-size"
            )
        self.tokens, self.T, self.B, self.device = split.tokens, block_size, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.T - 1, (self.B,), generator=self.generator)
        window = self.tokens[starts.numpy()[:, None] + self.offsets].astype(np.int64)
        xy = torch.from_numpy(window)
        if self.device.type == "cuda":
            xy = xy.pin_memory().to(self.device, non_blocking=True)
        else:
            xy = xy.to(self.device)
        return xy[:, :-1], xy[:, 1:]

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
