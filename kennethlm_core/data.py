"""From a corpus to batches: a split by document, a token cache on disk, weighted windows.

1. Every document goes to one split, ``train``, ``validation`` or ``test``, by a hash of its
   id: the split of a document never changes when other documents are added, and no document
   has text in two splits. Each domain gets at least one validation and one test document
   when it has enough documents; a domain too small for that is said so (``Plan.notes``).
2. Documents are cut into chunks of at most CHUNK_CHARS characters (at a line break or space
   when there is one). Chunks are units of bookkeeping, not of context: a document's chunks
   stay next to each other, behind a single document token, so a chunk is scored with its
   document's text before it as context.
3. Validation and test chunks are ordered for slicing: the first chunk of each domain's first
   document, then every other chunk by a hash of its id. Any prefix of that order is a fixed,
   tokenizer-independent slice ("the first 64 KB of validation") that covers every domain.
4. Each split is tokenized once into memory-mapped arrays under ``$KLM_CACHE`` (default
   ~/.cache/kennethlm), keyed by the corpus and tokenizer fingerprints; later runs reuse
   them. Building streams: chunks are encoded in batches (``Tokenizer.encode_batch``; the
   tokenizers-library ones use every core) and appended to a file, which is then copied into
   the three split arrays. Neither the text nor its tokens are ever held in memory whole.
   Processes that need the same cache entry (or tokenizer) build it once: the first holds a
   file lock while it builds, the others wait and reuse it (``build_once``). A corpus that
   changes while it is being read is refused, and nothing of it is cached.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kennethlm_core.components import Corpus, Document, Tokenizer
from kennethlm_core.config import RunConfig, corpus_component, mix_temperature, parse_mix
from kennethlm_core.errors import DataError

CHUNK_CHARS = 8192
FORMAT = 3  # bump when the cache layout or the split rule changes
SPLIT_VERSION = 2  # the split rule: 1 was by chunk (documents leaked), 2 is by document
SPLITS = ("train", "validation", "test")
BATCH_CHARS = 1 << 21  # text handed to the tokenizer at once when building the cache
# The columns of TokenSplit.rows, one row per chunk.
START, END, DOMAIN, BYTES, DOC, DOC_START = range(6)


def cache_root() -> Path:
    return Path(os.environ.get("KLM_CACHE") or Path.home() / ".cache" / "kennethlm")


@contextmanager
def build_lock(path: Path, log: Callable[[str], None] = lambda msg: None) -> Iterator[None]:
    """Hold the lock for building ``path`` (``<path>.lock`` beside it), saying so when another
    process holds it. It is an OS lock (flock): it goes when its process dies, so a builder
    that was killed never blocks the next one. The wait has no limit, since the holder is
    busy building: a large corpus can take longer than any fixed timeout."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another process that is preparing {path} (lock {lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_once(
    path: Path,
    built: Callable[[], bool],
    build: Callable[[], None],
    log: Callable[[str], None] = lambda msg: None,
) -> bool:
    """Run ``build`` for ``path`` unless ``built()`` says it is there; True when it was.

    Parallel processes needing the same thing (runs of a comparison, ranks of a job) would
    otherwise each build it; here the first builds it under ``build_lock`` and the others, once
    the lock is theirs, find it built and reuse it. ``build`` must publish atomically.
    """
    if built():
        return True
    with build_lock(path, log):
        if built():  # built by the process this one waited for
            return True
        build()
    return False


def _corpus_changed(corpus: Corpus) -> DataError:
    return DataError(
        f"corpus '{corpus.name}' changed while it was being prepared, so nothing was cached; "
        "run again once nothing is writing to it"
    )


def _check_unchanged(corpus: Corpus, fingerprint: str) -> None:
    """Refuse to cache what was read from ``corpus`` if its files changed since
    ``fingerprint`` was taken: the entry would be keyed by the old files, and hold the new."""
    if corpus.fingerprint() != fingerprint:
        raise _corpus_changed(corpus)


