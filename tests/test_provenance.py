"""Provenance: every run records its corpus, data pipeline, tokenizer and code; a resume or a
reuse by klm compare refuses a run whose code or data changed, unless --allow-changes, which
is recorded."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kennethlm_core import data, jobs, provenance
from kennethlm_core.errors import ConfigError
from kennethlm_core.experiment import Arm, Comparison, arm_configs, plan_jobs
from kennethlm_core.rundir import RUN_FILES
from kennethlm_core.train import train

from .conftest import assert_one_line_error, tiny_config

TINY = dict(steps=4, eval_every=2, eval_bytes=1024, final_eval_bytes=1024)
RUN_ARGS = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
    "--batch-size", "4", "--steps", "4", "--eval-every", "2", "--set", "warmup_steps=2",
    "--set", "eval_bytes=1024", "--set", "final_eval_bytes=1024", "-q",
]  # fmt: skip


def saved(run: Path) -> dict:
    return json.loads((run / "provenance.json").read_text())


@pytest.fixture
def rope_copy(tmp_path, monkeypatch):
    """The rope plugin's module, served from a copy this test may edit (never the real file)."""
    module = importlib.import_module("klm_posemb_rope")  # the module the registry loaded
    copy = tmp_path / "plugin" / "klm_posemb_rope.py"
    copy.parent.mkdir()
    shutil.copy(module.__file__, copy)
    monkeypatch.setattr(module, "__file__", str(copy))
    return copy


# -- what a run records ----------------------------------------------------------------------


def test_a_run_records_its_data_and_the_code_of_every_plugin_it_used(
    tmp_path, klm, registry, rope_copy
):
    run = tmp_path / "r"
    code, out, err = klm("run", *RUN_ARGS, "--posemb", "rope", "--out", run)
    assert code == 0, err
    record = saved(run)
    assert json.loads((run / "summary.json").read_text())["provenance"] == record
    assert "provenance.json" in RUN_FILES  # --force clears it with the rest of the run

    cfg = tiny_config(registry)
    assert record["data"]["pipeline"] == data.FORMAT
    assert record["data"]["corpus"] == "sample"
    assert record["data"]["corpus_fingerprint"] == data.build_corpus(cfg, registry).fingerprint()
    tokenizer = registry.get("tokenizer", cfg.tokenizer).factory(cfg)
    tokenizer.load(run / "tokenizer")
    assert record["data"]["tokenizer"] == tokenizer.name
    assert record["data"]["tokenizer_fingerprint"] == tokenizer.fingerprint()

    code_part = record["code"]
    sha, dirty = provenance.git_state()
    assert code_part["git_commit"] == sha and code_part["git_dirty"] == dirty
    assert code_part["core"]["version"] == importlib.metadata.version("kennethlm")
    assert len(code_part["core"]["source"]) == 16
    # only the plugin the run used: the built-in attention, norm, mlp ... are the core's
    assert list(code_part["plugins"]) == ["klm-posemb-rope"]
    rope = code_part["plugins"]["klm-posemb-rope"]
    assert rope["version"] == importlib.metadata.version("klm-posemb-rope")
    assert rope["components"] == ["posemb rope"]
    assert rope["source"] == provenance.hash_files([("klm_posemb_rope.py", rope_copy)])
    assert record["overrides"] == []


def test_every_component_of_a_run_is_looked_up_including_tweaks(registry):
    cfg = tiny_config(registry, posemb="rope", tweak="qk-norm,softcap", mlp="swiglu")
    plugins = provenance.code_provenance(cfg, registry)["plugins"]
    assert set(plugins) == {
        "klm-posemb-rope",
        "klm-tweak-qk-norm",
        "klm-tweak-softcap",
        "klm-mlp-swiglu",
    }
    assert plugins["klm-tweak-softcap"]["components"] == ["tweak softcap"]
    assert len({p["source"] for p in plugins.values()}) == 4  # each its own source


def test_a_plugin_package_is_hashed_by_every_py_file_under_it(tmp_path, monkeypatch):
    pkg = tmp_path / "klm_fake_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "layers.py").write_text("Y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    monkeypatch.syspath_prepend(str(tmp_path))
    sub = importlib.import_module("klm_fake_pkg.sub.layers")
    try:
        names = [name for name, _ in provenance.module_files(sub)]
        assert sorted(names) == ["klm_fake_pkg/__init__.py", "klm_fake_pkg/sub/layers.py"]
    finally:
        for name in ("klm_fake_pkg.sub.layers", "klm_fake_pkg.sub", "klm_fake_pkg"):
            sys.modules.pop(name, None)


