"""Corpora, chunks, the stable split, the token cache and batches."""

from __future__ import annotations

import gzip
import json
import os
import warnings

import numpy as np
import pytest
import torch

from kennethlm_core import data as data_module
from kennethlm_core.builtin.corpora import PathCorpus
from kennethlm_core.components import Corpus, Document
from kennethlm_core.data import (
    CHUNK_CHARS,
    Batches,
    TokenSplit,
    chunk,
    domain_stats,
    format_mix,
    mix_weights,
    plan_split,
    prepare_data,
    token_dtype,
)
from kennethlm_core.errors import ConfigError, DataError
from kennethlm_core.evaluate import bits_per_byte
from kennethlm_core.model import build_model

from .conftest import SHARED_DATA, assert_one_line_error, tiny_config


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


def test_one_text_one_byte_count_whatever_the_tokenizer(registry):
    """BPB stays comparable: every tokenizer scores the same validation bytes of the same text."""
    names = registry.names("tokenizer")
    assert {"char", "byte"} <= set(names)  # and bpe, unigram, ... when their plugins are in
    scored, texts = {}, {}
    for name in names:
        cfg = tiny_config(registry, tokenizer=name)
        data = prepare_data(cfg, registry)
        val = data.val.head(cfg.eval_bytes)
        torch.manual_seed(0)
        model = build_model(cfg, data.tokenizer.vocab_size, registry)
        result = bits_per_byte(model, val, cfg.block_size, data.tokenizer.doc_id)
        scored[name] = (val.docs[:, 1:].tolist(), result.doc_bytes.tolist())
        bounds = [*val.docs[:, 0], len(val.tokens)]
        texts[name] = [
            data.tokenizer.decode(val.tokens[a + 1 : b].tolist())
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        assert [len(t.encode()) for t in texts[name]] == val.docs[:, 2].tolist()
    assert len({json.dumps(v) for v in scored.values()}) == 1, scored.keys()
    assert len({json.dumps(v) for v in texts.values()}) == 1


def test_the_cache_is_built_in_batches_and_laid_out_by_domain(registry, monkeypatch, tmp_path):
    cfg = tiny_config(registry, tokenizer="char")
    whole = prepare_data(cfg, registry)
    seen = []
    real = type(whole.tokenizer).encode_batch
    monkeypatch.setattr(
        type(whole.tokenizer), "encode_batch", lambda t, b: seen.append(b) or real(t, b)
    )
    monkeypatch.setattr(data_module, "BATCH_CHARS", 5000)
    monkeypatch.setenv("KLM_CACHE", str(tmp_path))  # a cold cache, same tokenizer
    batched = prepare_data(cfg, registry, tokenizer=whole.tokenizer)
    assert not batched.reused and len(seen) > 10
    assert max(sum(map(len, b)) for b in seen) < 5000 + CHUNK_CHARS
    for a, b in ((whole.train, batched.train), (whole.val, batched.val)):
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.docs, b.docs)
    train = batched.train
    assert list(train.docs[:, 1]) == sorted(train.docs[:, 1])  # grouped by domain
    starts = train.domain_starts()
    assert list(starts) == [train.docs[train.docs[:, 1] == d][0, 0] for d in range(5)]
    assert train.tokens.dtype == np.uint16 and batched.meta["dtype"] == "uint16"
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32
    assert all(train.tokens[starts] == batched.tokenizer.doc_id)


def test_domain_stats_add_up(registry):
    data = prepare_data(tiny_config(registry, tokenizer="byte"), registry)
    stats = domain_stats(data)
    total = stats.pop("total")
    assert set(stats) == {"news", "conversation", "legal", "encyclopedic", "fiction"}
    assert total["documents"] == sum(s["documents"] for s in stats.values()) == 75
    assert total["bytes"] == sum(s["bytes"] for s in stats.values()) == total["tokens"]
    assert all(s["bytes_per_token"] == 1.0 for s in stats.values())  # byte tokens
    assert total["train_share"] == pytest.approx(1.0)


def test_klm_data_stats(klm):
    code, out, err = klm("data", "stats", "--tokenizer", "byte")
    assert code == 0, err
    assert "fiction" in out and "bytes/token" in out and "total" in out
    code, out, err = klm("data", "stats", "--tokenizer", "byte", "--json")
    assert code == 0 and "reusing the token cache" in err
    report = json.loads(out)
    assert report["tokenizer"] == "byte" and report["domains"]["total"]["bytes_per_token"] == 1
    code, out, err = klm("data", "stats", "--corpus", "nowhere/at/all")
    assert_one_line_error(code, err, "corpus 'nowhere/at/all'")


def test_mix_weights_are_parsed_checked_and_recorded(registry):
    data = prepare_data(tiny_config(registry, tokenizer="byte"), registry)
    natural = mix_weights("", data.train, 16)
    share = data.train.domain_tokens() / len(data.train.tokens)
    assert list(natural.values()) == pytest.approx(share.tolist(), abs=1e-6)
    assert mix_weights(format_mix(natural), data.train, 16) == natural  # recorded = repeated
    given = mix_weights("news=3,legal=1", data.train, 16)
    assert given == {
        "news": 0.75,
        "conversation": 0,
        "legal": 0.25,
        "encyclopedic": 0,
        "fiction": 0,
    }
    with pytest.raises(
        DataError, match="'books', which this corpus does not have; its domains: news"
    ):
        mix_weights("books=1", data.train, 16)
    with pytest.raises(DataError, match="too few for one window"):
        mix_weights("news=1", data.train, 100_000)
    for bad in ("news", "news=-1", "news=0", "news=1,news=2", "news=x"):
        with pytest.raises(ConfigError, match="--mix"):
            tiny_config(registry, mix=bad)


def test_batches_follow_the_mix():
    # three domains whose tokens are 1, 2 and 3: a window shows where it was drawn
    sizes = [1000, 3000, 500]
    tokens = np.repeat(np.array([1, 2, 3], dtype=np.uint16), sizes)
    docs = np.array([[0, 0, 1000], [1000, 1, 3000], [4000, 2, 500]], dtype=np.int64)
    split = TokenSplit(tokens, docs, ["a", "b", "c"])

    def draw(weights, n=100):
        batches = Batches(split, 16, 64, seed=1, device=torch.device("cpu"), weights=weights)
        rows = np.concatenate([batches.next()[0].numpy() for _ in range(n)])
        assert (rows == rows[:, :1]).all()  # never across a domain boundary
        return np.bincount(rows[:, 0], minlength=4)[1:] / len(rows)

    mixed = draw(list(mix_weights("a=1,c=3", split, 16).values()))
    assert mixed[1] == 0 and mixed[2] == pytest.approx(0.75, abs=0.02)
    assert draw(None) == pytest.approx(np.array(sizes) / sum(sizes), abs=0.02)  # natural


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
