"""The improvement protocol: statistics on numbers with known answers, arms, and klm compare
end to end on the embedded sample (tiny models)."""

from __future__ import annotations

import json
import math
import subprocess
import tomllib
from pathlib import Path

import pytest

from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError, KLMError
from kennethlm_core.experiment import (
    ARMS,
    Arm,
    Comparison,
    arm_configs,
    candidate_settings,
    default_folder,
    paired_test,
)
from kennethlm_core.provenance import core_files, hash_files

from .conftest import PYTHON, SHARED_DATA, assert_one_line_error, copy_ledger

# -- statistics ------------------------------------------------------------------------------

BASE = [3.0, 3.1, 3.2, 3.3, 3.4]
GAIN = [0.02, 0.04, 0.03, 0.05, 0.01]  # mean 0.03, sd sqrt(2.5e-4), t = 3*sqrt(2), df 4
# P(T_4 > t) for t = 3*sqrt(2): with x = t / sqrt(t^2 + 4) = 3/sqrt(11), the t distribution
# with 4 degrees of freedom has P(T <= t) = 1/2 + (x/2)(1 + (1 - x^2)/2) = 1/2 + 18/(11 sqrt 11).
P_HAND = 0.5 - 18 / (11 * math.sqrt(11))  # 0.006618...
T_975_4 = 2.776445  # two-sided 95% critical value of t with 4 degrees of freedom (tables)


def improved(gains, sign=-1.0):
    return [b + sign * g for b, g in zip(BASE, gains, strict=True)]


def test_p_value_and_interval_match_a_hand_computed_paired_t_test():
    r = paired_test(BASE, improved(GAIN), min_effect=0.005, alpha=0.01)
    assert r["delta"] == pytest.approx(-0.03)
    assert r["delta_std"] == pytest.approx(math.sqrt(2.5e-4))
    assert r["p_better"] == pytest.approx(P_HAND, rel=1e-6)
    assert r["p_worse"] == pytest.approx(1 - P_HAND, rel=1e-6)
    assert r["p"] == r["p_better"]
    half = T_975_4 * math.sqrt(2.5e-4) / math.sqrt(5)
    assert r["delta_ci"] == pytest.approx([-0.03 - half, -0.03 + half], abs=1e-6)
    assert r["verdict"] == "better"


def test_higher_is_better_metrics_mirror_the_direction():
    up = paired_test(BASE, improved(GAIN, +1.0), higher_is_better=True)
    assert up["delta"] == pytest.approx(0.03) and up["improvement"] == pytest.approx(0.03)
    assert up["p_better"] == pytest.approx(P_HAND, rel=1e-6) and up["verdict"] == "better"
    down = paired_test(BASE, improved(GAIN, -1.0), higher_is_better=True)
    assert down["p_worse"] == pytest.approx(P_HAND, rel=1e-6) and down["verdict"] == "worse"


@pytest.mark.parametrize(
    "min_effect, alpha, verdict",
    [
        (0.03, 0.01, "better"),  # an improvement of exactly the minimum effect is enough
        (0.0301, 0.01, "inconclusive"),  # significant, but too small to matter
        (0.005, P_HAND * 1.001, "better"),
        (0.005, P_HAND, "inconclusive"),  # p must be below alpha, not equal to it
        (0.005, 0.005, "inconclusive"),
    ],
)
def test_verdict_boundaries_for_a_better_candidate(min_effect, alpha, verdict):
    r = paired_test(BASE, improved(GAIN), min_effect=min_effect, alpha=alpha)
    assert r["verdict"] == verdict


@pytest.mark.parametrize(
    "alpha, min_effect, verdict",
    [
        (0.01, 0.005, "worse"),
        (0.01, 1.0, "worse"),  # a significant loss of any size is worse
        (P_HAND, 0.005, "inconclusive"),
    ],
)
def test_verdict_boundaries_for_a_worse_candidate(alpha, min_effect, verdict):
    r = paired_test(BASE, improved(GAIN, +1.0), min_effect=min_effect, alpha=alpha)
    assert r["p_worse"] == pytest.approx(P_HAND, rel=1e-6)
    assert r["verdict"] == verdict


def test_noisy_small_differences_are_inconclusive():
    r = paired_test(BASE, improved([0.02, -0.01, 0.015, -0.02, 0.01]))
    assert 0.01 < r["p_better"] < 0.99 and r["verdict"] == "inconclusive"


