"""The split by document: a corpus's documents cut into chunks, each document given to
``train``, ``validation`` or ``test`` by a hash of its id (``plan_split``), and the slice order
of the validation and test chunks (``Plan``). Text only: no tokenizer is involved."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kennethlm_core.components import Corpus, Document
from kennethlm_core.config import RunConfig, corpus_component
from kennethlm_core.errors import DataError

CHUNK_CHARS = 8192
SPLIT_VERSION = 2  # the split rule: 1 was by chunk (documents leaked), 2 is by document
SPLITS = ("train", "validation", "test")


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
