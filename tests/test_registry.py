"""The ledger in registry.toml and the tables rendered from it (docs/results.md, README's
current record). Every write goes to a temporary copy; the real registry.toml and pages are
only read, to check that they agree."""

from __future__ import annotations

import tomllib

import pytest

from kennethlm_core import ledger
from kennethlm_core.config import load_registry_doc
from kennethlm_core.errors import ConfigError
from kennethlm_core.ledger import (
    append_experiment,
    component_status,
    ledger_entry,
    pages,
    promote,
    render_page,
    render_tables,
)

from .conftest import REPO, assert_one_line_error, copy_ledger


def summary(verdict="better", candidate="--posemb none", settings=None, delta=-0.012):
    """A comparison's summary.json, with made-up numbers."""
    return {
        "name": f"record-vs-{verdict}",
        "date": "2026-11-25",
        "commit": "abc123def456",
        "machine": "cpu (2 threads, test)",
        "baseline": "record",
        "candidate": candidate,
        "candidate_settings": settings or {"posemb": "none"},
        "shared_settings": {"corpus": "../shared/data/corpus"},
        "budget": {"steps": 600},
        "seeds": [1, 2, 3, 4, 5],
        "metric": "bpb",
        "higher_is_better": False,
        "branch_at": None,
        "arms": {
            "baseline": {"values": [3.1, 3.2, 3.3, 3.2, 3.1], "mean": 3.18, "std": 0.0837,
                         "tokens_per_s": 11000.4},
            "candidate": {"values": [3.09, 3.19, 3.29, 3.18, 3.09], "mean": 3.168,
                          "std": 0.0835, "tokens_per_s": 11500.6},
        },
        "delta": delta,
        "delta_ci": [delta - 0.004, delta + 0.004],
        "p": 0.000123456789,
        "min_effect": 0.005,
        "alpha": 0.01,
        "verdict": verdict,
    }  # fmt: skip


@pytest.fixture
def copy(tmp_path, monkeypatch):
    monkeypatch.setenv("KLM_REGISTRY", str(copy_ledger(tmp_path)))
    return tmp_path


def test_appending_keeps_the_rest_of_the_file(copy):
    path = copy / "registry.toml"
    path.chmod(0o644)
    before = path.read_text()
    append_experiment(ledger_entry(summary()), path)
    append_experiment(ledger_entry(summary("worse", "--set lr=1e-2", {"lr": 0.01}, 0.05)), path)
    after = path.read_text()
    assert after.startswith(before)  # comments, order and layout survive
    assert path.stat().st_mode & 0o777 == 0o644  # and so do its permissions
    doc = tomllib.loads(after)
    first, second = doc["experiments"][-2:]
    assert first["candidate_settings"] == {"posemb": "none"} and first["verdict"] == "better"
    assert first["baseline_values"] == [3.1, 3.2, 3.3, 3.2, 3.1] and first["p"] == 0.000123457
    assert first["budget"] == {"steps": 600} and first["commit"] == "abc123def456"
    assert "branch_at" not in first  # None has no TOML form: left out
    assert second["candidate"] == "--set lr=1e-2" and second["delta"] == 0.05
    assert component_status(doc, "posemb", "none") == "accepted"