def test_a_factory_taken_from_another_distribution_is_not_hashed_as_the_plugins(registry):
    """A plugin that registers the core's cosine schedule under a new name: its source is its
    own module's (here: none, an in-memory module), never the whole core's or torch's."""
    import types

    from kennethlm_core import hookimpl
    from kennethlm_core.builtin.optim import cosine
    from kennethlm_core.plugins import Registry

    plugin = types.ModuleType("klm_borrowed")
    plugin.klm_register_schedule = hookimpl(lambda register: register("borrowed", cosine))
    reg = Registry(entry_points=False)
    reg.add_plugin(plugin, "schedule-borrowed", "klm-borrowed", "0.3")
    (comp,) = [c for c in reg.all() if c.name == "borrowed"]
    assert provenance.component_files(comp, reg) == []
    plugins = provenance.code_provenance(tiny_config(reg, schedule="borrowed"), reg)["plugins"]
    assert plugins == {
        "klm-borrowed": {"version": "0.3", "source": None, "components": ["schedule borrowed"]}
    }


# -- git ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_counts_untracked_files_as_dirty_but_not_ignored_ones(tmp_path):
    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("ignored.txt\n")
    (tmp_path / "a.py").write_text("a = 1\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    clean = provenance.git_commit(tmp_path)
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "ignored.txt").write_text("ignored")
    assert provenance.git_commit(tmp_path) == clean
    (tmp_path / "new_plugin.py").write_text("untracked, not ignored")
    assert provenance.git_commit(tmp_path) == clean + "-dirty"
    assert provenance.git_state(tmp_path) == (clean, True)
    assert provenance.git_commit(tmp_path / "no-such-repo") == ""


# -- what changed -------------------------------------------------------------------------


def record(**changes):
    base = {
        "data": {"pipeline": 2, "corpus_fingerprint": "c1", "tokenizer_fingerprint": "t1"},
        "code": {
            "git_commit": "abc",
            "git_dirty": False,
            "core": {"version": "0.1.0", "source": "s1"},
            "plugins": {"klm-posemb-rope": {"version": "0.1.0", "source": "r1"}},
        },
    }
    for path, value in changes.items():
        *parents, key = path.split("__")
        where = base
        for part in parents:
            where = where[part.replace("_", "-") if part.startswith("klm") else part]
        where[key] = value
    return base


@pytest.mark.parametrize(
    "change, phrases",
    [
        ({}, []),
        ({"code__git_commit": "def", "code__git_dirty": True}, []),  # recorded, not compared
        ({"data__pipeline": 3}, ["the data pipeline changed (format 2 -> 3)"]),
        ({"data__corpus_fingerprint": "c2"}, ["the corpus changed"]),
        ({"data__tokenizer_fingerprint": "t2"}, ["the tokenizer changed"]),
        ({"code__core__source": "s2"}, ["the core's source changed"]),
        ({"code__core__version": "0.2.0"}, ["the core's version changed (0.1.0 -> 0.2.0)"]),
        (
            {"code__plugins__klm_posemb_rope__source": "r2"},
            ["plugin klm-posemb-rope's source changed"],
        ),
        (
            {"code__plugins__klm_posemb_rope__version": "0.2.0"},
            ["plugin klm-posemb-rope's version changed (0.1.0 -> 0.2.0)"],
        ),
        ({"code__plugins": {}}, ["plugin klm-posemb-rope is no longer used"]),
    ],
)
def test_differences_name_what_changed(change, phrases):
    assert provenance.differences(record(), record(**change)) == phrases


def test_differences_compare_only_the_data_the_new_side_knows():
    planned = record()
    del planned["data"]["tokenizer_fingerprint"]  # before the data is prepared
    assert provenance.differences(record(data__tokenizer_fingerprint="t2"), planned) == []
    assert provenance.differences(record(data__corpus_fingerprint="c2"), planned) == [
        "the corpus changed"
    ]
    new = record()
    new["code"]["plugins"]["klm-tweak-softcap"] = {"version": "0.1.0", "source": "x"}
    assert provenance.differences(record(), new) == ["plugin klm-tweak-softcap is used now"]


# -- resuming -----------------------------------------------------------------------------