def _absorb(digest, text: str) -> int:
    """Add a chunk to ``digest``, the running hash of a pass's text; returns its UTF-8 bytes.
    Lengths go in too, so that text moved from one chunk to the next changes the hash."""
    data = text.encode("utf-8")
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)
    return len(data)


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
    """Which document goes to which split, and the chunks of each, all in corpus order."""

    domains: list[str]
    doc_domain: np.ndarray  # domain index per document
    doc_split: np.ndarray  # index into SPLITS per document
    doc_hash: np.ndarray
    doc_chunks: np.ndarray  # chunks per document
    chunk_bytes: np.ndarray  # UTF-8 bytes per chunk
    chunk_hash: np.ndarray
    tok_sample: np.ndarray  # chunk positions used to train the tokenizer
    notes: list[str] = field(default_factory=list)  # domains too small for every split
    digest: str = ""  # a hash of the text the survey read; later passes must read the same

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_bytes)

    @property
    def chunk_doc(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.doc_chunks)), self.doc_chunks)

    @property
    def first_chunk(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.doc_chunks)[:-1]]).astype(np.int64)

    def documents(self, split: str) -> np.ndarray:
        """The documents of a split in the order their tokens are laid out: training grouped
        by domain (corpus order within), validation and test in slice order."""
        docs = np.flatnonzero(self.doc_split == SPLITS.index(split))
        if split == "train":
            return docs[np.argsort(self.doc_domain[docs], kind="stable")]
        return docs[_slice_order(self.doc_domain[docs], self.doc_hash[docs])]

    def chunk_order(self, split: str) -> np.ndarray:
        """Chunk positions of a split in slice order (for training: layout order)."""
        docs = self.documents(split)
        chunks = np.concatenate(
            [np.arange(self.first_chunk[d], self.first_chunk[d] + self.doc_chunks[d]) for d in docs]
            or [np.zeros(0, dtype=np.int64)]
        )
        if split == "train":
            return chunks
        domain = self.doc_domain[self.chunk_doc[chunks]]
        return chunks[_slice_order(domain, self.chunk_hash[chunks])]

    def split_bytes(self, split: str) -> int:
        return int(self.chunk_bytes[np.isin(self.chunk_doc, self.documents(split))].sum())


