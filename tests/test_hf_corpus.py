"""--corpus hf:OWNER/NAME[:CONFIG]: any hub dataset with a text column, read from local copies
laid out like hub repositories (README.md with its configs, parquet files), built here from
rows of ../shared/data/corpus."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kennethlm_core.builtin.corpora import HubDataset, parse_hf_spec
from kennethlm_core.data import cache_root
from kennethlm_core.errors import DataError
from kennethlm_core.testing import conformance

from .conftest import SHARED_DATA, assert_one_line_error
from .test_bad_input import klm_process, snapshot
from .test_hub import readme

CORPUS = SHARED_DATA / "corpus"
pytestmark = pytest.mark.skipif(not CORPUS.exists(), reason="../shared/data is not beside the repo")
TINY_RUN = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
    "--batch-size", "4", "--steps", "6", "--eval-every", "3", "--tokenizer", "byte",
    "--set", "warmup_steps=2", "--set", "eval_bytes=1024", "--set", "final_eval_bytes=2048",
    "-q",
]  # fmt: skip


def shared_rows(file: str, n: int, chars: int = 3000) -> list[dict]:
    """The first ``n`` documents of a shared corpus file, each cut to ``chars`` characters."""
    with gzip.open(CORPUS / file, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in islice(f, n)]
    return [row | {"text": row["text"][:chars]} for row in rows]


def write_parquet(path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def mixed_copy(tmp_path_factory):
    """A dataset with two configs and its own column names: 'dagw' (real DAGW files, six
    domains) and 'lcc' (news and web sentences); text in 'content', the domain in 'genre',
    and a list column 'tags'."""
    root = tmp_path_factory.mktemp("dansk-blanding")
    configs = {
        "dagw": shared_rows("mixed-dagw-sample.jsonl.gz", 39),
        "lcc": shared_rows("news-lcc.jsonl.gz", 20) + shared_rows("web-lcc.jsonl.gz", 20),
    }
    for config, rows in configs.items():
        table = [
            {"id": r["id"], "content": r["text"], "genre": r["domain"], "tags": [r["source"]]}
            for r in rows
        ]
        write_parquet(root / "data" / config / "train-00000-of-00001.parquet", table)
    readme(root, {c: f"data/{c}/*.parquet" for c in configs})
    return root, configs


@pytest.fixture(scope="module")
def wiki_copy(tmp_path_factory):
    """A dataset without a configs list (so one config, 'default') and a 'text' column."""
    root = tmp_path_factory.mktemp("dawiki-lille")
    rows = shared_rows("wiki-dawiki.jsonl.gz", 300)
    table = [{"id": r["id"], "text": r["text"], "url": f"wiki/{r['id']}"} for r in rows]
    write_parquet(root / "data" / "train-00000-of-00001.parquet", table)
    (root / "README.md").write_text("---\nlicense: cc-by-sa-4.0\n---\n# a local copy\n")
    return root, rows


def test_defaults_are_the_text_column_and_one_domain_named_after_the_dataset(wiki_copy):
    root, rows = wiki_copy
    corpus = HubDataset("hf:me/dawiki-lille", path=root)
    docs = list(corpus.documents())
    assert [(d.id, d.text) for d in docs] == [(r["id"], r["text"]) for r in rows]
    assert {d.domain for d in docs} == {"dawiki-lille"}
    assert {d.source for d in docs} == {"default"}  # the dataset's only config
    assert corpus.name == "hf:me/dawiki-lille"


def test_a_config_and_named_columns(mixed_copy):
    root, configs = mixed_copy
    corpus = HubDataset(
        "hf:me/dansk-blanding:dagw", text_column="content", domain_column="genre", path=root
    )
    docs = list(corpus.documents())
    assert [(d.id, d.text, d.domain) for d in docs] == [
        (r["id"], r["text"], r["domain"]) for r in configs["dagw"]
    ]
    assert {d.domain for d in docs} == {"books", "conversation", "other", "legal", "news", "social"}

    lcc = HubDataset("hf:me/dansk-blanding:lcc", "content", "genre", path=root)
    assert {d.domain for d in lcc.documents()} == {"news", "web"}  # that config's rows only
    one_domain = HubDataset("hf:me/dansk-blanding:lcc", "content", path=root)
    assert {d.domain for d in one_domain.documents()} == {"dansk-blanding"}
    capped = HubDataset("hf:me/dansk-blanding:lcc", "content", path=root, max_bytes=5000)
    assert len(list(capped.documents())) == 2  # stops at the first document past 5000 bytes

    fingerprints = {c.fingerprint() for c in (corpus, lcc, one_domain, capped)}
    fingerprints.add(HubDataset("hf:me/dansk-blanding:lcc", "tags", path=root).fingerprint())
    assert len(fingerprints) == 5  # config, domain column, cap and text column all count


class TestHfKit(conformance("corpus", "hf")):
    """The corpus slot's conformance kit, on the local copy."""

    @pytest.fixture(autouse=True)
    def _local_copy(self, mixed_copy):
        root, _ = mixed_copy
        self.settings = {
            "corpus": "hf:me/dansk-blanding:dagw",
            "hub_path": str(root),
            "text_column": "content",
            "domain_column": "genre",
        }


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("hf:", "the dataset must be OWNER/NAME"),
        ("hf:wikipedia", "the dataset must be OWNER/NAME"),
        ("hf:a/b/c", "the dataset must be OWNER/NAME"),
        ("hf:me/dawiki:", "the config after ':' is empty"),
        ("hf:me/da wiki", "a dataset name has letters, digits"),
        ("hf:me/da--wiki", "a dataset name has letters, digits, '-', '_' and '.' (no '--'"),
    ],
)
def test_malformed_specs(spec, problem):
    with pytest.raises(DataError) as e:
        parse_hf_spec(spec)
    assert str(e.value).startswith(f"malformed hub corpus '{spec}': {problem}")
    assert str(e.value).endswith(
        "; give --corpus hf:OWNER/NAME or hf:OWNER/NAME:CONFIG "
        "(for example hf:wikimedia/wikipedia:20231101.da)"
    )