def test_zero_variance_takes_the_limit_of_the_t_test():
    base = [3.0, 3.5, 4.0]
    same = paired_test(base, base)
    assert same["delta"] == 0 and same["delta_ci"] == [0, 0]
    assert same["p_better"] == same["p_worse"] == 1.0 and same["verdict"] == "inconclusive"
    shifted = [b - 0.25 for b in base]  # every seed exactly 0.25 better
    r = paired_test(base, shifted, min_effect=0.1)
    assert r["delta_ci"] == [-0.25, -0.25] and r["p_better"] == 0.0 and r["p_worse"] == 1.0
    assert r["verdict"] == "better"
    assert paired_test(base, shifted, min_effect=0.5)["verdict"] == "inconclusive"
    assert paired_test(base, [b + 0.25 for b in base])["verdict"] == "worse"


def test_a_paired_test_needs_two_seeds_and_equal_lengths():
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        paired_test([3.0], [2.9])
    with pytest.raises(ConfigError, match="one value per seed"):
        paired_test([3.0, 3.1], [2.9])


# -- arms ------------------------------------------------------------------------------------


def comparison(candidate: Arm, baseline: Arm | None = None, **shared) -> Comparison:
    return Comparison(baseline or Arm("baseline", "baseline"), candidate, {"steps": 10, **shared})


def test_candidate_settings_go_on_top_of_the_baseline_and_shared_settings(registry):
    comp = comparison(
        Arm("--n-layer 3", None, {"n_layer": "3"}),
        Arm("--recipe baseline --lr 3e-3", "baseline", {"lr": 3e-3}),
        n_layer=2,
        corpus="sample",
    )
    cfgs = arm_configs(comp, registry)
    assert cfgs["baseline"].n_layer == 2 and cfgs["baseline"].lr == 3e-3
    assert cfgs["candidate"].n_layer == 3 and cfgs["candidate"].lr == 3e-3
    assert cfgs["candidate"].steps == cfgs["baseline"].steps == 10
    assert candidate_settings(cfgs) == {"n_layer": 3}


def test_a_candidate_that_replaces_a_component_drops_the_recipes_options_for_it(registry):
    nope = Arm("--posemb none", None, {"posemb": "none"})
    cfgs = arm_configs(comparison(nope, Arm("record-v1", "record-v1")), registry)  # has rope
    assert cfgs["baseline"].options["rope_base"] == 10000.0 and cfgs["baseline"].posemb == "rope"
    assert cfgs["candidate"].posemb == "none" and "rope_base" not in cfgs["candidate"].options


def test_an_option_given_for_a_component_the_run_does_not_use_is_an_error(registry):
    cfg = build_config("record", {"posemb": "none", "rope_base": 500.0})
    with pytest.raises(ConfigError, match="'rope_base' belongs to posemb 'rope'"):
        resolve(cfg, registry)
    assert "inherited" not in cfg.to_dict()  # bookkeeping, not a setting


def test_a_candidate_recipe_starts_from_that_recipe(registry):
    small = Arm("--n-layer 2", None, {"n_layer": "2"})
    cfgs = arm_configs(comparison(Arm("record", "record"), small, lr=5e-3), registry)
    assert cfgs["baseline"].n_layer == 2 and cfgs["candidate"].n_layer == 4
    assert cfgs["candidate"].lr == 5e-3  # shared settings apply to a recipe candidate too


@pytest.mark.parametrize(
    "candidate, message",
    [
        (Arm("", None, {}), "same configuration as the baseline"),
        (Arm("--steps 20", None, {"steps": "20"}), "the budget and the seeds belong"),
        (Arm("--seed 3", None, {"seed": 3}), "the budget and the seeds belong"),
        (Arm("--posemb rop", None, {"posemb": "rop"}), "unknown posemb 'rop'"),
    ],
)
def test_bad_arms_are_refused_before_training(registry, candidate, message):
    with pytest.raises(KLMError, match=message):
        arm_configs(comparison(candidate), registry)


def test_the_default_folder_names_the_comparison():
    comp = comparison(Arm("--posemb none", None, {"posemb": "none"}), corpus="../data/c")
    comp.branch_at = 0.5
    assert default_folder(comp) == Path(
        "experiments/baseline-vs-posemb-none-10-steps-branch-0.5-corpus-data-c"
    )
    comp.shared.update({f"option_{i}": i for i in range(20)})
    long = default_folder(comp).name
    assert len(long) <= 100 and long.startswith("baseline-vs-posemb-none-10-steps")
    comp.shared["option_19"] = 0
    assert default_folder(comp).name != long  # the hash tells them apart