def test_a_failed_write_leaves_the_registry_as_it_was(copy, monkeypatch):
    import os

    path = copy / "registry.toml"
    before = path.read_text()

    def refuse(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        append_experiment(ledger_entry(summary()), path)
    assert path.read_text() == before
    left = sorted(p.name for p in copy.iterdir() if p.name != "registry.toml.lock")
    assert left == ["README.md", "docs", "registry.toml"]  # no temporary file


def test_promote_makes_the_candidate_the_record_and_keeps_the_old_one(copy):
    path = copy / "registry.toml"
    old_record = tomllib.loads(path.read_text())["recipes"]["record"]
    entry = ledger_entry(summary(settings={"posemb": "none", "n_layer": 6}))
    append_experiment(entry, path)
    candidate_config = {k: v for k, v in old_record.items() if k != "grad_clip"}  # say, dropped
    promote(entry, {**candidate_config, "posemb": "none", "n_layer": 6}, path)
    text = path.read_text()
    assert text.startswith("# KennethLM registry")  # the comments survive
    doc = tomllib.loads(text)
    record = doc["recipes"]["record"]
    assert record["posemb"] == "none" and record["n_layer"] == 6 and "grad_clip" not in record
    assert record["lr"] == old_record["lr"] and "previous record" in record["description"]
    assert doc["recipes"]["baseline"]["posemb"] == "learned"
    exp = doc["experiments"][-1]
    assert exp["promoted"] is True and exp["previous_record"] == old_record
    assert component_status(doc, "posemb", "none") == "record"


def test_only_a_better_result_just_recorded_is_promoted(copy):
    path = copy / "registry.toml"
    entry = ledger_entry(summary("inconclusive"))
    append_experiment(entry, path)
    before = path.read_text()
    with pytest.raises(ConfigError, match="only a recorded comparison against record"):
        promote(entry, {}, path)
    assert path.read_text() == before


def test_an_earlier_result_is_promoted_until_the_record_changes(copy):
    path = copy / "registry.toml"
    rope = ledger_entry(summary(settings={"posemb": "rope"}))
    append_experiment(rope, path)
    append_experiment(ledger_entry(summary("inconclusive", "--set lr=2e-3", {"lr": 0.002})), path)
    rope["commit"] = "0123456789ab"  # the same runs, recorded again from a later commit
    assert not append_experiment(rope, path)
    config = tomllib.loads(path.read_text())["recipes"]["record"]
    assert promote(rope, {**config, "posemb": "rope"}, path)["posemb"] == "rope"
    experiments = tomllib.loads(path.read_text())["experiments"]
    assert experiments[-2]["promoted_at"] == len(experiments)  # promoted after the next entry
    before = path.read_text()
    with pytest.raises(ConfigError, match="the record changed after"):
        promote(rope, {**config, "posemb": "rope"}, path)
    assert path.read_text() == before


def test_the_results_page_shows_accepted_and_negative_results(copy):
    path = copy / "registry.toml"
    append_experiment(ledger_entry(summary()), path)
    append_experiment(ledger_entry(summary("inconclusive", "--set lr=2e-3", {"lr": 0.002})), path)
    page = render_page((copy / "docs/results.md").read_text(), load_registry_doc(path))
    results = page.split("## Accepted improvements")[1].split("## Negative results")[0]
    negative = page.split("## Negative results")[1].split("## Measured on the old split")[0]
    row = next(line for line in results.splitlines() if line.startswith("| `--posemb none` |"))
    assert "| `record` r" in row and "| corpus=../shared/data/corpus | 600 steps | 5 | bpb |" in row
    assert "-0.0120 | [-0.0160, -0.0080] | 0.00012 | - | 2026-11-25 | abc123def456 |" in results
    assert "--set lr=2e-3" not in results
    assert "`--set lr=2e-3`" in negative and "3.1800 ± 0.0837 | 3.1680 ± 0.0835" in negative
    assert "| inconclusive |" in negative


def test_the_record_log_lists_promotions_and_tables_name_the_record_measured_against():
    assert "No entries on ledger schema 2" in render_tables({})["record-log"]
    lone = ledger_entry(summary("worse", "--set lr=1e-2", {"lr": 0.01}))
    assert render_tables({"experiments": [lone]})["record-log"] == (
        "No promotions on ledger schema 2 yet."
    )
    rope = ledger_entry(summary(settings={"posemb": "rope"})) | {"promoted": True, "promoted_at": 2}
    before = ledger_entry(summary("worse", "--set lr=1e-2", {"lr": 0.01}))  # before the promotion
    later = ledger_entry(summary("inconclusive", "--set lr=2e-3", {"lr": 0.002}))
    later["shared_settings"]["threads"] = 1
    tables = render_tables({"experiments": [rope, before, later]})
    assert "| `--set lr=1e-2` | `record` r0 |" in tables["negative"]
    log = tables["record-log"].splitlines()
    assert log[2] == "| r0 | the baseline recipe | 3.1800 | | | | | |"
    assert log[3].startswith("| r1 | `--posemb none` | 3.1680 | -0.0120 | [-0.0160, -0.0080] |")
    assert len(log) == 4
    assert "| `record` r0 | corpus=../shared/data/corpus |" in tables["results"]
    negative = tables["negative"].splitlines()[-1]
    assert "| `record` r1 | corpus=../shared/data/corpus | 600 steps |" in negative  # no threads


def test_the_pages_agree_with_registry_toml():
    """Fails when the ledger changed and `klm registry render` was not run."""
    found = pages(REPO / "registry.toml")
    assert [page.relative_to(REPO).as_posix() for page, _ in found] == [
        "docs/results.md",
        "README.md",
    ]
    doc = load_registry_doc(REPO / "registry.toml")
    for page, tables in found:
        text = page.read_text()
        expected = render_page(text, doc, tables)
        assert text == expected, f"{page.name}'s tables are stale: run klm registry render"


def test_the_readme_shows_the_current_record_beside_the_baseline():
    doc = load_registry_doc(REPO / "registry.toml")
    readme = (REPO / "README.md").read_text()
    begin, end = ledger.MARKERS["current-record"]
    table = readme[readme.index(begin) + len(begin) : readme.index(end)].strip().splitlines()
    chain = render_tables(doc)["record-log"].splitlines()
    n = len(chain) - 3  # the header, its rule, r0
    assert len(table) == 4 and table[2].startswith("| r0 | ")
    assert table[3].startswith(f"| **r{n}** | ") and f"change (on r{n - 1})" in table[0]
    last = chain[-1].split(" | ")
    assert f"**{last[2]}**" in table[3] and last[1] in table[3]  # its val_bpb, its change
    assert "results:begin" not in readme  # the ledger's tables are on the results page


def test_the_current_record_is_the_last_promotion_of_the_schema():
    rope = ledger_entry(summary(settings={"posemb": "rope"})) | {"promoted": True}
    rope["test_bpb"] = {"baseline_mean": 3.25, "candidate_mean": 3.2468}
    assert render_tables({"experiments": [rope]})["current-record"].splitlines()[2:] == [
        "| r0 | 3.1800 | 3.2500 | the baseline recipe | | | | |",
        "| **r1** | **3.1680** | 3.2468 | `--posemb none` | -0.0120 | [-0.0160, -0.0080] "
        "| 600 steps, 5 seeds, corpus=../shared/data/corpus | 2026-11-25 |",
    ]
    lone = ledger_entry(summary("worse", "--set lr=1e-2", {"lr": 0.01}))
    assert render_tables({"experiments": [lone]})["current-record"] == (
        "The baseline recipe: no promotions on ledger schema 2 yet."
    )


def test_registry_render_command_checks_and_updates(copy, klm):
    assert klm("registry", "render", "--check")[0] == 0
    append_experiment(ledger_entry(summary()), copy / "registry.toml")
    code, out, err = klm("registry", "render", "--check")
    assert code == 1 and "docs/results.md disagrees" in err
    readme = (copy / "README.md").read_text()
    code, out, err = klm("registry", "render")
    assert code == 0, err
    assert f"updated {copy / 'docs/results.md'}" in out
    assert f"already up to date: {copy / 'README.md'}" in out  # not promoted: the same record
    assert "`--posemb none`" in (copy / "docs/results.md").read_text()
    assert (copy / "README.md").read_text() == readme
    assert klm("registry", "render", "--check")[0] == 0


def test_registry_render_into_a_page_of_ones_own(copy, klm):
    mine = copy / "mine.md"
    begin, end = ledger.MARKERS["record-log"]
    mine.write_text(f"# My notes\n\n{begin}\nold\n{end}\n\nthe end\n")
    code, out, err = klm("registry", "render", "--page", str(mine))
    assert code == 0, err
    text = mine.read_text()
    assert text.startswith("# My notes\n\n") and text.endswith(f"{end}\n\nthe end\n")
    assert "| r1 | `--posemb rope` |" in text and "old" not in text

    plain = copy / "plain.md"
    plain.write_text("# no markers\n")
    code, out, err = klm("registry", "render", "--page", str(plain))
    assert_one_line_error(code, err, "plain.md has no klm registry render markers")
    assert plain.read_text() == "# no markers\n"
    code, out, err = klm("registry", "render", "--page", str(copy / "absent.md"))
    assert_one_line_error(code, err, "absent.md does not exist")


def test_without_a_results_page_render_says_where_it_looked(copy, klm):
    (copy / "docs/results.md").unlink()
    (copy / "README.md").write_text("# a README without markers\n")
    code, out, err = klm("registry", "render")
    assert_one_line_error(code, err, "docs/results.md does not exist; give the page with --page")
