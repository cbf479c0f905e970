"""Corpora, chunks, the stable split, the token cache and batches."""

from __future__ import annotations

import gzip
import json
import os
import warnings

import numpy as np
import pytest
import torch

from kennethlm_core.builtin.corpora import PathCorpus
from kennethlm_core.components import Corpus, Document
from kennethlm_core.data import CHUNK_CHARS, Batches, chunk, plan_split, prepare_data
from kennethlm_core.errors import DataError

from .conftest import SHARED_DATA, tiny_config


class ListCorpus(Corpus):
    def __init__(self, docs, name="list"):
        self.docs, self.name = docs, name

    def documents(self):
        return iter(self.docs)

    def fingerprint(self):
        return str(hash(tuple(self.docs)))


def write_jsonl(path, rows, gz=False):
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(data.encode()))
    else:
        path.write_text(data, encoding="utf-8")
    return path


def docs(n, domain, length=300, prefix=""):
    return [
        Document(f"{prefix}{domain}-{i}", f"{domain} dokument {i}. " * (length // 20), domain)
        for i in range(n)
    ]


def test_chunks_rejoin_to_the_document():
    text = ("Et afsnit med ord.\n" * 1000) + "x" * (3 * CHUNK_CHARS)  # lines, then no breaks
    pieces = list(chunk(Document("d", text, "books")))
    assert "".join(p.text for p in pieces) == text
    assert all(len(p.text) <= CHUNK_CHARS for p in pieces)
    assert len({p.id for p in pieces}) == len(pieces)
    assert pieces[0].text.endswith("\n")  # cut at a line break when there is one


def test_split_is_stable_when_documents_are_added():
    base = docs(200, "news") + docs(200, "books")
    grown = base + docs(300, "news", prefix="new-") + docs(50, "wiki")
    a = plan_split(ListCorpus(base), 0.1, 10_000)
    b = plan_split(ListCorpus(grown), 0.1, 10_000)
    val_a = {base[i].id for i in a.val_order}
    val_b = {grown[i].id for i in b.val_order}
    assert val_a == {d.id for d in base} & val_b  # no old chunk moved in or out
    assert 20 < len(val_a) < 60  # about 10% of 400


def test_every_domain_appears_in_validation():
    corpus = ListCorpus(docs(100, "big") + docs(2, "tiny") + docs(1, "single", length=5000))
    plan = plan_split(corpus, 0.05, 1000)
    assert {plan.domains[plan.domain[i]] for i in plan.val_order} == {"big", "tiny", "single"}
    # the first chunk of every domain leads the validation order, so every slice has them all
    assert {plan.domain[i] for i in plan.val_order[:3]} == {0, 1, 2}


def test_a_corpus_too_small_to_split_is_refused():
    with pytest.raises(DataError, match="too small"):
        plan_split(ListCorpus(docs(1, "a") + docs(1, "b")), 0.05, 1000)
    with pytest.raises(DataError, match="no text"):
        plan_split(ListCorpus([]), 0.05, 1000)


def test_local_formats_folders_and_globs(tmp_path):
    rows = [{"id": f"r{i}", "text": f"tekst {i}", "domain": "news"} for i in range(3)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl.gz", [{"text": "uden domæne"}], gz=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["fra parquet"], "domain": ["wiki"]}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("en hel fil\nmed to linjer", encoding="utf-8")
    (tmp_path / "README.md").write_text("not a corpus file")
    found = list(PathCorpus(tmp_path).documents())
    assert [(d.text, d.domain) for d in found] == [
        ("tekst 0", "news"),
        ("tekst 1", "news"),
        ("tekst 2", "news"),
        ("uden domæne", "default"),
        ("fra parquet", "wiki"),
        ("en hel fil\nmed to linjer", "default"),
    ]
    assert found[0].id == "r0" and found[3].id == "b.jsonl.gz:0"
    assert len(list(PathCorpus(str(tmp_path / "*.jsonl*")).documents())) == 4


def test_bad_corpora_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no corpus files"):
        PathCorpus(tmp_path)
    write_jsonl(tmp_path / "x.jsonl", [{"body": "no text column"}])
    with pytest.raises(DataError, match="no 'text' column \\(columns: body\\)"):
        list(PathCorpus(tmp_path / "x.jsonl").documents())
    (tmp_path / "y.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type"):
        PathCorpus(tmp_path / "y.csv")


def test_non_utf8_text_is_replaced_and_reported(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("blåbærgrød".encode("latin-1"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (doc,) = PathCorpus(tmp_path / "latin1.txt").documents()
    assert doc.text == "bl\ufffdb\ufffdrgr\ufffdd"
    assert "3 byte(s) are not UTF-8" in str(caught[0].message)


def test_token_cache_is_reused_and_rebuilt_when_the_corpus_changes(tmp_path, registry):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"text": f"Dokument nummer {i}. " * 20, "domain": "a" if i % 2 else "b"}
            for i in range(60)
        ],
    )
    cfg = tiny_config(registry, corpus=str(path), tokenizer="byte")
    messages = []
    first = prepare_data(cfg, registry, log=messages.append)
    second = prepare_data(cfg, registry, log=messages.append)
    assert not first.reused and second.reused and "reusing" in messages[-1]
    assert np.array_equal(first.train.tokens, second.train.tokens)
    assert isinstance(second.train.tokens, np.memmap)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "en ny linje", "domain": "a"}) + "\n")
    os.utime(path, ns=(1, 1))
    assert not prepare_data(cfg, registry).reused


def test_validation_bytes_do_not_depend_on_the_tokenizer(registry):
    char = prepare_data(tiny_config(registry, tokenizer="char"), registry)
    byte = prepare_data(tiny_config(registry, tokenizer="byte"), registry)
    assert np.array_equal(char.val.docs[:, 1:], byte.val.docs[:, 1:])  # same documents, bytes
    assert char.val.head(2048).n_bytes == byte.val.head(2048).n_bytes >= 2048
    tok = byte.tokenizer  # and those bytes are the text's own
    assert len(byte.val.tokens) == byte.val.n_bytes + len(byte.val.docs)
    assert tok.doc_id == byte.val.tokens[0]


def test_batches_are_reproducible_and_resumable(registry):
    data = prepare_data(tiny_config(registry, tokenizer="byte"), registry)
    a = Batches(data.train, 16, 4, seed=3, device=torch.device("cpu"))
    b = Batches(data.train, 16, 4, seed=3, device=torch.device("cpu"))
    x1, y1 = a.next()
    assert torch.equal(x1, b.next()[0]) and torch.equal(x1[:, 1:], y1[:, :-1])
    state = a.state()
    after = a.next()
    a.set_state(state)
    assert torch.equal(a.next()[0], after[0])


@pytest.mark.skipif(
    not (SHARED_DATA / "corpus").exists(), reason="../shared/data is not beside the repo"
)
def test_real_danish_news_corpus(registry):
    path = SHARED_DATA / "corpus" / "news-lcc.jsonl.gz"
    data = prepare_data(tiny_config(registry, corpus=str(path), tokenizer="char"), registry)
    assert data.train.domains == ["news"]
    assert data.val.n_bytes > 0.03 * (data.train.n_bytes + data.val.n_bytes)
    text = data.tokenizer.decode(data.val.tokens[1 : 1 + 200].tolist())
    assert any(ch in text for ch in "æøå")