# -- klm compare end to end ------------------------------------------------------------------

TINY = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
    "--batch-size", "4", "--eval-every", "5", "--set", "warmup_steps=2",
    "--set", "eval_bytes=1024", "--set", "final_eval_bytes=2048",
]  # fmt: skip


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    """A temporary copy of registry.toml and its pages: tests never write the real ones."""
    monkeypatch.setenv("KLM_REGISTRY", str(copy_ledger(tmp_path)))
    return tmp_path


def compare(klm, folder, *extra):
    return klm(
        "compare", "--baseline", "baseline", "--candidate", "--set lr=3e-3", "--seeds", "2",
        "--steps", "10", *TINY, "--out", folder, *extra,
    )  # fmt: skip


def test_compare_trains_both_arms_reuses_finished_runs_and_records(tmp_path, klm, ledger):
    folder = tmp_path / "exp"
    code, out, err = compare(klm, folder)
    assert code == 0, err
    summary = json.loads((folder / "summary.json").read_text())
    runs = {arm: [folder / arm / f"seed-{s}" for s in (1, 2)] for arm in summary["arms"]}
    values = {
        arm: [json.loads((r / "summary.json").read_text())["val_bpb"] for r in rs]
        for arm, rs in runs.items()
    }
    assert summary["arms"]["baseline"]["values"] == values["baseline"]
    expected = paired_test(values["baseline"], values["candidate"])
    assert summary["verdict"] == expected["verdict"] and summary["p"] == expected["p"]
    assert summary["candidate_settings"] == {"lr": 3e-3} and summary["seeds"] == [1, 2]
    first = json.loads((runs["baseline"][0] / "config.json").read_text())
    other = json.loads((runs["candidate"][0] / "config.json").read_text())
    assert first["seed"] == other["seed"] == 1 and first["steps"] == other["steps"] == 10
    assert (folder / "trajectories.png").stat().st_size > 10_000
    assert "verdict:" in out and "seed" in out

    # a rerun reuses every finished run; an unfinished one (a checkpoint, no summary) resumes
    recorded = len(tomllib.loads((ledger / "registry.toml").read_text()).get("experiments", []))
    mtimes = {r: (r / "model.safetensors").stat().st_mtime_ns for rs in runs.values() for r in rs}
    (runs["candidate"][1] / "summary.json").unlink()
    secondary = ("--secondary-data", SHARED_DATA / "eval")  # the summarization task, locally
    code, out, err = compare(klm, folder, "--record", *secondary)
    assert code == 0, err
    assert err.count("finished before, reused") == 3 and "candidate seed 2: resuming" in err
    for run, mtime in mtimes.items():
        if run != runs["candidate"][1]:
            assert (run / "model.safetensors").stat().st_mtime_ns == mtime
    again = json.loads((folder / "summary.json").read_text())
    assert again["arms"] == summary["arms"]  # the resumed run ends where it would have

    doc = tomllib.loads((ledger / "registry.toml").read_text())
    assert len(doc["experiments"]) == recorded + 1
    entry = doc["experiments"][-1]
    assert entry["candidate"] == "--set lr=3e-3" and entry["verdict"] == summary["verdict"]
    assert entry["candidate_settings"] == {"lr": 3e-3} and entry["budget"] == {"steps": 10}
    assert entry["baseline_values"] == pytest.approx(values["baseline"], rel=1e-5)
    assert "--set lr=3e-3" in (ledger / "docs/results.md").read_text()
    assert entry["schema"] == 2 and entry["summarization"]["n"] == 20  # the secondary metric
    assert "load_avg_start" not in entry and len(again["load_avg_start"]) == 3  # not a time budget
    code, out, err = compare(klm, folder, "--record", *secondary)
    assert code == 0 and "has this result already" in out
    assert len(tomllib.loads((ledger / "registry.toml").read_text())["experiments"]) == recorded + 1

    # --init-from: both arms of every seed start from the given run's checkpoint
    from kennethlm_core.cli import parse_run_args
    from kennethlm_core.experiment import plan_jobs
    from kennethlm_core.plugins import get_registry

    shared = parse_run_args([*TINY, "--steps", "20"])[1]
    comp = Comparison(Arm("baseline", "baseline"), Arm("", None, {"lr": "3e-3"}), shared, [1, 2])
    comp.init_from = runs["baseline"][0]
    cfgs = arm_configs(comp, get_registry())
    (jobs,) = plan_jobs(comp, cfgs, tmp_path / "init", force=False, threads=0)
    assert [(j.arm, j.seed, j.init_from, j.mode) for j in jobs] == [
        (arm, seed, runs["baseline"][0], "new") for seed in (1, 2) for arm in ARMS
    ]