def test_resume_refuses_a_changed_plugin_until_allowed_and_records_the_override(
    tmp_path, registry, rope_copy, one_thread, monkeypatch
):
    cfg = tiny_config(registry, posemb="rope", **TINY)
    run = tmp_path / "run"
    train(cfg, run, registry=registry)
    before = saved(run)
    # the plugin edited; a file of its own, as sources are hashed once per process
    edited = tmp_path / "edited" / rope_copy.name
    edited.parent.mkdir()
    edited.write_text(rope_copy.read_text() + "\n# an edit\n")
    monkeypatch.setattr(importlib.import_module("klm_posemb_rope"), "__file__", str(edited))

    metrics = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(ConfigError) as e:
        train(cfg.replace(steps=6), run, registry=registry, resume=True)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"cannot resume {run}: plugin klm-posemb-rope's source changed")
    assert "since it started" in message and "--allow-changes" in message
    assert "the core" not in message and "corpus" not in message
    assert (run / "metrics.jsonl").read_bytes() == metrics and saved(run) == before

    summary = train(cfg.replace(steps=6), run, registry=registry, resume=True, allow_changes=True)
    assert summary["steps"] == 6
    after = saved(run)
    assert summary["provenance"] == after
    (override,) = after["overrides"]
    assert override["step"] == 4 and override["date"]
    assert override["changed"] == ["plugin klm-posemb-rope's source changed"]
    assert override["before"] == {k: v for k, v in before.items() if k != "overrides"}
    new_source = provenance.hash_files([("klm_posemb_rope.py", edited)])
    assert after["code"]["plugins"]["klm-posemb-rope"]["source"] == new_source
    assert new_source != before["code"]["plugins"]["klm-posemb-rope"]["source"]

    # the run is now on the edited plugin: resuming again needs no override
    summary = train(cfg.replace(steps=8), run, registry=registry, resume=True)
    assert summary["steps"] == 8 and len(saved(run)["overrides"]) == 1


def test_resume_refuses_a_changed_corpus_before_reading_it(tmp_path, registry, one_thread):
    corpus = tmp_path / "corpus.jsonl"

    def write(word):
        rows = [
            {"text": f"Dokument {i} om {word}: " + f"{word} og noget mere tekst {i}. " * 12}
            for i in range(40)
        ]
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("havet")
    cfg = tiny_config(registry, corpus=str(corpus), **TINY)
    run = tmp_path / "run"
    train(cfg, run, registry=registry)
    write("skoven")
    caches = sorted((Path(data.cache_root()) / "tokens").iterdir())
    with pytest.raises(ConfigError, match=r"the corpus changed since it started.*allow-changes"):
        train(cfg.replace(steps=6), run, registry=registry, resume=True)
    assert sorted((Path(data.cache_root()) / "tokens").iterdir()) == caches  # not tokenized

    summary = train(cfg.replace(steps=6), run, registry=registry, resume=True, allow_changes=True)
    assert summary["steps"] == 6
    assert saved(run)["overrides"][0]["changed"] == ["the corpus changed"]


def test_resume_with_an_unreadable_or_missing_provenance_is_one_line(tmp_path, klm):
    run = tmp_path / "r"
    code, out, err = klm("run", *RUN_ARGS, "--out", run)
    assert code == 0, err
    (run / "provenance.json").write_text("{not json")
    code, out, err = klm("run", "--resume", run, "--steps", "6", "-q")
    assert_one_line_error(
        code, err, f"cannot resume {run}", "provenance.json cannot be read", "--allow-changes"
    )
    assert (run / "provenance.json").read_text() == "{not json"

    (run / "provenance.json").unlink()  # a run made before provenance.json existed
    code, out, err = klm("run", "--resume", run, "--steps", "6", "-q")
    assert_one_line_error(code, err, "provenance is unknown", "--allow-changes")

    code, out, err = klm("run", "--resume", run, "--steps", "6", "-q", "--allow-changes")
    assert code == 0, err
    (override,) = saved(run)["overrides"]
    assert override["before"] is None and "provenance is unknown" in override["changed"][0]

    code, out, err = klm("run", *RUN_ARGS, "--out", tmp_path / "new", "--allow-changes")
    assert_one_line_error(code, err, "--allow-changes goes with --resume")


# -- klm compare --------------------------------------------------------------------------

SHARED = dict(
    n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, steps=2, eval_every=1
)  # fmt: skip


def finished_comparison(folder: Path, registry) -> tuple[Comparison, dict]:
    """A comparison folder whose runs all look finished with the code and data of now."""
    comp = Comparison(Arm("", None), Arm("--set lr=3e-3", None, {"lr": 3e-3}), SHARED, [1, 2])
    cfgs = arm_configs(comp, registry)
    for arm, cfg in cfgs.items():
        current = provenance.planned_provenance(cfg, registry)
        for seed in comp.seeds:
            run = folder / arm / f"seed-{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps(cfg.replace(seed=seed).to_dict()))
            (run / "summary.json").write_text(json.dumps({"init_from": None}))
            provenance.save(run, current)
    return comp, cfgs


