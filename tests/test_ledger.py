"""The ledger re-measured: the lock on registry.toml, schema versions, the restarted record
chain, the load average of time budgets and the secondary (non-deciding) metric. Every write
goes to a temporary registry; the real registry.toml and its pages are only read."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from kennethlm_core import experiment, jobs, ledger
from kennethlm_core.config import load_recipe, load_registry_doc
from kennethlm_core.errors import ConfigError, DataError
from kennethlm_core.ledger import (
    LEDGER_SCHEMA,
    RESULTS_TABLES,
    append_experiment,
    entry_schema,
    ledger_entry,
    promote,
    render_page,
    render_tables,
)

from .conftest import REPO, SHARED_DATA, assert_one_line_error, copy_ledger
from .test_registry import summary


@pytest.fixture
def copy(tmp_path, monkeypatch):
    monkeypatch.setenv("KLM_REGISTRY", str(copy_ledger(tmp_path)))
    return tmp_path


def entry(verdict="better", schema=LEDGER_SCHEMA, **changes):
    """A ledger entry of that schema (schema None: an old entry without the key)."""
    e = ledger_entry(summary(verdict)) | changes
    if schema is None:
        del e["schema"]
    else:
        e["schema"] = schema
    return e


# -- the lock: appends from processes at the same moment ---------------------------------------


def writer(path: str, index: int, barrier, locked: bool, times) -> None:
    """One process's append (in a forked child): released with the others by ``barrier``."""
    read = ledger._read

    def slow_read(p):  # widen the window between reading the ledger and writing it back
        doc = read(p)
        time.sleep(0.1)
        return doc

    ledger._read = slow_read
    if not locked:
        ledger.ledger_lock = lambda path=None: contextlib.nullcontext()
    e = {"schema": 2, "name": f"writer-{index}", "baseline_values": [index]}
    barrier.wait(timeout=20)
    start = time.time()
    ledger.append_experiment(e | {"candidate_values": [index], "verdict": "worse"}, Path(path))
    times[index] = (start, time.time())


def append_at_once(tmp_path: Path, n: int, locked: bool) -> tuple[list[str], list[tuple]]:
    """n processes append one entry each at the same moment; (names in the ledger, timings).
    Forked, so that the children start at once with the modules this one has loaded."""
    import multiprocessing

    import kennethlm_core.checkpoint  # noqa: F401  (the writes need it: loaded before the fork)

    path = tmp_path / f"registry-{locked}.toml"
    path.write_text("# a test ledger\n")
    ctx = multiprocessing.get_context("fork")
    barrier, times = ctx.Barrier(n), ctx.Manager().dict()
    procs = [
        ctx.Process(target=writer, args=(str(path), i, barrier, locked, times)) for i in range(n)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    names = [e["name"] for e in tomllib.loads(path.read_text()).get("experiments", [])]
    return names, list(times.values())


def test_appends_from_several_processes_at_once_keep_every_entry(tmp_path):
    names, timings = append_at_once(tmp_path, 5, locked=True)
    assert sorted(names) == [f"writer-{i}" for i in range(5)]
    # the writes really competed: every process had started before the first one finished
    assert len(timings) == 5 and max(t[0] for t in timings) < min(t[1] for t in timings)


def test_without_the_lock_the_same_appends_lose_entries(tmp_path):
    """The control of the test above: the same processes, with a lock that does nothing."""
    names, _ = append_at_once(tmp_path, 5, locked=False)
    assert len(set(names)) < 5


def test_a_write_waits_for_the_lock_and_gives_up_in_one_line(copy, monkeypatch):
    path = copy / "registry.toml"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from kennethlm_core.ledger import ledger_lock\n"
            "with ledger_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert (copy / "registry.toml.lock").exists()  # beside registry.toml
        monkeypatch.setattr(ledger, "LOCK_TIMEOUT_S", 0.3)
        before = path.read_text()
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match="registry.toml.lock"):
            append_experiment(entry(), path)
        assert time.perf_counter() - t0 >= 0.3 and path.read_text() == before
    finally:
        holder.kill()
        holder.wait()
    assert append_experiment(entry(), path)  # the holder is gone: the lock is free