def _slice_order(domain: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Positions ordered by hash, except that each domain's lowest-hash item comes first."""
    by_hash = np.argsort(h, kind="stable")
    _, first = np.unique(domain[by_hash], return_index=True)
    firsts = by_hash[np.sort(first)]
    rest = by_hash[~np.isin(by_hash, firsts)]
    return np.concatenate([firsts, rest]).astype(np.int64)


def survey(corpus: Corpus) -> Plan:
    """Read ``corpus`` once for its documents, chunks, bytes and hashes; every document in
    train (``plan_split`` assigns the splits)."""
    domains: dict[str, int] = {}
    doc_domain, doc_hash, doc_chunks, chunk_bytes, chunk_hash = [], [], [], [], []
    digest = hashlib.blake2b(digest_size=16)
    for doc in corpus.documents():
        doc_domain.append(domains.setdefault(doc.domain, len(domains)))
        doc_hash.append(unit_hash(doc.id))
        n = 0
        for c in chunk(doc):
            chunk_bytes.append(_absorb(digest, c.text))
            chunk_hash.append(unit_hash(c.id, salt="slice"))
            n += 1
        doc_chunks.append(n)
    if not doc_domain or sum(chunk_bytes) == 0:
        raise DataError(
            f"corpus '{corpus.name}' has no text; check the files and the 'text' column"
        )
    return Plan(
        sorted(domains, key=domains.get),
        np.array(doc_domain, dtype=np.int64),
        np.zeros(len(doc_domain), dtype=np.int64),
        np.array(doc_hash),
        np.array(doc_chunks, dtype=np.int64),
        np.array(chunk_bytes, dtype=np.int64),
        np.array(chunk_hash),
        np.zeros(0, dtype=np.int64),
        digest=digest.hexdigest(),
    )


def plan_split(
    corpus: Corpus, val_fraction: float, tokenizer_bytes: int, test_fraction: float = 0.05
) -> Plan:
    """Assign every document of ``corpus`` to a split by a hash of its id.

    A document whose hash falls below ``val_fraction`` is in validation, below
    ``val_fraction + test_fraction`` in test, else in train. Then every domain is made to
    appear where it can: with three or more documents it gets at least one of each split (its
    lowest-hash documents move to validation and test, its highest-hash one to train if need
    be); with two, one validation and one test document and nothing to train on; with one,
    that document is validation only. Each such case is written to ``Plan.notes``. The
    tokenizer learns from about ``tokenizer_bytes`` of training chunks, chosen by hash.
    """
    plan = survey(corpus)
    dom, h = plan.doc_domain, plan.doc_hash
    split = np.where(h < val_fraction, 1, np.where(h < val_fraction + test_fraction, 2, 0))
    for d, name in enumerate(plan.domains):
        members = np.flatnonzero(dom == d)
        members = members[np.argsort(h[members], kind="stable")]
        if len(members) == 1:
            split[members[0]] = 1
            plan.notes.append(f"domain '{name}' has 1 document: it is in validation only")
            continue
        if len(members) == 2:
            split[members] = (1, 2)
            plan.notes.append(
                f"domain '{name}' has 2 documents: one in validation, one in test, none to train on"
            )
            continue
        for want in (1, 2, 0):  # a domain without a split takes a document from a crowded one
            if not (split[members] == want).any():
                order = members if want else members[::-1]  # train takes the highest hash
                spare = [i for i in order if (split[members] == split[i]).sum() > 1]
                split[spare[0]] = want
    if not (split == 0).any():
        raise DataError(
            f"corpus '{corpus.name}' is too small to split ({len(dom)} documents, "
            f"{len(plan.domains)} domains); add text, or use fewer domains"
        )
    plan.doc_split = split
    train = np.flatnonzero(np.repeat(split, plan.doc_chunks) == 0)
    by_hash = train[np.argsort(plan.chunk_hash[train], kind="stable")]
    take = np.searchsorted(np.cumsum(plan.chunk_bytes[by_hash]), tokenizer_bytes) + 1
    plan.tok_sample = by_hash[:take]
    return plan


# -- token splits --------------------------------------------------------------------------


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


def prepare_data(
    cfg: RunConfig,
    registry: Any,
    tokenizer: Tokenizer | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> PreparedData:
    """Tokenized train, validation and test splits of the run's corpus, from the cache if
    possible.

    Without ``tokenizer`` the run's tokenizer is trained on the training split (or taken from
    the cache); with one (a resumed run, an evaluation) it is used as it is. Parallel calls
    for the same data train and tokenize once (``build_once``).
    """
    corpus = build_corpus(cfg, registry)
    fingerprint = corpus.fingerprint()
    fractions = (cfg.val_fraction, cfg.test_fraction)
    split_key = _key(FORMAT, fingerprint, *fractions, CHUNK_CHARS)
    plan: Plan | None = None

    def get_plan() -> Plan:
        nonlocal plan
        if plan is None:
            plan = plan_split(
                corpus, cfg.val_fraction, cfg.tokenizer_train_bytes, cfg.test_fraction
            )
            for note in plan.notes:
                log(f"note: {note}")
        return plan

    if tokenizer is None:
        tokenizer = registry.get("tokenizer", cfg.tokenizer).factory(cfg)
        recipe = (tokenizer.name, tokenizer.fingerprint(), cfg.vocab_size)
        tok_file = (
            cache_root()
            / "tokenizers"
            / (_key(split_key, *recipe, cfg.tokenizer_train_bytes) + ".json")
        )

        def train() -> None:
            p = get_plan()
            sample = _mb(p.chunk_bytes[p.tok_sample].sum())
            log(f"training the {tokenizer.name} tokenizer on {sample}")
            wanted = np.zeros(p.n_chunks, dtype=bool)
            wanted[p.tok_sample] = True
            tokenizer.train(c.text for i, c in enumerate(chunks_of(corpus)) if wanted[i])
            _check_unchanged(corpus, fingerprint)
            from kennethlm_core.checkpoint import atomic_write_text

            atomic_write_text(tok_file, tokenizer.to_json())

        if build_once(tok_file, tok_file.exists, train, log):
            tokenizer.restore(tok_file.read_text(encoding="utf-8"))

    directory = cache_root() / "tokens" / _key(split_key, tokenizer.fingerprint())

    def tokenize() -> None:
        p = get_plan()
        log(f"tokenizing {corpus.name} ({_mb(p.chunk_bytes.sum())}) with {tokenizer.name}")
        _build_cache(directory, corpus, fingerprint, p, tokenizer)

    reused = build_once(directory, (directory / "meta.json").exists, tokenize, log)
    if reused:
        log(f"reusing the token cache {directory}")
    meta = json.loads((directory / "meta.json").read_text())
    splits = [TokenSplit.load(directory, name, meta["domains"]) for name in SPLITS]
    return PreparedData(tokenizer, *splits, directory, reused, meta)


def prepare_text(
    spec: str,
    cfg: RunConfig,
    registry: Any,
    tokenizer: Tokenizer,
    log: Callable[[str], None] = lambda msg: None,
) -> TokenSplit:
    """Every document of corpus ``spec`` (a path or a corpus name), tokenized whole with
    ``tokenizer``, in corpus order: the text ``klm eval --data`` scores. Cached like a split."""
    corpus = build_corpus(cfg.replace(corpus=spec), registry)
    fingerprint = corpus.fingerprint()
    key = _key(FORMAT, "all", fingerprint, CHUNK_CHARS, tokenizer.fingerprint())
    directory = cache_root() / "tokens" / key

    def tokenize() -> None:
        plan = survey(corpus)
        log(f"tokenizing {corpus.name} ({_mb(plan.chunk_bytes.sum())}) with {tokenizer.name}")
        layout = {"all": _corpus_order}
        _build_cache(directory, corpus, fingerprint, plan, tokenizer, layout)

    if build_once(directory, (directory / "meta.json").exists, tokenize, log):
        log(f"reusing the token cache {directory}")
    meta = json.loads((directory / "meta.json").read_text())
    return TokenSplit.load(directory, "all", meta["domains"])


def _corpus_order(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    docs = np.arange(len(plan.doc_chunks))
    return docs, np.arange(plan.n_chunks)


def _split_layout(name: str) -> Callable[[Plan], tuple[np.ndarray, np.ndarray]]:
    return lambda plan: (plan.documents(name), plan.chunk_order(name))


def _build_cache(
    directory: Path,
    corpus: Corpus,
    fingerprint: str,
    plan: Plan,
    tok: Tokenizer,
    layout: dict | None = None,
) -> None:
    """Encode every chunk once, then lay out each split; publish the folder atomically, unless
    the corpus read differs from the plan's or its files from ``fingerprint`` (the key's).

    ``layout`` maps a split name to (its documents in layout order, its chunks in row order);
    by default the three splits of ``plan``.
    """
    layout = layout or {name: _split_layout(name) for name in SPLITS}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        dtype = np.dtype(token_dtype(tok.vocab_size))
        lengths = _encode_chunks(corpus, tok, tmp / "chunks.bin", dtype, plan)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        counts = {}
        for name, order in layout.items():
            docs, rows = order(plan)
            _write_split(tmp, name, tmp / "chunks.bin", bounds, docs, rows, plan, dtype)
            counts[f"{name}_tokens"] = int(lengths[rows].sum())
            counts[f"{name}_documents"] = np.bincount(
                plan.doc_domain[docs], minlength=len(plan.domains)
            ).tolist()
        (tmp / "chunks.bin").unlink()
        meta = {
            "format": FORMAT,
            "split_version": SPLIT_VERSION,
            "corpus": corpus.name,
            "corpus_fingerprint": fingerprint,
            "tokenizer": tok.name,
            "tokenizer_fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "domains": plan.domains,
            "documents": np.bincount(plan.doc_domain, minlength=len(plan.domains)).tolist(),
            "split_notes": plan.notes,
            **counts,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _check_unchanged(corpus, fingerprint)
        os.rename(tmp, directory)
    except OSError:
        if not (directory / "meta.json").exists():  # someone else finished first: fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encode_chunks(corpus: Corpus, tok: Tokenizer, path: Path, dtype, plan: Plan) -> np.ndarray:
    """Append every chunk, in corpus order, to ``path``: a document's first chunk as
    [document token, *ids], the others as [*ids]. Returns the tokens per chunk.

    Text goes to the tokenizer in batches of about BATCH_CHARS. The text must be the text
    the plan was made from (same chunks, same hash): otherwise the rows' byte counts and
    splits would describe another text than the tokens hold.
    """
    lengths = []
    first = np.zeros(plan.n_chunks, dtype=bool)
    first[plan.first_chunk] = True
    doc = np.array([tok.doc_id], dtype=dtype).tobytes()
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "wb") as f:
        for texts in _text_batches(chunks_of(corpus)):
            if len(lengths) + len(texts) > plan.n_chunks:
                raise _corpus_changed(corpus)
            for text in texts:
                _absorb(digest, text)
            for ids in tok.encode_batch(texts):
                head = first[len(lengths)]
                f.write((doc if head else b"") + np.asarray(ids, dtype=dtype).tobytes())
                lengths.append(len(ids) + head)
    if len(lengths) != plan.n_chunks or digest.hexdigest() != plan.digest:
        raise _corpus_changed(corpus)
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


def _write_split(tmp, name, source, bounds, docs, row_chunks, plan, dtype) -> None:
    """``name``.tokens.npy: the documents ``docs``, each one's chunks copied from ``source`` in
    order; ``name``.rows.npy: a row per chunk of ``row_chunks``, in that order."""
    first, n = plan.first_chunk[docs], plan.doc_chunks[docs]
    chunks = np.concatenate(
        [np.arange(a, a + k) for a, k in zip(first, n, strict=True)] or [np.zeros(0, np.int64)]
    ).astype(np.int64)
    lengths = bounds[chunks + 1] - bounds[chunks]
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (int(lengths.sum()),),
    }
    runs = np.flatnonzero(np.diff(chunks, prepend=-2) != 1)  # consecutive chunks copy at once
    with open(source, "rb") as src, open(tmp / f"{name}.tokens.npy", "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        for a, b in zip(runs, [*runs[1:], len(chunks)], strict=True):
            start, end = bounds[chunks[a]], bounds[chunks[b - 1] + 1]
            src.seek(int(start) * dtype.itemsize)
            _copy(src, out, int(end - start) * dtype.itemsize)
    # where each chunk landed, and which document (numbered in layout order) it belongs to
    at = np.full(plan.n_chunks, -1, dtype=np.int64)
    at[chunks] = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    doc_number = np.full(len(plan.doc_chunks), -1, dtype=np.int64)
    doc_number[docs] = np.arange(len(docs))
    owner = plan.chunk_doc[row_chunks]
    rows = np.stack(
        [
            at[row_chunks],
            at[row_chunks] + bounds[row_chunks + 1] - bounds[row_chunks],
            plan.doc_domain[owner],
            plan.chunk_bytes[row_chunks],
            doc_number[owner],
            at[plan.first_chunk[owner]],
        ],
        axis=1,
    )
    np.save(tmp / f"{name}.rows.npy", rows.astype(np.int64).reshape(-1, 6))


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
        dom = split.rows[:, DOMAIN]
        nbytes += np.bincount(dom, weights=split.rows[:, BYTES], minlength=len(domains)).astype(
            np.int64
        )
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


# -- the training mix ------------------------------------------------------------------------


def mix_weights(mix: str, split: TokenSplit, block_size: int) -> dict[str, float]:
    """The weight of every domain in the training batches, normalised.

    ``mix`` is "books=0.5,speech=0.3,wiki=0.2" (domains left out get 0), "temperature=A"
    (each domain's share of the training tokens to the power A, renormalised: 1 natural, 0
    uniform) or "" for each domain's share of the training tokens. Only domains with room for
    a window get weight. Weights given that already sum to 1 (within 1e-4) are kept as they
    are, others rounded as format_mix records them, so that the recorded mix reproduces itself
    exactly. Validation never depends on the mix: every domain is scored, whatever its weight.
    """
    available = split.domain_tokens()
    usable = available > block_size  # room for at least one window of block_size + 1 tokens
    alpha = mix_temperature(mix)
    if alpha is not None:
        share = np.where(usable, available, 0) / max(1, available[usable].sum())
        weights = np.where(usable, share**alpha, 0.0)
    elif mix:
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
    if abs(weights.sum() - 1) > 1e-4 or alpha is not None:  # computed: as config.json has them
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
