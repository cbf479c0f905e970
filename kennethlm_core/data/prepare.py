"""Preparing a corpus: its tokenizer trained and its splits tokenized once into memory-mapped
arrays under the cache folder, keyed by the corpus and tokenizer fingerprints (``prepare_data``;
``prepare_text`` for a whole corpus in corpus order). Text and tokens stream through files;
a corpus that changes while it is read is refused, and nothing of it is cached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kennethlm_core.atomic import atomic_write_text
from kennethlm_core.components import Corpus, Document, Tokenizer
from kennethlm_core.config import RunConfig
from kennethlm_core.data.cache import build_once, cache_root
from kennethlm_core.data.splits import (
    CHUNK_CHARS,
    SPLIT_VERSION,
    SPLITS,
    Plan,
    _absorb,
    build_corpus,
    chunks_of,
    plan_split,
    survey,
)
from kennethlm_core.data.tokens import PreparedData, TokenSplit, token_dtype
from kennethlm_core.errors import DataError

FORMAT = 3  # bump when the cache layout or the split rule changes
BATCH_CHARS = 1 << 21  # text handed to the tokenizer at once when building the cache


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
