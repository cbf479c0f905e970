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
    BYTES,
    CHUNK_CHARS,
    DOC,
    DOMAIN,
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
from kennethlm_core.metric import bits_per_byte
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


def split_ids(plan, corpus):
    ids = [d.id for d in corpus.documents()]
    return {
        name: {ids[i] for i in plan.documents(name)} for name in ("train", "validation", "test")
    }


def test_split_is_stable_when_documents_are_added():
    base = ListCorpus(docs(300, "news") + docs(300, "books"))
    grown = ListCorpus(base.docs + docs(300, "news", prefix="new-") + docs(50, "wiki"))
    a = split_ids(plan_split(base, 0.1, 10_000, 0.1), base)
    b = split_ids(plan_split(grown, 0.1, 10_000, 0.1), grown)
    for name in a:  # no old document moved between splits
        assert a[name] == {d.id for d in base.docs} & b[name]
    assert 30 < len(a["validation"]) < 90 and 30 < len(a["test"]) < 90  # about 10% of 600


def test_no_document_has_text_in_two_splits(registry, tmp_path):
    """Long documents of many chunks: each lies whole in one split, and the tokens of each
    split decode to exactly the documents of that split."""
    rng = np.random.default_rng(0)
    words = ["hus", "skib", "æble", "ørn", "sø", "vind", "regn", "bog"]
    rows = []
    for i in range(40):
        n = int(rng.integers(50, 6000)) if i % 4 else 3 * CHUNK_CHARS // 5  # many chunks
        text = " ".join(rng.choice(words, size=n)) + "\n"
        rows.append({"id": f"doc-{i}", "text": text, "domain": ["a", "b", "c"][i % 3]})
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    cfg = tiny_config(registry, corpus=str(path), tokenizer="byte", val_fraction=0.2)
    data = prepare_data(cfg, registry)
    assert max(len(list(chunk(Document(r["id"], r["text"])))) for r in rows) >= 4
    texts = {r["text"]: r["id"] for r in rows}
    seen = {}
    for name in ("train", "validation", "test"):
        split = data.split(name)
        starts = np.flatnonzero(np.asarray(split.tokens) == data.tokenizer.doc_id)
        bounds = [*starts, len(split.tokens)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            text = data.tokenizer.decode(split.tokens[a + 1 : b].tolist())
            assert text in texts, "a split holds a piece of a document, not a whole one"
            assert texts[text] not in seen, f"{texts[text]} is in {seen.get(texts[text])} too"
            seen[texts[text]] = name
        rows_bytes = split.rows[:, BYTES].sum()  # what the split scores
        assert rows_bytes == sum(len(t.encode()) for t, i in texts.items() if seen.get(i) == name)
    assert len(seen) == len(rows)
    assert {"validation", "test", "train"} == set(seen.values())


def test_every_domain_appears_in_validation_and_test_and_small_ones_are_said():
    corpus = ListCorpus(
        docs(100, "big") + docs(3, "three") + docs(2, "two") + docs(1, "single", length=5000)
    )
    plan = plan_split(corpus, 0.05, 1000, 0.05)
    for name in ("validation", "test"):
        assert {plan.domains[d] for d in plan.doc_domain[plan.documents(name)]} >= {
            "big",
            "three",
            "two",
        }
    assert "single" in {plan.domains[d] for d in plan.doc_domain[plan.documents("validation")]}
    train = {plan.domains[d] for d in plan.doc_domain[plan.documents("train")]}
    assert train == {"big", "three"}
    assert plan.notes == [
        "domain 'two' has 2 documents: one in validation, one in test, none to train on",
        "domain 'single' has 1 document: it is in validation only",
    ]
    # the first chunk of every domain leads the validation order, so every slice has them all
    order = plan.chunk_order("validation")
    assert set(plan.doc_domain[plan.chunk_doc[order[:4]]]) == {0, 1, 2, 3}


def test_a_corpus_too_small_to_split_is_refused():
    with pytest.raises(DataError, match="too small"):
        plan_split(ListCorpus(docs(1, "a") + docs(2, "b")), 0.05, 1000)
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


def test_corpus_fingerprint_follows_content_not_place_or_time(tmp_path):
    """A copy of the corpus in another folder, with new file times (as a fresh machine gets),
    has the same fingerprint, so its token cache and runs are reused; one changed byte or a
    renamed file gives a new one."""
    import shutil

    first = tmp_path / "a"
    (first / "sub").mkdir(parents=True)
    write_jsonl(first / "x.jsonl", [{"text": "hej med dig"}])
    write_jsonl(first / "sub" / "y.jsonl", [{"text": "farvel"}])
    copy = tmp_path / "b"
    shutil.copytree(first, copy)  # new mtimes
    os.utime(copy / "x.jsonl", ns=(1, 1))
    assert PathCorpus(copy).fingerprint() == PathCorpus(first).fingerprint()
    write_jsonl(copy / "x.jsonl", [{"text": "hej med dem"}])
    assert PathCorpus(copy).fingerprint() != PathCorpus(first).fingerprint()
    shutil.rmtree(copy)
    shutil.copytree(first, copy)
    (copy / "x.jsonl").rename(copy / "z.jsonl")
    assert PathCorpus(copy).fingerprint() != PathCorpus(first).fingerprint()


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
    columns = [DOMAIN, BYTES, DOC]
    assert np.array_equal(char.val.rows[:, columns], byte.val.rows[:, columns])  # same chunks
    assert char.val.head(2048).n_bytes == byte.val.head(2048).n_bytes >= 2048
    tok = byte.tokenizer  # and those bytes are the text's own
    assert len(byte.val.tokens) == byte.val.n_bytes + byte.val.n_documents
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
        scored[name] = (val.rows[:, [DOMAIN, BYTES, DOC]].tolist(), result.doc_bytes.tolist())
        texts[name] = []
        for start, end, _, nbytes, _, doc_start in val.rows.tolist():
            text = data.tokenizer.decode(val.tokens[max(start, doc_start + 1) : end].tolist())
            assert len(text.encode()) == nbytes
            texts[name].append(text)
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
    monkeypatch.setattr(data_module.prepare, "BATCH_CHARS", 5000)  # where it is read
    monkeypatch.setenv("KLM_CACHE", str(tmp_path))  # a cold cache, same tokenizer
    batched = prepare_data(cfg, registry, tokenizer=whole.tokenizer)
    assert not batched.reused and len(seen) > 10
    assert max(sum(map(len, b)) for b in seen) < 5000 + CHUNK_CHARS
    for name in ("train", "validation", "test"):
        a, b = whole.split(name), batched.split(name)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.rows, b.rows)
    train = batched.train
    assert list(train.rows[:, DOMAIN]) == sorted(train.rows[:, DOMAIN])  # grouped by domain
    starts = train.domain_starts()
    assert list(starts) == [train.rows[train.rows[:, DOMAIN] == d][0, 0] for d in range(5)]
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
    rows = [[0, 1000, 0, 1000, 0, 0], [1000, 4000, 1, 3000, 1, 1000], [4000, 4500, 2, 500, 2, 4000]]
    split = TokenSplit(tokens, np.array(rows, dtype=np.int64), ["a", "b", "c"])

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
