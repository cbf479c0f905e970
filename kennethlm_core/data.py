"""From a corpus to batches: chunks, a stable split, a token cache on disk, weighted windows.

1. Documents are cut into chunks of at most CHUNK_CHARS characters (at a line break or space
   when there is one), so a corpus of a few huge files still gets a fair validation split.
2. A chunk is in validation when a hash of its id falls below ``val_fraction``: the split of a
   chunk never changes when other documents are added. A domain with no validation chunk gets
   its lowest-hash chunk moved to validation, so every domain is scored.
3. Validation chunks are ordered by domain's first chunk, then hash; any prefix of that order
   is a fixed, tokenizer-independent slice ("the first 64 KB of validation").
4. Each split is tokenized once into memory-mapped arrays (every chunk preceded by the
   tokenizer's document token) under ``$KLM_CACHE`` (default ~/.cache/kennethlm), keyed by
   the corpus and tokenizer fingerprints; later runs reuse them. Building streams: chunks are
   encoded in batches (``Tokenizer.encode_batch``; the tokenizers-library ones use every
   core) and appended to a file, which is then copied into the training array (grouped by
   domain) and the validation array (in slice order). Neither the text nor its tokens are
   ever held in memory whole.
5. Training windows are drawn domain first, by the weights of the mix (``--mix``; by default
   each domain's share of the training tokens), then at a uniform offset in that domain.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kennethlm_core.components import Corpus, Document, Tokenizer
from kennethlm_core.config import RunConfig, corpus_component, parse_mix
from kennethlm_core.errors import DataError

CHUNK_CHARS = 8192
FORMAT = 2  # bump when the cache layout or the split rule changes
BATCH_CHARS = 1 << 21  # text handed to the tokenizer at once when building the cache


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
    documents: np.ndarray  # documents (before chunking) per domain

    @property
    def n_chunks(self) -> int:
        return len(self.domain)

    def train_order(self) -> np.ndarray:
        """Chunk positions of the training split: grouped by domain, corpus order within."""
        is_val = np.zeros(self.n_chunks, dtype=bool)
        is_val[self.val_order] = True
        train = np.flatnonzero(~is_val)
        return train[np.argsort(self.domain[train], kind="stable")]


def plan_split(corpus: Corpus, val_fraction: float, tokenizer_bytes: int) -> Plan:
    domains: dict[str, int] = {}
    dom, nbytes, h_split, h_tok, n_docs = [], [], [], [], []
    for doc in corpus.documents():
        d = domains.setdefault(doc.domain, len(domains))
        if d == len(n_docs):
            n_docs.append(0)
        n_docs[d] += 1
        for c in chunk(doc):
            dom.append(d)
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
    return Plan(
        sorted(domains, key=domains.get),
        dom_a,
        bytes_a,
        np.array(firsts + rest, dtype=np.int64),
        by_tok_hash[:take],
        np.array(n_docs, dtype=np.int64),
    )


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

    def doc_lengths(self) -> np.ndarray:
        """Tokens per document, its document token included."""
        return np.diff(np.append(self.docs[:, 0], len(self.tokens)))

    def token_domains(self) -> np.ndarray:
        """The domain index of every token."""
        return np.repeat(self.docs[:, 1], self.doc_lengths())

    def domain_tokens(self) -> np.ndarray:
        """Tokens per domain (document tokens included), in the order of ``domains``."""
        return np.bincount(
            self.docs[:, 1], weights=self.doc_lengths(), minlength=len(self.domains)
        ).astype(np.int64)

    def domain_starts(self) -> np.ndarray:
        """Where each domain's tokens begin; a split grouped by domain (training) only."""
        return np.concatenate([[0], np.cumsum(self.domain_tokens())[:-1]])

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
    meta: dict[str, Any] = field(default_factory=dict)  # the cache's meta.json


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
        recipe = (tokenizer.name, tokenizer.fingerprint(), cfg.vocab_size)
        tok_file = (
            cache_root()
            / "tokenizers"
            / (_key(split_key, *recipe, cfg.tokenizer_train_bytes) + ".json")
        )
        if tok_file.exists():
            tokenizer.restore(tok_file.read_text(encoding="utf-8"))
        else:
            p = get_plan()
            log(f"training the {tokenizer.name} tokenizer on {_mb(p.nbytes[p.tok_sample].sum())}")
            wanted = np.zeros(p.n_chunks, dtype=bool)
            wanted[p.tok_sample] = True
            tokenizer.train(c.text for i, c in enumerate(chunks_of(corpus)) if wanted[i])
            tok_file.parent.mkdir(parents=True, exist_ok=True)
            from kennethlm_core.checkpoint import atomic_write_text

            atomic_write_text(tok_file, tokenizer.to_json())

    directory = cache_root() / "tokens" / _key(split_key, tokenizer.fingerprint())
    reused = (directory / "meta.json").exists()
    if reused:
        log(f"reusing the token cache {directory}")
    else:
        p = get_plan()
        log(f"tokenizing {corpus.name} ({_mb(p.nbytes.sum())}) with {tokenizer.name}")
        _build_cache(directory, corpus, p, tokenizer)
    meta = json.loads((directory / "meta.json").read_text())
    train = TokenSplit.load(directory, "train", meta["domains"])
    val = TokenSplit.load(directory, "val", meta["domains"])
    return PreparedData(tokenizer, train, val, directory, reused, meta)