def test_compare_refuses_to_reuse_a_run_made_with_other_data(tmp_path, registry):
    folder = tmp_path / "exp"
    comp, cfgs = finished_comparison(folder, registry)
    plan = plan_jobs(comp, cfgs, folder, force=False, threads=0, registry=registry)
    assert [j.mode for j in plan[0]] == ["done"] * 4

    changed = folder / "candidate" / "seed-2"
    old = saved(changed)
    old["data"]["corpus_fingerprint"] = "another corpus"
    provenance.save(changed, old)
    with pytest.raises(ConfigError) as e:
        plan_jobs(comp, cfgs, folder, force=False, threads=0, registry=registry)
    assert str(e.value).startswith(
        f"cannot reuse {changed} (candidate seed 2): the corpus changed since it started"
    )
    assert "--allow-changes" in str(e.value) and "\n" not in str(e.value)

    (jobs,) = plan_jobs(
        comp, cfgs, folder, force=False, threads=0, registry=registry, allow_changes=True
    )
    assert [(j.mode, j.changes) for j in jobs] == [
        ("done", []),
        ("done", []),
        ("done", []),
        ("done", ["the corpus changed"]),
    ]
    (jobs,) = plan_jobs(comp, cfgs, folder, force=True, threads=0, registry=registry)
    assert [j.mode for j in jobs] == ["done", "done", "done", "restart"]

    (folder / "baseline" / "seed-1" / "provenance.json").unlink()  # an older run
    with pytest.raises(ConfigError, match=r"baseline/seed-1 \(baseline seed 1\): its provenance"):
        plan_jobs(comp, cfgs, folder, force=False, threads=0, registry=registry)


def test_compare_resumes_a_changed_run_only_when_allowed_and_passes_it_to_the_worker(
    tmp_path, registry, monkeypatch
):
    folder = tmp_path / "exp"
    comp, cfgs = finished_comparison(folder, registry)
    run = folder / "baseline" / "seed-2"
    (run / "summary.json").unlink()
    (run / "checkpoint.safetensors").write_bytes(b"")  # an interrupted run: resumed
    old = saved(run)
    old["code"]["core"]["source"] = "older core"
    provenance.save(run, old)
    with pytest.raises(ConfigError, match=r"cannot resume .*seed-2 .*the core's source changed"):
        plan_jobs(comp, cfgs, folder, force=False, threads=0, registry=registry)
    (planned,) = plan_jobs(
        comp, cfgs, folder, force=False, threads=0, registry=registry, allow_changes=True
    )
    job = next(j for j in planned if j.out == run)
    assert job.mode == "resume" and job.changes == ["the core's source changed"]

    seen = {}

    def fake_execute(job, registry):
        seen.update(mode=job.mode, allow_changes=job.allow_changes)
        return {"val_bpb": 1.0}

    monkeypatch.setattr(jobs, "execute", fake_execute)
    assert jobs._worker([job.to_json([])]) == 0  # the subprocess of --jobs N
    assert seen == {"mode": "resume", "allow_changes": True}


def test_klm_compare_allow_changes_reuses_and_records(tmp_path, klm, one_thread):
    folder = tmp_path / "exp"
    args = [
        "compare", "--baseline", "baseline", "--candidate", "--set lr=3e-3", "--seeds", "2",
        *RUN_ARGS[:-1], "--steps", "2", "--out", folder,
    ]  # fmt: skip
    code, out, err = klm(*args, "-q")
    assert code == 0, err
    assert json.loads((folder / "summary.json").read_text())["provenance_overrides"] == []
    run = folder / "baseline" / "seed-1"
    old = saved(run)
    old["data"]["pipeline"] = data.FORMAT - 1
    provenance.save(run, old)

    code, out, err = klm(*args, "-q")
    assert_one_line_error(
        code, err, f"cannot reuse {run}", "the data pipeline changed", "--allow-changes"
    )
    code, out, err = klm(*args, "--allow-changes")
    assert code == 0, err
    assert err.count("finished before, reused") == 4
    assert json.loads((folder / "summary.json").read_text())["provenance_overrides"] == [
        {
            "run": str(run),
            "use": "reused",
            "changed": [f"the data pipeline changed (format {data.FORMAT - 1} -> {data.FORMAT})"],
        }
    ]
    assert saved(run) == old  # a reused run's own record is what it was made with
