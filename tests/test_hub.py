"""The hub corpora, read from local copies laid out like the hub repositories."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kennethlm_core.builtin.corpora import HubCorpus
from kennethlm_core.errors import DataError

from .conftest import assert_one_line_error


def rows(source, n=12, **extra):
    text = f"Dette er dokument {{i}} fra {source}, med æbler, øl og ål.\n" * 8
    return [
        {"text": text.format(i=i), "source": source, "id": f"{source}_{i}", **extra}
        for i in range(n)
    ]


def readme(path, configs):
    """README.md with the `configs:` section the hub's dataset cards carry."""
    lines = ["---", "license: other", "configs:"]
    for name, files in configs.items():
        lines += [f"- config_name: {name}", "  data_files:", "  - split: train"]
        lines += [f"    path: '{files}'"]
    (path / "README.md").write_text("\n".join([*lines, "---", "# a local copy", ""]))


@pytest.fixture
def dagw_copy(tmp_path):
    """danish-gigaword: a folder per source, metadata.domain on every row (here in jsonl; the
    hub has parquet, which the dynaword copy uses)."""
    labels = {"ft": "Conversation", "adl": "Wiki & Books", "hest": "Social Media"}
    for source, label in labels.items():
        (tmp_path / source).mkdir()
        meta = {"domain": label, "license": "CC0", "source-pretty": source}
        with open(tmp_path / source / f"{source}.jsonl", "w", encoding="utf-8") as f:
            for row in rows(source, added="2020-01-01", metadata=meta):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    readme(tmp_path, {"default": "*/*.jsonl", **{s: f"{s}/*.jsonl" for s in labels}})
    return tmp_path


@pytest.fixture
def dynaword_copy(tmp_path):
    """danish-dynaword: data/<source>/data.parquet without a domain column, a "meta" config,
    and one source with the older schema's domain column."""
    for source in ("retsinformationdk", "tv2r", "nyt-sted"):
        (tmp_path / "data" / source).mkdir(parents=True)
        table = pa.Table.from_pylist(rows(source, token_count=40, created="2000-01-01"))
        pq.write_table(table, tmp_path / "data" / source / "data.parquet")
        pq.write_table(
            pa.table({"id": [f"{source}_0"], "license": ["cc0"]}),
            tmp_path / "data" / source / "metadata.parquet",
        )
    (tmp_path / "data" / "wiki").mkdir()
    table = pa.Table.from_pylist(rows("wiki", domain="Encyclopedic"))
    pq.write_table(table, tmp_path / "data" / "wiki" / "data.parquet")
    configs = {"default": "data/*/data.parquet", "meta": "data/*/metadata.parquet"}
    configs |= {s: f"data/{s}/data.parquet" for s in ("retsinformationdk", "tv2r", "nyt-sted")}
    readme(tmp_path, configs | {"wiki": "data/wiki/data.parquet"})
    return tmp_path


def test_dagw_takes_each_rows_domain_and_caps_each_source(dagw_copy, monkeypatch):
    corpus = HubCorpus("danish-foundation-models/danish-gigaword", "dagw", path=dagw_copy)
    domains = {d.id.split("_")[0]: d.domain for d in corpus.documents()}
    assert domains == {"ft": "conversation", "adl": "books", "hest": "social"}

    capped = HubCorpus("x/y", "dagw", path=dagw_copy, max_bytes=1000, sources="adl,ft")
    docs = list(capped.documents())
    assert {d.domain for d in docs} == {"books", "conversation"}  # only the chosen sources
    per_doc = len(docs[0].text.encode())
    assert len(docs) == 2 * -(-1000 // per_doc)  # stops at the first document past 1000 bytes

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: 1 / 0)
    assert list(capped.documents()) == docs  # the second pass reads the local snapshot


def test_dynaword_maps_sources_to_domains(dynaword_copy):
    corpus = HubCorpus(
        "danish-foundation-models/danish-dynaword",
        "dynaword",
        {"retsinformationdk": "legal", "tv2r": "news"},
        path=dynaword_copy,
    )
    found = {}
    for doc in corpus.documents():
        found.setdefault(doc.id.split("_")[0], set()).add(doc.domain)
    assert found == {
        "retsinformationdk": {"legal"},  # from the source table
        "tv2r": {"news"},
        "nyt-sted": {"nyt-sted"},  # a source the table does not know is its own domain
        "wiki": {"encyclopedic"},  # a row's own label wins
    }
    with pytest.raises(DataError, match="no source 'ft'; its sources: retsinformationdk"):
        list(HubCorpus("x/y", "dynaword", path=dynaword_copy, sources="ft").documents())


def test_klm_reads_a_hub_copy_and_refuses_a_folder_that_is_not_one(klm, dynaword_copy, tmp_path):
    args = ["data", "stats", "--corpus", "dynaword", "--tokenizer", "byte", "--json"]
    code, out, err = klm(*args, "--set", f"hub_path={dynaword_copy}")
    assert code == 0, err
    assert set(json.loads(out)["domains"]) == {"legal", "news", "nyt-sted", "encyclopedic", "total"}
    code, out, err = klm(*args, "--set", f"hub_path={tmp_path / 'data'}")
    assert_one_line_error(code, err, "is not a copy of a dataset repository")


def test_a_hub_copy_moved_elsewhere_keeps_its_fingerprint_and_a_changed_byte_does_not(
    dagw_copy, tmp_path_factory
):
    import shutil

    repo = "danish-foundation-models/danish-gigaword"
    moved = tmp_path_factory.mktemp("elsewhere") / "copy"
    shutil.copytree(dagw_copy, moved)  # new place, new file times
    first = HubCorpus(repo, "dagw", path=dagw_copy).fingerprint()
    assert HubCorpus(repo, "dagw", path=moved).fingerprint() == first
    assert HubCorpus(repo, "dagw", path=moved, sources="adl").fingerprint() != first
    data = next(f for f in sorted(moved.rglob("*.jsonl*")) if f.is_file())
    data.write_bytes(data.read_bytes() + b"\n")
    assert HubCorpus(repo, "dagw", path=moved).fingerprint() != first