def _build_cache(directory: Path, corpus: Corpus, plan: Plan, tok: Tokenizer) -> None:
    """Encode every chunk once, then lay out both splits; publish the folder atomically."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        dtype = np.dtype(token_dtype(tok.vocab_size))
        lengths = _encode_chunks(corpus, tok, tmp / "chunks.bin", dtype, plan.n_chunks)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        counts = {}
        for name, order in (("train", plan.train_order()), ("val", plan.val_order)):
            _write_split(tmp, name, tmp / "chunks.bin", bounds, order, plan, dtype)
            counts[f"{name}_tokens"] = int(lengths[order].sum())
        (tmp / "chunks.bin").unlink()
        meta = {
            "format": FORMAT,
            "corpus": corpus.name,
            "corpus_fingerprint": corpus.fingerprint(),
            "tokenizer": tok.name,
            "tokenizer_fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "domains": plan.domains,
            "documents": plan.documents.tolist(),
            **counts,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.rename(tmp, directory)
    except OSError:
        if not (directory / "meta.json").exists():  # someone else finished first: fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encode_chunks(corpus: Corpus, tok: Tokenizer, path: Path, dtype, n: int) -> np.ndarray:
    """Append every chunk, in corpus order, as [document token, *ids] to ``path``.

    Returns the tokens per chunk. Text goes to the tokenizer in batches of about BATCH_CHARS.
    """
    lengths = []
    doc = np.array([tok.doc_id], dtype=dtype).tobytes()
    with open(path, "wb") as f:
        for texts in _text_batches(chunks_of(corpus)):
            for ids in tok.encode_batch(texts):
                f.write(doc + np.asarray(ids, dtype=dtype).tobytes())
                lengths.append(len(ids) + 1)
    if len(lengths) != n:
        raise DataError(
            f"corpus '{corpus.name}' changed while it was being read; run again when it is still"
        )
    return np.array(lengths, dtype=np.int64)


def _text_batches(chunks: Iterator[Document]) -> Iterator[list[str]]:
    batch, size = [], 0
    for c in chunks:
        batch.append(c.text)
        size += len(c.text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_split(tmp, name, source, bounds, order, plan, dtype) -> None:
    """``name``.tokens.npy: the chunks ``order`` names, copied from ``source`` in that order;
    ``name``.docs.npy: each one's start, domain and bytes."""
    lengths = bounds[order + 1] - bounds[order]
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (int(lengths.sum()),),
    }
    runs = np.flatnonzero(np.diff(order, prepend=-2) != 1)  # consecutive chunks copy at once
    with open(source, "rb") as src, open(tmp / f"{name}.tokens.npy", "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        for a, b in zip(runs, [*runs[1:], len(order)], strict=True):
            start, end = bounds[order[a]], bounds[order[b - 1] + 1]
            src.seek(int(start) * dtype.itemsize)
            _copy(src, out, int(end - start) * dtype.itemsize)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    docs = np.stack([starts, plan.domain[order], plan.nbytes[order]], axis=1)
    np.save(tmp / f"{name}.docs.npy", docs.astype(np.int64))


def _copy(src, out, nbytes: int, block: int = 1 << 24) -> None:
    while nbytes > 0:
        data = src.read(min(block, nbytes))
        out.write(data)
        nbytes -= len(data)


def _key(*parts: Any) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- statistics ------------------------------------------------------------------------------


def domain_stats(data: PreparedData) -> dict[str, dict[str, float]]:
    """Per domain, and for "total": documents, bytes, tokens (text only, not the document
    tokens), bytes per token and the domain's share of the training tokens."""
    domains = data.train.domains
    documents = np.array(data.meta.get("documents", [0] * len(domains)), dtype=np.int64)
    chunks, nbytes, tokens = (np.zeros(len(domains), dtype=np.int64) for _ in range(3))
    for split in (data.train, data.val):
        dom = split.docs[:, 1]
        chunks += np.bincount(dom, minlength=len(domains))
        nbytes += np.bincount(dom, weights=split.docs[:, 2], minlength=len(domains)).astype(int)
        tokens += split.domain_tokens()
    tokens -= chunks  # each chunk starts with a document token, which stands for no text
    share = data.train.domain_tokens() / max(1, len(data.train.tokens))

    def row(i) -> dict[str, float]:
        return {
            "documents": int(documents[i].sum()),
            "bytes": int(nbytes[i].sum()),
            "tokens": int(tokens[i].sum()),
            "bytes_per_token": float(nbytes[i].sum() / max(1, tokens[i].sum())),
            "train_share": float(share[i].sum()),
        }

    out = {name: row(d) for d, name in enumerate(domains)}
    out["total"] = row(slice(None))
    return out


# -- the training mix ------------------------------------------------------------------------


def mix_weights(mix: str, split: TokenSplit, block_size: int) -> dict[str, float]:
    """The weight of every domain in the training batches, normalised.

    ``mix`` is "books=0.5,speech=0.3,wiki=0.2" (domains left out get 0) or "" for each
    domain's share of the training tokens. Weights already summing to 1 (within 1e-4) are kept
    as given, so that the recorded mix reproduces itself exactly.
    """
    available = split.domain_tokens()
    usable = available > block_size  # room for at least one window of block_size + 1 tokens
    if mix:
        asked = parse_mix(mix)
        unknown = [d for d in asked if d not in split.domains]
        if unknown:
            raise DataError(
                f"--mix names domain '{unknown[0]}', which this corpus does not have; "
                f"its domains: {', '.join(split.domains)}"
            )
        weights = np.array([asked.get(d, 0.0) for d in split.domains])
        for d, name in enumerate(split.domains):
            if weights[d] > 0 and not usable[d]:
                raise DataError(
                    f"domain '{name}' has {available[d]} training tokens, too few for one window "
                    f"of block_size {block_size}; leave it out of --mix or lower --block-size"
                )
    else:
        weights = np.where(usable, available, 0).astype(np.float64)
    if weights.sum() <= 0:
        raise DataError(
            f"the training split has {len(split.tokens)} tokens, too few for one window of "
            f"block_size {block_size} in any domain; use a bigger corpus or a smaller --block-size"
        )
    if abs(weights.sum() - 1) > 1e-4:
        weights = np.array([float(f"{w:.6g}") for w in weights / weights.sum()])
    return dict(zip(split.domains, weights.tolist(), strict=True))


def format_mix(weights: dict[str, float]) -> str:
    """{"books": 0.5, "speech": 0.5} -> "books=0.5,speech=0.5" (what config.json records)."""
    return ",".join(f"{d}={w:.6g}" for d, w in weights.items())


# -- batches -------------------------------------------------------------------------------


class Batches:
    """Random training windows: x is block_size tokens, y the same shifted by one.

    Each window picks a domain by ``weights`` (one per domain of the split; default: each
    domain's share of the tokens), then a uniform start inside that domain's tokens, so a
    window never crosses domains. The order comes from its own generator, seeded by the run's
    seed: the same for every arm of a comparison, and saved in checkpoints.
    """

    def __init__(
        self,
        split: TokenSplit,
        block_size: int,
        batch_size: int,
        seed: int,
        device,
        weights: Sequence[float] | None = None,
    ):
        if weights is None:
            weights = list(mix_weights("", split, block_size).values())
        starts = split.domain_starts()
        windows = split.domain_tokens() - block_size  # possible start positions per domain
        self.tokens, self.T, self.B, self.device = split.tokens, block_size, batch_size, device
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.first = torch.from_numpy(starts)
        self.windows = torch.from_numpy(np.maximum(windows, 0))
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.generator
        dom = torch.multinomial(self.weights, self.B, replacement=True, generator=g)
        at = torch.rand(self.B, generator=g, dtype=torch.float64) * self.windows[dom]
        starts = (self.first[dom] + at.long()).numpy()
        window = self.tokens[starts[:, None] + self.offsets].astype(np.int64)
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
