"""The ledger in registry.toml and README's tables. Every write goes to a temporary copy; the
real registry.toml and README.md are only read, to check that they agree."""

from __future__ import annotations

import shutil
import tomllib

import pytest

from kennethlm_core.config import load_registry_doc
from kennethlm_core.errors import ConfigError
from kennethlm_core.registry import (
    append_experiment,
    component_status,
    ledger_entry,
    promote,
    render_readme,
    render_tables,
)

from .conftest import REPO


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
    shutil.copy(REPO / "registry.toml", tmp_path / "registry.toml")
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    monkeypatch.setenv("KLM_REGISTRY", str(tmp_path / "registry.toml"))
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
    assert left == ["README.md", "registry.toml"]  # no temporary file


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


def test_readme_tables_show_accepted_and_negative_results(copy):
    path = copy / "registry.toml"
    append_experiment(ledger_entry(summary()), path)
    append_experiment(ledger_entry(summary("inconclusive", "--set lr=2e-3", {"lr": 0.002})), path)
    readme = render_readme((copy / "README.md").read_text(), load_registry_doc(path))
    results = readme.split("## Results")[1].split("## Negative results")[0]
    negative = readme.split("## Negative results")[1]
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


def test_readme_agrees_with_registry_toml():
    """Fails when the ledger changed and `klm registry render` was not run."""
    readme = (REPO / "README.md").read_text()
    expected = render_readme(readme, load_registry_doc(REPO / "registry.toml"))
    assert readme == expected, "README.md's results tables are stale: run klm registry render"


def test_registry_render_command_checks_and_updates(copy, klm):
    assert klm("registry", "render", "--check")[0] == 0
    append_experiment(ledger_entry(summary()), copy / "registry.toml")
    code, out, err = klm("registry", "render", "--check")
    assert code == 1 and "disagrees" in err
    code, out, err = klm("registry", "render")
    assert code == 0 and "updated" in out
    assert "`--posemb none`" in (copy / "README.md").read_text()
    assert klm("registry", "render", "--check")[0] == 0