RECORDER = """
import sys
from pathlib import Path
from kennethlm_core.ledger import (
    append_experiment, ledger_entry, ledger_lock, pages, render_files
)
sys.path.insert(0, sys.argv[3])
from tests.test_registry import summary

path, start = Path(sys.argv[1]), int(sys.argv[2])
for i in range(start, start + 1000):  # what klm compare --record does: append, then render
    entry = ledger_entry(summary()) | {"name": f"kill-{i}", "baseline_values": [float(i)]}
    with ledger_lock(path):
        append_experiment(entry, path)
        render_files(pages(path), path)
    print(i, flush=True)
"""


def test_sigkill_while_recording_loses_no_entry(copy):
    """A process recording entry after entry (append and the pages' render under the lock) is
    SIGKILLed at random moments: every entry it finished is in a ledger that still parses,
    the pages still render from it, and the lock is free for the next process."""
    import random

    path, rng, done = copy / "registry.toml", random.Random(3), []
    before = len(tomllib.loads(path.read_text()).get("experiments", []))
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(path), str(len(done)), str(REPO)],
            stdout=subprocess.PIPE,
            text=True,
        )
        done.append(int(proc.stdout.readline()))  # at least one entry per process
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        out, _ = proc.communicate()
        done += [int(line) for line in out.split()]
        doc = tomllib.loads(path.read_text())  # parses: no torn write
        names = [e["name"] for e in doc["experiments"][before:]]
        assert len(set(names)) == len(names)  # none twice
        assert names[: len(done)] == [f"kill-{i}" for i in done]  # none lost, in order
        assert len(names) - len(done) <= 1  # at most the one killed before it said so
        render_page((copy / "docs/results.md").read_text(), doc, RESULTS_TABLES)  # whole too
        render_page((copy / "README.md").read_text(), doc)
        done = list(range(len(names)))  # the next process goes on after the last that landed
    assert append_experiment(entry(), path)  # the lock is not held by a dead process


# -- schema versions -------------------------------------------------------------------------


def test_the_real_ledger_is_versioned_and_its_old_entries_are_schema_1():
    text = (REPO / "registry.toml").read_text()
    doc = tomllib.loads(text)
    assert doc["ledger_schema"] == LEDGER_SCHEMA == 2
    assert all("schema" in e for e in doc["experiments"])
    assert [e["schema"] for e in doc["experiments"][:16]] == [1] * 16  # measured before 2
    assert text.startswith("# KennethLM registry")  # the layout survived the migration


def test_new_entries_are_the_current_schema_and_entries_without_one_count_as_1(copy):
    path = copy / "registry.toml"
    assert ledger_entry(summary())["schema"] == 2
    assert entry_schema({}) == 1 and entry_schema({"schema": 2}) == 2
    append_experiment(ledger_entry(summary()), path)
    assert tomllib.loads(path.read_text())["experiments"][-1]["schema"] == 2
    old = render_tables({"experiments": [entry(schema=None)]})
    assert "No entries on ledger schema 2" in old["results"]
    assert "`--posemb none`" in old["ledger-v1"]


def test_a_fresh_ledger_gets_the_schema_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "registry.toml"
    append_experiment(entry(), path)
    assert tomllib.loads(path.read_text())["ledger_schema"] == LEDGER_SCHEMA
    path.write_text(path.read_text().replace("ledger_schema = 2", "ledger_schema = 3"))
    with pytest.raises(ConfigError, match="ledger schema 3"):
        append_experiment(entry("worse"), path)
    with pytest.raises(ConfigError, match="schema 3"):
        render_tables({"experiments": [entry(schema=3)]})


def test_current_tables_show_schema_2_and_the_old_ones_apart():
    # schema 1: two promotions (r1, r2) and a negative result; schema 2: one promotion
    old1 = entry(schema=1, name="old-1", candidate="--posemb rope", promoted=True, promoted_at=1)
    old2 = entry(schema=None, name="old-2", candidate="--mlp relu2", promoted=True, promoted_at=2)
    old_neg = entry("worse", schema=1, name="old-neg", candidate="--posemb none")
    new1 = entry(name="new-1", candidate="--optimizer muon", promoted=True, promoted_at=4)
    new_neg = entry("inconclusive", name="new-neg", candidate="--tweak softcap")
    tables = render_tables({"experiments": [old1, old2, old_neg, new1, new_neg]})
    current = tables["record-log"].splitlines()
    assert len(current) == 4 and current[3].startswith("| r1 | `--optimizer muon` |")
    assert "relu2" not in tables["record-log"] and "rope" not in tables["record-log"]
    assert "`--optimizer muon` | `record` r0 |" in tables["results"]  # r0 of the new chain
    assert "`--tweak softcap` | `record` r1 |" in tables["negative"]
    for old in ("rope", "relu2", "--posemb none"):
        assert old not in tables["results"] + tables["negative"]
    v1 = tables["ledger-v1"]
    assert "muon" not in v1 and "softcap" not in v1
    chain = v1.split("### Old record chain (schema 1)")[1].split("###")[0]
    assert "| r1 | `--posemb rope` |" in chain and "| r2 | `--mlp relu2` |" in chain
    assert "`--posemb none` | `record` r2 |" in v1.split("### Old negative results (schema 1)")[1]


