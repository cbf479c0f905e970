"""klm ladder: the steps as data, their configurations, a tiny run end to end."""

from __future__ import annotations

import json
import shlex

import pytest

from kennethlm_core.cli import parse_run_args, run_command
from kennethlm_core.ladder import LADDER, default_folder, step_configs, step_overrides

TINY = [
    "--block-size", "16", "--batch-size", "2", "--steps", "2", "--eval-every", "2",
    "--set", "warmup_steps=1", "--set", "eval_bytes=512", "--set", "final_eval_bytes=1024",
]  # fmt: skip


def test_each_step_adds_its_own_change_to_the_step_before(registry):
    merged = step_overrides()
    assert len(merged) == len(LADDER)
    for before, after, step in zip([{}, *merged], merged, LADDER, strict=False):
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        assert changed and set(changed) <= set(after), step.name
    cfgs = step_configs({"steps": 10}, registry)
    assert cfgs[0].model == "bigram" and cfgs[1].attention == "mean"
    assert cfgs[0].lr == 0.1 and {c.lr for c in cfgs[1:]} == {1e-3}  # the bigram's lr: its own
    assert not cfgs[2].residual and cfgs[6].residual and cfgs[7].norm == "layernorm"
    assert cfgs[-1].n_embd == 192 and cfgs[-1].dropout == 0.2
    # the same tokens for every step: context and batch never change
    assert {(c.block_size, c.batch_size, c.steps) for c in cfgs} == {(64, 12, 10)}
    assert len({c.fingerprint() for c in cfgs}) == len(LADDER)


def test_the_printed_command_trains_the_same_configuration(registry):
    from kennethlm_core.config import build_config, resolve

    shared = {"steps": 10, "corpus": "sample", "eval_bytes": 1024}
    for changes, cfg in zip(step_overrides(), step_configs(shared, registry), strict=True):
        command = run_command({**shared, **changes}, "baseline")
        recipe, overrides = parse_run_args(shlex.split(command)[2:])
        assert resolve(build_config(recipe, overrides), registry).to_dict() == cfg.to_dict()


def test_default_folder_names_the_budget_and_settings():
    folder = default_folder({"steps": 600, "corpus": "/data/c"})
    assert folder.name == "ladder-600-steps-corpus-data-c"


def test_ladder_trains_every_step_then_reuses_the_runs(tmp_path, klm, one_thread):
    out = tmp_path / "ladder"
    code, stdout, err = klm("ladder", *TINY, "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["steps"]
    assert [r["step"] for r in rows] == [s.name for s in LADDER]
    for i, row in enumerate(rows):
        run = json.loads((out / row["step"] / "seed-1" / "summary.json").read_text())
        assert row["values"] == [run["val_bpb"]] and row["params"] == run["params"]
        assert row["tokens_seen"] == 2 * 2 * 16
        if i:
            assert row["delta"] == pytest.approx(row["mean"] - rows[i - 1]["mean"])
    assert rows[0]["delta"] is None and rows[0]["params"] < rows[-1]["params"]
    assert (out / "ladder.png").stat().st_size > 10_000
    for step in LADDER:
        assert step.name in stdout
    assert "Building GPT step by step" in stdout

    code, stdout, err = klm("ladder", *TINY, "--out", out)
    assert code == 0, err
    assert err.count("finished before, reused") == len(LADDER)


def test_list_prints_a_command_per_step(klm):
    code, out, err = klm("ladder", "--list", "--steps", "300")
    assert code == 0, err
    commands = [line for line in out.splitlines() if line.startswith("klm run")]
    assert len(commands) == len(LADDER) and all("--steps 300" in c for c in commands)
    assert "--attention mean" in commands[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--set", "window=3", "--list"], "setting 'window' belongs to attention 'window'"),
    ],
)
def test_bad_ladder_input_is_one_line_and_exit_2(klm, args, message):
    code, out, err = klm("ladder", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_step_with_an_unknown_setting_or_a_budget_is_refused():
    from kennethlm_core.errors import ConfigError
    from kennethlm_core.ladder import Step

    with pytest.raises(ConfigError, match="ladder step wide: n_embed is not a setting"):
        step_overrides((Step("wide", "wider", {"n_embed": 256}),))
    with pytest.raises(ConfigError, match="ladder step long: the budget and seed are shared"):
        step_overrides((Step("long", "longer", {}, only={"steps": 10}),))


def test_two_steps_on_two_seeds_with_the_sweep_runner(tmp_path, registry, one_thread):
    from kennethlm_core import runlock
    from kennethlm_core.errors import ConfigError
    from kennethlm_core.experiment import mean_std
    from kennethlm_core.ladder import run_ladder

    shared = {"block_size": 16, "batch_size": 2, "steps": 2, "eval_every": 2}
    shared |= {"warmup_steps": 1, "eval_bytes": 512, "final_eval_bytes": 1024}
    out, said = tmp_path / "two", []
    summary = run_ladder(shared, out, registry=registry, seeds=[1, 2], steps=LADDER[:2])
    for row in summary["steps"]:
        assert len(row["values"]) == 2 and (row["mean"], row["std"]) == mean_std(row["values"])
        assert row["std"] > 0  # two seeds, two different runs
    assert (out / "ladder.png").stat().st_size > 10_000
    run_ladder(shared, out, registry=registry, seeds=[1, 2], steps=LADDER[:2], say=said.append)
    assert sum("finished before, reused" in line for line in said) == 4
    with runlock.hold(out, "running this ladder"):  # another process at work in the folder
        with pytest.raises(ConfigError, match="is in use: pid \\d+ is running this ladder"):
            run_ladder(shared, out, registry=registry, seeds=[1], steps=LADDER[:2])