def test_specs():
    assert parse_hf_spec("hf:wikimedia/wikipedia:20231101.da") == (
        "wikimedia/wikipedia",
        "20231101.da",
    )
    assert parse_hf_spec("hf:me/dawiki-lille") == ("me/dawiki-lille", "")


def hf_args(root, spec, *settings):
    args = ["data", "stats", "--corpus", spec, "--tokenizer", "byte", "--set", f"hub_path={root}"]
    for setting in settings:
        args += ["--set", setting]
    return args


BAD = {
    "a text column it does not have": (
        ("hf:me/dansk-blanding:lcc", "text_column=body"),
        "hf:me/dansk-blanding:lcc has no column 'body' (its columns: id, content, genre, tags); "
        "name the text column with --set text_column=COLUMN",
    ),
    "a text column that is not text": (
        ("hf:me/dansk-blanding:lcc", "text_column=tags"),
        "column 'tags' of hf:me/dansk-blanding:lcc holds list, not text; name a text column "
        "with --set text_column=COLUMN (its text columns: id, content, genre)",
    ),
    "a domain column it does not have": (
        ("hf:me/dansk-blanding:lcc", "text_column=content", "domain_column=domain"),
        "hf:me/dansk-blanding:lcc has no column 'domain' (its columns: id, content, genre, "
        "tags); name the domain column with --set domain_column=COLUMN, or leave it out for "
        "one domain",
    ),
    "a config it does not have": (
        ("hf:me/dansk-blanding:wiki", "text_column=content"),
        "me/dansk-blanding has no config 'wiki'; its configs: dagw, lcc",
    ),
    "several configs and none chosen": (
        ("hf:me/dansk-blanding", "text_column=content"),
        "me/dansk-blanding has 2 configs (dagw, lcc); choose one: "
        "--corpus hf:me/dansk-blanding:dagw",
    ),
    "a malformed spec": (
        ("hf:dansk-blanding",),
        "malformed hub corpus 'hf:dansk-blanding': the dataset must be OWNER/NAME",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_and_nothing_is_cached(case, klm, mixed_copy):
    root, _ = mixed_copy
    (spec, *settings), message = BAD[case]
    before = snapshot(root)
    cached = hub_folders()
    code, out, err = klm(*hf_args(root, spec, *settings))
    assert_one_line_error(code, err, message)
    assert snapshot(root) == before  # the user's copy is untouched
    assert hub_folders() == cached  # no snapshot kept, no download left behind


def hub_folders() -> set[str]:
    """The snapshot folders (and unfinished downloads) in the hub cache; lock files aside."""
    hub = cache_root() / "hub"
    return {p.name for p in hub.iterdir() if p.is_dir()} if hub.exists() else set()


def test_bad_input_in_a_process_of_its_own(mixed_copy, tmp_path):
    """Where datasets' and huggingface_hub's loggers would show: a column error after the
    dataset is opened, and the hub itself, offline."""
    root, _ = mixed_copy
    code, out, err = klm_process(
        *hf_args(root, "hf:me/dansk-blanding:lcc", "text_column=body"), cwd=tmp_path
    )
    assert_one_line_error(code, err, "has no column 'body' (its columns: id, content, genre")
    code, out, err = klm_process("data", "stats", "--corpus", "hf:me/dansk-blanding", cwd=tmp_path)
    assert_one_line_error(
        code, err, "cannot load 'me/dansk-blanding' from the Hugging Face hub", "--corpus PATH"
    )


def test_settings_of_the_hf_corpus_belong_to_it(klm):
    code, out, err = klm("data", "stats", "--set", "text_column=body")
    assert_one_line_error(code, err, "setting 'text_column' belongs to corpus 'hf'")


def test_a_run_on_a_hub_dataset_records_the_dataset_and_config(klm, mixed_copy, tmp_path):
    root, configs = mixed_copy
    spec = "hf:me/dansk-blanding:lcc"
    settings = ["--set", f"hub_path={root}", "--set", "text_column=content"]
    settings += ["--set", "domain_column=genre"]
    code, out, err = klm("run", "--corpus", spec, *settings, *TINY_RUN, "--out", tmp_path / "r")
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert set(summary["val_bpb_by_domain"]) == {"news", "web"}
    assert 0 < summary["val_bpb"] < 9
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["corpus"], config["text_column"], config["domain_column"]) == (
        spec,
        "content",
        "genre",
    )
    data = json.loads((tmp_path / "r" / "provenance.json").read_text())["data"]
    expected = HubDataset(spec, "content", "genre", path=str(root)).fingerprint()
    assert (data["corpus"], data["corpus_fingerprint"]) == (spec, expected)
    folders = [p.name for p in (cache_root() / "hub").iterdir()]
    assert f"hf-me-dansk-blanding-lcc-{expected}" in folders  # the snapshot later runs read

    code, out, err = klm("data", "stats", "--json", "--corpus", "hf:me/dansk-blanding:dagw",
                         *settings)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["domains"]["total"]["documents"] == len(configs["dagw"])