def test_with_no_schema_2_entries_each_current_table_says_so_in_one_line():
    doc = load_registry_doc(REPO / "registry.toml")
    doc["experiments"] = [e for e in doc["experiments"] if entry_schema(e) == 1]
    tables = render_tables(doc)
    for key in ("record-log", "results", "negative"):
        assert len(tables[key].splitlines()) == 1
        assert tables[key].startswith("No entries on ledger schema 2")
    assert "record chain (r0 to r4)" in tables["record-log"]
    assert "| r4 | `--batch-size 24 --lr 2e-3 --set muon_lr=0.03` |" in tables["ledger-v1"]


def test_the_results_page_keeps_the_old_chain_in_its_own_section_after_the_negative_results():
    page = (REPO / "docs/results.md").read_text()
    negative = page.index("## Negative results")
    old = page.index("## Measured on the old split and metric (schema 1)")
    begin, end = ledger.MARKERS["ledger-v1"]
    assert negative < old < page.index(begin) < page.index(end) < page.index("## Plots")
    section = page[page.index(begin) : page.index(end)]
    assert "superseded" in page[old : page.index(begin)]
    for n in range(5):
        assert f"| r{n} |" in section


def test_a_results_page_without_the_schema_1_markers_is_refused():
    page = (REPO / "docs/results.md").read_text()
    begin, end = ledger.MARKERS["ledger-v1"]
    cut = page[: page.index(begin)] + page[page.index(end) + len(end) :]
    doc = load_registry_doc(REPO / "registry.toml")
    with pytest.raises(ConfigError, match="results.md has no .* markers for the ledger-v1 table"):
        render_page(cut, doc, RESULTS_TABLES, name="docs/results.md")


# -- promotions and the restarted chain ------------------------------------------------------


def test_promotion_counts_only_promotions_of_its_own_schema(copy):
    path = copy / "registry.toml"
    config = tomllib.loads(path.read_text())["recipes"]["record"]
    earlier = ledger_entry(summary(settings={"posemb": "rope"})) | {"name": "earlier"}
    new = ledger_entry(summary(settings={"posemb": "none"})) | {"name": "new"}
    append_experiment(earlier, path)
    append_experiment(new, path)
    # a schema-1 promotion after it belongs to the old chain: the record new measured stands
    append_experiment(entry(schema=1, name="old", promoted=True, promoted_at=99), path)
    assert promote(new, {**config, "posemb": "none"}, path)["posemb"] == "none"
    # a schema-2 promotion after it changes the record earlier was measured against
    before = path.read_text()
    with pytest.raises(ConfigError, match="the record changed after earlier"):
        promote(earlier, {**config, "posemb": "rope"}, path)
    assert path.read_text() == before


def test_an_old_schema_entry_is_not_promoted(copy):
    path = copy / "registry.toml"
    old = entry(schema=1, name="old-better")
    append_experiment(old, path)
    before = path.read_text()
    with pytest.raises(ConfigError, match="ledger schema 1"):
        promote(old, {}, path)
    assert path.read_text() == before


@pytest.fixture
def unreset(copy):
    """The copy as it was before the real registry's record was reset: the schema-1 record r4
    as [recipes.record], no [recipes.record-v1], no schema-2 entries."""
    import tomlkit

    path = copy / "registry.toml"
    doc = tomlkit.parse(path.read_text())
    recipes = doc["recipes"]
    if "record-v1" in recipes:
        old = recipes["record-v1"]
        for key in list(recipes["record"]):
            del recipes["record"][key]
        for key, value in old.items():
            recipes["record"][key] = value
        del recipes["record-v1"]
    experiments = doc.get("experiments", [])
    for e in [e for e in experiments if e.get("schema", 1) >= 2]:
        experiments.remove(e)
    path.write_text(tomlkit.dumps(doc))
    return copy