def test_compare_in_parallel_processes_with_a_branch(tmp_path, klm):
    folder = tmp_path / "branch"
    code, out, err = compare(klm, folder, "--branch-at", "0.5", "--jobs", "2")
    assert code == 0, err
    assert (folder / "logs" / "candidate-seed-1.log").exists()
    for seed in (1, 2):
        base = [json.loads(x) for x in (folder / f"baseline/seed-{seed}/metrics.jsonl").open()]
        cand = [json.loads(x) for x in (folder / f"candidate/seed-{seed}/metrics.jsonl").open()]
        assert [r["step"] for r in cand] == [0, 5, 10]
        assert cand[0] == base[0]  # the trajectory before the branch point is the baseline's
        assert cand[1]["val_bpb"] == base[1]["val_bpb"]  # and it starts from the same weights
        assert cand[2]["val_bpb"] != base[2]["val_bpb"]
        summary = json.loads((folder / f"candidate/seed-{seed}/summary.json").read_text())
        assert summary["init_from"]["step"] == 5
        assert (folder / f"baseline/seed-{seed}/checkpoint-5.safetensors").exists()
    assert json.loads((folder / "summary.json").read_text())["branch_at"] == 0.5


def test_promote_after_a_verdict_that_is_not_better_is_refused(tmp_path, klm, ledger):
    before = (ledger / "registry.toml").read_text()
    code, out, err = klm(
        "compare", "--candidate", "--set lr=3e-3", "--seeds", "2", "--steps", "2",
        *TINY, "--out", tmp_path / "p", "--promote", "--min-effect", "100",
        "--secondary-data", "none",
    )  # fmt: skip
    assert code == 0, err
    assert "klm: not promoted: the verdict is" in err
    after = (ledger / "registry.toml").read_text()
    assert after.startswith(before) and "[[experiments]]" in after  # recorded, record unchanged


