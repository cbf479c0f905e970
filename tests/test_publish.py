"""klm data export: a split published as a Hugging Face dataset folder, read back exactly."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from kennethlm_core.builtin.corpora import HubCorpus, PathCorpus
from kennethlm_core.data import (
    CHUNK_CHARS,
    SPLIT_VERSION,
    cache_root,
    chunk,
    plan_split,
    prepare_text,
)
from kennethlm_core.publish import MARKER

from .conftest import SHARED_DATA, assert_one_line_error, tiny_config
from .test_hub import readme, rows

FRACTIONS = ("--set", "val_fraction=0.2", "--set", "test_fraction=0.2")
LICENCES = {"kilde-a": "CC0-1.0", "kilde-b": "CC-BY-4.0"}  # kilde-c states none


@pytest.fixture
def corpus_file(tmp_path):
    """Three domains of long documents (many of several chunks), three sources of which two
    state a licence, and a domain of two documents (which the card's notes must name)."""
    rng = np.random.default_rng(7)
    words = ["hus", "skib", "æble", "ørn", "sø", "vind", "regn", "bog", "mørke"]
    out = []
    for i in range(60):
        n = int(rng.integers(30, 4000)) if i % 3 else 4 * CHUNK_CHARS // 5  # many chunks
        source = ["kilde-a", "kilde-b", "kilde-c"][i % 3]
        row = {"id": f"doc-{i}", "text": " ".join(rng.choice(words, size=n)) + "\n"}
        row |= {"domain": ["bøger", "tale", "nyheder"][i % 4 % 3], "source": source}
        if source in LICENCES:
            row["license"] = LICENCES[source]
        out.append(row)
    out += [{"id": f"lille-{i}", "text": "kort tekst", "domain": "lille"} for i in range(2)]
    path = tmp_path / "corpus" / "danish.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), "utf-8")
    return path


def expected(path, split, val=0.2, test=0.2):
    """The documents of ``split`` as klm's own plan picks them, and those of train."""
    corpus = PathCorpus(path)
    plan = plan_split(corpus, val, 1000, test)
    docs = list(corpus.documents())
    return [docs[i] for i in plan.documents(split)], [docs[i] for i in plan.documents("train")]


def load(folder, tmp_path):
    import datasets

    return datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache"))


def card(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    front, body = re.match(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL).groups()
    return yaml.safe_load(front), body


def last_line_error(code, err):
    """Exit code 2 and one error line, the last one on stderr (notes may come before it)."""
    assert code == 2, err
    assert "Traceback" not in err and err.count("klm: error:") == 1
    return err.strip().splitlines()[-1]


def tree(folder):
    """Every file under ``folder`` with its bytes: what must stay untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_gives_exactly_the_test_split(klm, corpus_file, tmp_path):
    out = tmp_path / "export"
    code, stdout, err = klm(
        "data", "export", "--corpus", corpus_file, "--split", "test", "--out", out, *FRACTIONS
    )
    assert code == 0, err
    assert "note: domain 'lille' has 2 documents" in err
    assert "the licence of source kilde-c is unknown to klm" in err
    want, train = expected(corpus_file, "test")
    assert max(len(list(chunk(d))) for d in want) >= 3  # long documents came through whole
    assert f"{len(want)} documents" in stdout and "data/test-00000-of-00001.parquet" in stdout

    loaded = load(out, tmp_path)
    assert list(loaded) == ["test"]
    rows_ = loaded["test"]
    assert rows_["id"] == [d.id for d in want]  # the same documents, in the same order
    assert rows_["text"] == [d.text for d in want]
    assert rows_["domain"] == [d.domain for d in want]
    assert rows_["source"] == [d.source for d in want]
    assert rows_["license"] == [LICENCES.get(d.source, "") for d in want]
    assert not set(rows_["id"]) & {d.id for d in train}  # nothing a model trained on

    meta, body = card(out)
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "test", "path": "data/test-00000-of-00001.parquet"}],
        }
    ]
    record = meta[MARKER]
    assert record["split"] == "test" and record["split_version"] == SPLIT_VERSION
    assert record["corpus"] == "danish.jsonl"
    assert record["corpus_fingerprint"] == PathCorpus(corpus_file).fingerprint()
    assert (record["val_fraction"], record["test_fraction"]) == (0.2, 0.2)
    assert record["documents"] == len(want)
    assert record["bytes"] == sum(len(d.text.encode()) for d in want)
    by_domain = {d: sum(x.domain == d for x in want) for d in {x.domain for x in want}}
    assert {d: v["documents"] for d, v in record["domains"].items()} == by_domain
    assert record["sources"]["kilde-a"]["licenses"] == ["CC0-1.0"]
    assert record["sources"]["kilde-c"]["licenses"] == "unknown to klm"
    assert meta["license"] == "other"  # several licences, each stated per source
    assert record["notes"] == [
        "domain 'lille' has 2 documents: one in validation, one in test, none to train on"
    ]
    for needle in ("blake2b", 'person=b"split"', f"split version {SPLIT_VERSION}", "(0.2)"):
        assert needle in body
    assert record["corpus_fingerprint"] in body and "| kilde-c | " in body
    assert "domain 'lille' has 2 documents" in body and "unknown to klm" in body


def test_validation_replaces_an_earlier_export_with_force(klm, corpus_file, tmp_path):
    out = tmp_path / "export"
    base = ("data", "export", "--corpus", corpus_file, "--out", out, *FRACTIONS)
    assert klm(*base, "--split", "test")[0] == 0
    code, _, err = klm(*base, "--split", "validation")
    assert_one_line_error(code, err, "is not empty", "--force")
    code, _, err = klm(*base, "--split", "validation", "--force")
    assert code == 0, err
    loaded = load(out, tmp_path)
    assert list(loaded) == ["validation"]
    want, _ = expected(corpus_file, "validation")
    assert loaded["validation"]["id"] == [d.id for d in want]
    assert loaded["validation"]["text"] == [d.text for d in want]
    assert sorted(tree(out)) == ["README.md", "data/validation-00000-of-00001.parquet"]
    assert card(out)[0][MARKER]["split"] == "validation"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_bad_inputs_give_one_line_and_touch_nothing(klm, corpus_file, tmp_path):
    base = ("data", "export", "--corpus", corpus_file)
    code, _, err = klm(*base, "--split", "train", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "the train split is not published; export validation or test")
    code, _, err = klm(*base, "--split", "dev", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "unknown split 'dev'; export validation or test")
    assert not (tmp_path / "x").exists()

    mine = tmp_path / "mine"  # a user's folder, not an export
    (mine / "data").mkdir(parents=True)
    (mine / "README.md").write_text("# my notes\n")
    (mine / "data" / "test-00000-of-00001.parquet").write_bytes(b"mine")
    before = tree(mine)
    code, _, err = klm(*base, "--split", "test", "--out", mine)
    assert_one_line_error(code, err, "is not empty")
    code, _, err = klm(*base, "--split", "test", "--out", mine, "--force")
    assert_one_line_error(code, err, "is not an earlier export")
    assert tree(mine) == before

    export = tmp_path / "export"  # an export the user has put a file of their own into
    assert klm(*base, "--split", "test", "--out", export)[0] == 0
    again = ("data", "export", "--corpus", export, "--split", "test", "--out", export)
    code, _, err = klm(*again, "--force")
    assert_one_line_error(code, err, "overlaps the corpus' own files")
    (export / "notes.txt").write_text("keep me")
    before = tree(export)
    code, _, err = klm(*base, "--split", "validation", "--out", export, "--force")
    assert_one_line_error(code, err, "holds files an export does not write (notes.txt)")
    assert tree(export) == before

    folder = corpus_file.parent  # a corpus folder: an export inside would join the corpus
    code, _, err = klm(
        "data", "export", "--corpus", folder, "--split", "test", "--out", folder / "x"
    )
    assert_one_line_error(code, err, "overlaps the corpus' own files")
    assert sorted(p.name for p in corpus_file.parent.iterdir()) == ["danish.jsonl"]

    (tmp_path / "a-file").write_text("x")
    code, _, err = klm(*base, "--split", "test", "--out", tmp_path / "a-file", "--force")
    assert_one_line_error(code, err, "is a file, not a folder")
    assert (tmp_path / "a-file").read_text() == "x"

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": ""}\n')
    new = tmp_path / "new"
    code, _, err = klm("data", "export", "--corpus", empty, "--split", "test", "--out", new)
    assert_one_line_error(code, err, "has no text")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_push_offline_says_the_folder_is_written(klm, corpus_file, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: 1 / 0)
    out = tmp_path / "export"
    args = ("--split", "test", "--out", out, "--push-to-hub", "me/danish-test")
    code, stdout, err = klm("data", "export", "--corpus", corpus_file, *args)
    line = last_line_error(code, err)  # after the export's notes
    assert line.startswith("klm: error: cannot push to me/danish-test: offline")
    assert f"the dataset folder {out} is written" in line
    assert f"push it later with: hf upload me/danish-test {out} . --repo-type dataset" in line
    assert "wrote the test split" in stdout
    assert len(load(out, tmp_path)["test"]) == len(expected(corpus_file, "test", 0.05, 0.05)[0])


def test_push_uploads_the_folder_as_a_dataset(klm, corpus_file, tmp_path, monkeypatch):
    """The hub calls, with a stand-in for HfApi: nothing reaches the network."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "export"
    args = ("--split", "validation", "--out", out, "--push-to-hub", "me/danish-val")
    code, stdout, err = klm("data", "export", "--corpus", corpus_file, *args)
    assert code == 0, err
    assert "pushed to https://huggingface.co/datasets/me/danish-val" in stdout
    (_, repo, created), (_, same, upload) = calls
    assert repo == same == "me/danish-val"
    assert created == {"repo_type": "dataset", "exist_ok": True}
    assert upload["repo_type"] == "dataset" and upload["folder_path"] == out
    assert upload["delete_patterns"] == ["data/validation-*.parquet"]

    def refuse(self, repo_id, **kwargs):
        raise PermissionError("401 Unauthorized\nmore detail")

    monkeypatch.setattr(FakeApi, "create_repo", refuse)
    code, _, err = klm("data", "export", "--corpus", corpus_file, *args, "--force")
    line = last_line_error(code, err)
    assert "PermissionError: 401 Unauthorized more detail" in line
    assert "is written" in line and "hf upload" in line


def test_path_corpus_reads_an_export_exactly(klm, corpus_file, tmp_path, registry):
    """What `klm eval RUN --task bpb --data DIR` scores: every exported document, whole."""
    out = tmp_path / "export"
    args = ("--corpus", corpus_file, "--split", "test", "--out", out, *FRACTIONS)
    assert klm("data", "export", *args)[0] == 0
    want, _ = expected(corpus_file, "test")
    assert list(PathCorpus(out).documents()) == want  # ids, texts, domains, sources, licences

    cfg = tiny_config(registry, tokenizer="byte")
    tokenizer = registry.get("tokenizer", "byte").factory(cfg)
    text = prepare_text(str(out), cfg, registry, tokenizer)  # what BPBTask scores of --data
    assert text.n_bytes == sum(len(d.text.encode()) for d in want)
    assert text.n_documents == len(want)


def test_hub_corpus_exports_its_sources_and_stated_licences(klm, tmp_path):
    """A DAGW-style copy: each source a config, each row's licence in metadata.license."""
    copy = tmp_path / "dagw"
    labels = {"ft": "Conversation", "adl": "Wiki & Books", "hest": "Social Media"}
    for source, label in labels.items():
        (copy / source).mkdir(parents=True)
        meta = {"domain": label, "license": "CC0" if source != "hest" else None}
        lines = [json.dumps(r, ensure_ascii=False) for r in rows(source, 20, metadata=meta)]
        (copy / source / f"{source}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    readme(copy, {"default": "*/*.jsonl", **{s: f"{s}/*.jsonl" for s in labels}})
    out = tmp_path / "export"
    args = ("--split", "test", "--out", out, "--set", f"hub_path={copy}", *FRACTIONS)
    code, _, err = klm("data", "export", "--corpus", "dagw", *args)
    assert code == 0, err
    test = load(out, tmp_path)["test"]
    assert {(r["id"].split("_")[0], r["source"]) for r in test} == {(s, s) for s in labels}
    meta, body = card(out)
    sources = meta[MARKER]["sources"]
    assert sources["adl"]["licenses"] == sources["ft"]["licenses"] == ["CC0"]
    assert sources["hest"]["licenses"] == "unknown to klm"
    assert meta[MARKER]["hub_dataset"] == "danish-foundation-models/danish-gigaword"
    assert "https://huggingface.co/datasets/danish-foundation-models/danish-gigaword" in body


def test_a_hub_snapshot_without_source_columns_still_reads(tmp_path):
    """Snapshots written before source and license were kept: the source comes from the
    file's name."""
    copy = tmp_path / "copy"
    copy.mkdir()
    readme(copy, {"default": "x.jsonl"})
    corpus = HubCorpus("x/y", "dynaword", path=copy)
    snapshot = cache_root() / "hub" / f"{corpus.name}-{corpus.fingerprint()}"
    snapshot.mkdir(parents=True)
    table = pa.table({"id": ["a", "b"], "text": ["én", "to"], "domain": ["news", "news"]})
    pq.write_table(table, snapshot / "0000-tv2r.parquet")
    docs = list(corpus.documents())
    assert [(d.id, d.text, d.source, d.license) for d in docs] == [
        ("a", "én", "tv2r", ""),
        ("b", "to", "tv2r", ""),
    ]


@pytest.mark.skipif(
    not (SHARED_DATA / "corpus").exists(), reason="../shared/data is not beside the repo"
)
def test_a_real_danish_file_round_trips(klm, tmp_path):
    path = SHARED_DATA / "corpus" / "news-lcc.jsonl.gz"
    out = tmp_path / "news-test"
    code, stdout, err = klm("data", "export", "--corpus", path, "--split", "test", "--out", out)
    assert code == 0, err
    want, train = expected(path, "test", 0.05, 0.05)
    test = load(out, tmp_path)["test"]
    assert test["id"] == [d.id for d in want] and test["text"] == [d.text for d in want]
    assert set(test["domain"]) == {"news"} and set(test["source"]) == {"lcc"}
    assert not set(test["id"]) & {d.id for d in train}
    assert card(out)[0][MARKER]["sources"] == {
        "lcc": {"documents": len(want), "licenses": "unknown to klm"}
    }
