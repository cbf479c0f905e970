"""Trajectory plots: grouping runs into arms, and the PNG itself (from hand-written metrics)."""

from __future__ import annotations

import json

import pytest

from kennethlm_core.errors import KLMError
from kennethlm_core.plots import branch_step, plot_paths, run_groups, wrap

from .conftest import assert_one_line_error


def fake_run(folder, seed, offset=0.0, start=None):
    folder.mkdir(parents=True)
    rows = [
        {"step": s, "tokens": 768 * s, "train_time_s": 0.05 * s + 0.001 * seed, "lr": 1e-3,
         "train_loss": None, "val_bpb": 8.0 if s == 0 else 4.0 - s / 100 + offset + 0.01 * seed}
        for s in range(0, 101, 20)
    ]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    init = {"checkpoint": "x", "step": start} if start is not None else None
    (folder / "summary.json").write_text(json.dumps({"init_from": init}))
    return folder


@pytest.fixture
def experiment(tmp_path):
    for seed in (1, 2, 3):
        fake_run(tmp_path / "exp" / "baseline" / f"seed-{seed}", seed)
        fake_run(tmp_path / "exp" / "candidate" / f"seed-{seed}", seed, -0.1, start=40)
    fake_run(tmp_path / "solo", 1)
    return tmp_path


def test_seed_folders_form_one_group_per_arm(experiment):
    groups = run_groups([experiment / "exp"])
    assert list(groups) == ["baseline", "candidate"]
    assert [r.name for r in groups["candidate"]] == ["seed-1", "seed-2", "seed-3"]
    assert branch_step(groups["candidate"]) == 40 and branch_step(groups["baseline"]) is None
    both = run_groups([experiment / "exp", experiment / "solo"])
    assert list(both) == ["exp/baseline", "exp/candidate", "solo"]
    assert list(run_groups([experiment / "exp" / "baseline"])) == ["baseline"]


def test_a_plot_is_written(experiment):
    out = plot_paths([experiment / "exp", experiment / "solo"], experiment / "p" / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_a_folder_without_runs_is_refused(tmp_path):
    with pytest.raises(KLMError, match="no runs there"):
        run_groups([tmp_path])


def test_klm_plot_writes_into_the_folder_given(experiment, klm):
    code, out, err = klm("plot", experiment / "exp")
    assert code == 0, err
    assert (experiment / "exp" / "trajectories.png").exists()
    code, out, err = klm("plot", experiment / "nothing")
    assert_one_line_error(code, err, "is not a folder")


def test_long_settings_are_wrapped_after_their_commas():
    mix = "books=0.4398,speech=0.3655,legal=0.1261,conversation=0.0215,news=0.0123,web=0.0106"
    lines = wrap(mix, width=32).split("\n")
    assert len(lines) > 1 and all(len(line) <= 32 for line in lines)
    assert "".join(lines) == mix  # nothing lost, each break after a comma
    assert all(line.endswith(",") for line in lines[:-1])
    assert wrap("temperature=0.5") == "temperature=0.5"
    assert wrap("a" * 40, width=32) == "a" * 40  # one part longer than a line stays whole