BAD = {
    "promote needs the record": (
        ["--baseline", "baseline", "--candidate", "--posemb none", "--promote"],
        ["--promote needs --baseline record"],
    ),
    "one seed": (["--candidate", "--posemb none", "--seeds", "1"], ["--seeds must be at least 2"]),
    "recipe flag": (["--candidate", "--posemb none", "--recipe", "x"], ["--baseline RECIPE"]),
    "bad candidate flag": (["--candidate", "--posemb"], ["--candidate '--posemb'"]),
    "unknown task": (["--candidate", "--posemb none", "--metric", "nosuch/x"], ["unknown task"]),
    "branch out of range": (
        ["--candidate", "--posemb none", "--branch-at", "1.5"],
        ["--branch-at is a fraction"],
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_compare_input_is_one_line_and_exit_2(klm, tmp_path, case):
    args, needles = BAD[case]
    code, out, err = klm("compare", *args, "--out", tmp_path / "x", "-q")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "x").exists()


# -- a task metric as the decision metric ----------------------------------------------------


def test_a_task_metric_decides_in_the_direction_the_task_declares(tmp_path):
    import types

    from kennethlm_core import hookimpl
    from kennethlm_core.components import Metric, TaskResult
    from kennethlm_core.experiment import metric_values
    from kennethlm_core.plugins import Registry
    from kennethlm_core.train import train

    from .conftest import tiny_config

    calls = []

    class Fluency:
        """log P('Der var engang') in nats: higher is better."""

        def evaluate(self, lm, *, data=None, limit=None):
            calls.append(lm.dir)
            score = lm.score("", "Der var engang")
            return TaskResult({"logp": Metric(score, higher_is_better=True)}, n=1)

    plugin = types.ModuleType("fluency")
    plugin.klm_register_task = hookimpl(lambda register: register("fluency", lambda c: Fluency()))
    reg = Registry(entry_points=False)
    reg.add_plugin(plugin, "fluency", "test")
    runs = [tmp_path / "a", tmp_path / "b"]
    for run, steps in zip(runs, (2, 6), strict=True):
        train(tiny_config(reg, steps=steps, eval_every=2), run, registry=reg)

    values, higher = metric_values(runs, "fluency/logp", reg)
    assert higher is True and values[1] > values[0]  # more training, likelier text
    assert metric_values(runs, "fluency", reg)[0] == values  # one metric: the task's name will do
    assert len(calls) == 2  # the second time it came from each run's eval.json
    with pytest.raises(ConfigError, match="reports logp, not 'fluency/acc'.*fluency/logp"):
        metric_values(runs, "fluency/acc", reg)


def without_schema_2(ledger):
    """The ledger copy as before its first schema-2 entry: the start of a record chain."""
    import tomlkit

    path = ledger / "registry.toml"
    doc = tomlkit.parse(path.read_text())
    for e in [e for e in doc.get("experiments", []) if e.get("schema", 1) >= 2]:
        doc["experiments"].remove(e)
    path.write_text(tomlkit.dumps(doc))


def test_a_promotion_reports_both_arms_on_the_held_back_test_split(tmp_path, klm, ledger):
    without_schema_2(ledger)  # the chain's first promotion scores both arms
    code, out, err = klm(
        "compare", "--candidate", "--set lr=3e-3", "--seeds", "2", "--steps", "10",
        *TINY, "--out", tmp_path / "p", "--promote", "--min-effect", "-100", "--alpha", "1",
        "--secondary-data", "none",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["verdict"] == "better"
    import tomlkit

    entry = tomlkit.parse((ledger / "registry.toml").read_text())["experiments"][-1]
    assert entry["promoted"] and entry["schema"] == 2
    for arm in ("baseline", "candidate"):
        runs = [Path(r) for r in summary["arms"][arm]["runs"]]
        on_test = [json.loads((r / "eval.json").read_text())["bpb/test"] for r in runs]
        values = [m["metrics"]["bpb"]["value"] for m in on_test]
        assert entry["test_bpb"][f"{arm}_values"] == pytest.approx(values, rel=1e-5)
        assert all("test split" in m["notes"] for m in on_test)
        assert values != summary["arms"][arm]["values"]  # another text than validation
    mean = entry["test_bpb"]["candidate_mean"]
    assert f"| {mean:.4f} |" in (ledger / "docs/results.md").read_text()  # in the record log
    assert f"| {mean:.4f} |" in (ledger / "README.md").read_text()  # the current record
    assert "test split (reported, not deciding)" in out


def test_later_promotions_score_only_their_candidate_on_test(tmp_path, klm, ledger):
    """The baseline arm of a later promotion is the record the previous one scored."""
    without_schema_2(ledger)
    common = ["--seeds", "2", "--steps", "10", *TINY, "--min-effect", "-100", "--alpha", "1"]
    common += ["--secondary-data", "none", "--promote"]
    code, out, err = klm(
        "compare", "--candidate", "--set lr=3e-3", *common, "--out", tmp_path / "a"
    )
    assert code == 0, err
    code, out, err = klm(
        "compare", "--candidate", "--set lr=4e-3", *common, "--out", tmp_path / "b"
    )
    assert code == 0, err
    import tomlkit

    first, second = tomlkit.parse((ledger / "registry.toml").read_text())["experiments"][-2:]
    assert set(first["test_bpb"]) == {
        "baseline_values",
        "baseline_mean",
        "candidate_values",
        "candidate_mean",
    }
    assert set(second["test_bpb"]) == {"candidate_values", "candidate_mean"}
    assert not (tmp_path / "b" / "baseline" / "seed-1" / "eval.json").exists()  # not scored


def test_workers_run_the_parents_code_whatever_the_working_directory(tmp_path):
    """`python -m` puts the working directory first on sys.path: a comparison started inside
    another checkout once trained its runs with that checkout's kennethlm_core (here a decoy
    that cannot even be imported). Its workers must run the code of the klm that started them."""
    decoy = tmp_path / "kennethlm_core"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy checkout was imported')\n")
    klm = Path(PYTHON).parent / "klm"  # the installed command: its own directory, not the cwd
    args = ["compare", "--baseline", "baseline", "--candidate", "--set lr=3e-3", "--seeds", "2"]
    args += ["--steps", "4", *TINY, "--jobs", "2", "--out", str(tmp_path / "exp"), "-q"]
    proc = subprocess.run([klm, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr + "".join(
        p.read_text() for p in (tmp_path / "exp" / "logs").glob("*.log")
    )
    for arm in ("baseline", "candidate"):  # and they say so: the hash of this checkout's core
        origin = json.loads((tmp_path / "exp" / arm / "seed-1" / "provenance.json").read_text())
        assert origin["code"]["core"]["source"] == hash_files(core_files())