def test_reset_record_keeps_the_old_record_and_restarts_from_the_baseline(unreset, klm):
    path = unreset / "registry.toml"
    before = path.read_text()
    doc = tomllib.loads(before)
    code, out, err = klm("registry", "reset-record")
    assert code == 0, err
    assert "record-v1" in out
    after = path.read_text()
    new = tomllib.loads(after)
    kept, record = new["recipes"]["record-v1"], new["recipes"]["record"]
    old_record = doc["recipes"]["record"]
    assert {k: v for k, v in kept.items() if k != "description"} == {
        k: v for k, v in old_record.items() if k != "description"
    }
    assert (
        kept["description"].startswith("the schema-1 record r4")
        and "speedrun" in kept["description"]
    )
    baseline = doc["recipes"]["baseline"]
    assert {k: v for k, v in record.items() if k != "description"} == {
        k: v for k, v in baseline.items() if k != "description"
    }
    assert "restarts" in record["description"] and "schema 2" in record["description"]
    assert load_recipe("record-v1", new)["muon_lr"] == 0.03  # a recipe klm run can start from
    assert new["experiments"] == doc["experiments"] and new["recipes"]["baseline"] == baseline
    assert after.startswith(before[: before.index("[recipes.record]")])  # the layout kept
    ledger = before[before.index("\n[[experiments]]\n") :]
    assert after.endswith(ledger)
    # once only
    code, out, err = klm("registry", "reset-record")
    assert_one_line_error(code, err, "record-v1")
    assert path.read_text() == after


def test_reset_record_is_refused_once_schema_2_comparisons_measured_the_record(unreset):
    path = unreset / "registry.toml"
    append_experiment(ledger_entry(summary("inconclusive")), path)
    before = path.read_text()
    with pytest.raises(ConfigError, match="reset before measuring against it"):
        ledger.reset_record(path)
    assert path.read_text() == before


# -- the load average ------------------------------------------------------------------------


def timed(load=(1.234, 0.9, 0.5), budget=None):
    s = summary() | {"budget": budget or {"time": 600.0}}
    if load is not None:
        s["load_avg_start"] = list(load)
    return s


def test_the_load_average_is_kept_and_shown_only_for_time_budgets():
    e = ledger_entry(timed())
    assert e["load_avg_start"] == [1.23, 0.9, 0.5]
    assert "load_avg_start" not in ledger_entry(timed(budget={"steps": 600}))
    assert "load_avg_start" not in ledger_entry(timed(load=None))
    steps = ledger_entry(timed(budget={"steps": 600})) | {"name": "steps"}
    tables = render_tables({"experiments": [e | {"promoted": True}, steps]})
    assert "| 600s, load 1.2 | 5 |" in tables["results"]
    assert "| 600 steps | 5 |" in tables["results"] and "600 steps, load" not in tables["results"]
    assert "| 600s, load 1.2 |" in tables["record-log"]


def test_the_load_average_at_the_start_survives_a_rerun_that_trains_nothing(tmp_path):
    now = experiment.load_average()
    assert len(now) == 3 and all(isinstance(v, float) for v in now)
    done = jobs.Job("baseline", 1, None, tmp_path, mode="done")
    new = jobs.Job("candidate", 1, None, tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"load_avg_start": [9.0, 8.0, 7.0]}))
    assert experiment.load_at_start([1.0, 1.0, 1.0], [[done]], tmp_path) == [9.0, 8.0, 7.0]
    assert experiment.load_at_start([1.0, 1.0, 1.0], [[done, new]], tmp_path) == [1.0, 1.0, 1.0]
    (tmp_path / "summary.json").unlink()
    assert experiment.load_at_start([1.0, 1.0, 1.0], [[done]], tmp_path) == [1.0, 1.0, 1.0]


# -- the secondary metric --------------------------------------------------------------------


def fake_run(folder: Path, bpb: float, chrf: float, source: dict | None, own=None) -> Path:
    folder.mkdir(parents=True)
    result = {
        "metrics": {
            "chrf++": {"value": chrf, "higher_is_better": True},
            "bpb": {"value": bpb, "higher_is_better": False},
        },
        "n": 20,
        "source": source,
    }
    doc = {"summarization (secondary)": result}
    if own is not None:
        doc["summarization"] = own
    (folder / "eval.json").write_text(json.dumps(doc))
    return folder


def test_the_secondary_metric_is_read_from_eval_json_recorded_and_rendered(tmp_path, registry):
    sec = experiment.SecondaryMetric(data=str(tmp_path), limit=20)
    runs = {
        "baseline": [
            fake_run(tmp_path / f"b{i}", 3.0 + i / 10, 10.0, sec.source()) for i in (0, 2)
        ],
        "candidate": [fake_run(tmp_path / f"c{i}", 2.9, 12.0 + i, sec.source()) for i in (0, 2)],
    }
    values = experiment.secondary_values(sec, runs, registry, say=lambda m: None)
    assert values["metrics"]["bpb"]["baseline"] == [3.0, 3.2] and values["n"] == 20
    e = ledger_entry(summary() | {"secondary": values})
    assert e["summarization"] == {
        "bpb_baseline": 3.1,
        "bpb_candidate": 2.9,
        "bpb_delta": -0.2,
        "chrf_baseline": 10.0,
        "chrf_candidate": 13.0,
        "chrf_delta": 3.0,
        "n": 20,
    }
    assert "secondary" not in e and "summarization" not in ledger_entry(summary())
    tables = render_tables({"experiments": [e, ledger_entry(summary("worse"))]})
    head = tables["results"].splitlines()[0]
    assert "| p | summarization (not deciding) | date |" in head
    assert "| 0.00012 | bpb 3.100→2.900, chrF++ 10.0→13.0 | 2026-11-25 |" in tables["results"]
    assert "| 0.00012 | - | worse |" in tables["negative"]  # an entry without it
    assert len(tables["negative"].splitlines()[1].split("|")) == len(
        tables["negative"].splitlines()[0].split("|")
    )


def test_a_cached_result_of_other_data_or_limit_is_scored_again(tmp_path, registry, monkeypatch):
    from kennethlm_core import evaluate

    sec = experiment.SecondaryMetric(data=str(tmp_path), limit=20)
    own = {"metrics": {"chrf++": {"value": 1.0}}, "n": 20}  # what `klm eval` left there
    run = fake_run(tmp_path / "run", 3.0, 10.0, {**sec.source(), "limit": 5}, own=own)
    calls = []

    def run_tasks(run_dir, names, data=None, limit=None, **kw):
        calls.append((names, data, limit))
        res = {"metrics": {"chrf++": {"value": 7.0}, "bpb": {"value": 2.5}}, "n": 20}
        doc = json.loads((Path(run_dir) / "eval.json").read_text())
        (Path(run_dir) / "eval.json").write_text(json.dumps({**doc, "summarization": res}))
        return {"summarization": res}

    monkeypatch.setattr(evaluate, "run_tasks", run_tasks)
    result = experiment.secondary_result(sec, run, registry, say=lambda m: None)
    assert (
        calls == [(["summarization"], str(tmp_path), 20)]
        and result["metrics"]["bpb"]["value"] == 2.5
    )
    doc = json.loads((run / "eval.json").read_text())
    assert doc["summarization"] == own  # klm eval's own result is left as it was
    assert doc["summarization (secondary)"]["source"] == sec.source()
    experiment.secondary_result(sec, run, registry, say=lambda m: None)
    assert len(calls) == 1  # now cached


def test_the_secondary_data_is_checked_before_training(registry, monkeypatch):
    import klm_task_summarization

    from kennethlm_core.config import build_config, resolve

    cfg = resolve(build_config("baseline", {"steps": 10}), registry)
    sec = experiment.SecondaryMetric(data=str(SHARED_DATA / "eval"))
    assert experiment.check_secondary(sec, cfg, registry) == 20

    def offline(*args, **kw):
        raise DataError(
            "cannot load 'X' from the Hugging Face hub (offline); offline, pass --data PATH"
        )

    monkeypatch.setattr(klm_task_summarization, "load_rows", offline)
    with pytest.raises(DataError) as info:
        experiment.check_secondary(experiment.SecondaryMetric(), cfg, registry)
    message = str(info.value)
    assert "--secondary-data PATH" in message and "--secondary-data none" in message
    assert "--data " not in message and "\n" not in message


def test_compare_with_unreadable_secondary_data_stops_before_training(klm, copy, tmp_path):
    before = (copy / "registry.toml").read_text()
    code, out, err = klm(
        "compare", "--baseline", "baseline", "--candidate", "--set lr=3e-3", "--steps", "2",
        "--seeds", "2", "--out", tmp_path / "x", "--record", "--secondary-data", tmp_path / "nope",
        "-q",
    )  # fmt: skip
    assert_one_line_error(code, err, "secondary metric", "--secondary-data")
    assert not (tmp_path / "x").exists() and (copy / "registry.toml").read_text() == before
