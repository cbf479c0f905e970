"""Loggers (loggers.py): --logger names an installed logger or fails in one line before any
training; the Logger base class gives a tracker the config, the train/ points, every metrics
row and the summary; a tracker that fails costs one warning and the run goes on unchanged;
loggers are not part of what a run is (reuse, resume); klm compare groups its runs."""

from __future__ import annotations

import json
import subprocess
import types

import pytest

from kennethlm_core import hookimpl
from kennethlm_core.config import build_config, resolve, same_config
from kennethlm_core.errors import ConfigError, UnknownComponent
from kennethlm_core.loggers import Logger, LoggerWarning, flatten
from kennethlm_core.plugins import BrokenPlugin, Registry
from kennethlm_core.train import read_metrics, resume_config, train

from .conftest import PYTHON, TINY, assert_one_line_error


class Recorder(Logger):
    """A tracker that keeps what it is given, and fails where it is told to."""

    name = "recorder"

    def __init__(self, fail_in: str = ""):
        super().__init__()
        self.fail_in = fail_in
        self.run, self.points, self.summary, self.closed = None, [], None, False

    def _maybe_fail(self, where):
        if self.fail_in == where:
            raise RuntimeError(f"the tracker broke in {where}\nsecond line")

    def open(self, run):
        self._maybe_fail("open")
        self.run = run

    def scalars(self, values, step):
        if step >= 10:
            self._maybe_fail("scalars")
        self.points.append((step, dict(values)))

    def summarize(self, values):
        self.summary = values

    def close(self):
        self.closed = True


def recorder_registry(made: list, fail_in: str = "") -> Registry:
    """The built-in components and one logger, 'recorder', whose instances land in ``made``."""

    def make(cfg):
        made.append(Recorder(fail_in))
        return made[-1]

    module = types.ModuleType("klm_logger_recorder")
    module.klm_register_callback = hookimpl(
        lambda register: register("recorder", make, "records", logger=True)
    )
    registry = Registry(entry_points=False)
    registry.add_plugin(module, "logger-recorder", "klm-logger-recorder")
    return registry


def tiny(registry, **overrides):
    overrides = {**TINY, "log_every": 5, "threads": 1, **overrides}
    return resolve(build_config(overrides=overrides), registry)


# -- naming a logger -------------------------------------------------------------------------


def test_a_logger_that_is_not_installed_is_one_line_before_anything(klm, tmp_path, monkeypatch):
    from kennethlm_core import plugins

    registry = recorder_registry([])
    monkeypatch.setattr(plugins, "_cache", {((), False): registry})
    out = tmp_path / "run"
    code, _, err = klm("run", "--logger", "wandb", "--steps", "5", "--out", out)
    assert_one_line_error(
        code,
        err,
        "logger 'wandb' is not installed; installed loggers: recorder; install it with: "
        "pip install -e ",
        "plugins/klm-logger-wandb",
    )
    assert not out.exists()
    code, _, err = klm("run", "--logger", "recorderr", "--out", out)
    assert_one_line_error(
        code, err, "unknown logger 'recorderr'; did you mean 'recorder'? installed loggers: "
    )
    code, _, err = klm("run", "--logger", "recorder", "--callback", "recorder", "--out", out)
    assert_one_line_error(code, err, "recorder is listed as a callback and as a logger")
    assert not out.exists()


def test_a_callback_is_not_a_logger(registry):
    with pytest.raises(ConfigError, match="callback 'ema' is not a logger .* --callback ema"):
        tiny(registry, logger="ema")


def test_a_disabled_logger_is_refused_by_a_real_process(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [PYTHON, "-m", "kennethlm_core", "--disable-plugin", "logger-wandb", "run"]
        + ["--logger", "wandb", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(
        proc.returncode, proc.stderr, "logger 'wandb' is in plugin 'logger-wandb', which is "
    )
    assert "installed loggers: tensorboard" in proc.stderr
    assert not out.exists()


def test_installed_but_broken_names_the_plugin():
    registry = Registry(entry_points=False)
    registry.broken.append(BrokenPlugin("logger-mlflow", "klm-logger-mlflow", "0.1", "no"))
    with pytest.raises(UnknownComponent, match=r"'logger-mlflow' \(klm-logger-mlflow\), which "):
        tiny(registry, logger="mlflow")


# -- what a tracker is given -----------------------------------------------------------------


def test_a_tracker_gets_config_points_rows_and_summary(tmp_path):
    made: list[Recorder] = []
    registry = recorder_registry(made)
    cfg = tiny(registry, logger="recorder")
    summary = train(cfg, tmp_path / "run", registry=registry)
    preflight, logger = made  # klm run builds it once to check it, then the one that runs
    assert preflight.run is None and logger.closed
    assert logger.run.name == "run" and logger.run.tags == [f"seed-{cfg.seed}"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert logger.run.hparams == saved and not logger.run.resumed
    train_points = [(s, v) for s, v in logger.points if "train/loss" in v]
    assert [s for s, _ in train_points] == [5, 10, 15, 20]
    assert all(set(v) == {"train/loss", "train/lr", "train/tokens_per_s"} for _, v in train_points)
    rows = [(s, v) for s, v in logger.points if "eval/val_bpb" in v]
    expected = [
        (r["step"], {f"eval/{k}": v for k, v in r.items() if k != "step" and v is not None})
        for r in read_metrics(tmp_path / "run")
    ]
    assert rows == expected
    assert logger.summary == flatten(summary)
    assert "provenance/code/core/source" not in logger.summary


@pytest.mark.parametrize("fail_in", ["open", "scalars"])
def test_a_failing_tracker_costs_one_warning_and_changes_nothing(tmp_path, fail_in, registry):
    plain = train(tiny(registry), tmp_path / "plain", registry=registry)
    made: list[Recorder] = []
    with_logger = recorder_registry(made, fail_in)
    with pytest.warns(LoggerWarning) as caught:
        watched = train(tiny(with_logger, logger="recorder"), tmp_path / "w", registry=with_logger)
    caught = [w for w in caught if issubclass(w.category, LoggerWarning)]
    assert len(caught) == 1
    what = "could not start" if fail_in == "open" else "stopped at step 10"
    assert str(caught[0].message) == (
        f"logger 'recorder' {what} (RuntimeError: the tracker broke in {fail_in} second line); "
        "the run goes on without it"
    )
    assert made[-1].closed and made[-1].summary is None  # closed when it failed, then left alone

    def figures(run):
        return [(r["step"], r["lr"], r["train_loss"], r["val_bpb"]) for r in read_metrics(run)]

    assert figures(tmp_path / "w") == figures(tmp_path / "plain")
    assert watched["val_bpb"] == plain["val_bpb"]


# -- loggers are not part of what a run is ---------------------------------------------------


def test_loggers_do_not_change_what_a_run_is(tmp_path, registry):
    cfg = tiny(registry, steps=5)
    train(cfg, tmp_path / "run", registry=registry)
    saved = (tmp_path / "run" / "config.json").read_text()
    watched = tiny(registry, steps=5, logger="tensorboard", group="sweep", arm="baseline")
    assert same_config(json.loads(saved), watched)
    assert not same_config(json.loads(saved), tiny(registry, steps=5, lr=3e-3))
    resumed = resume_config(tmp_path / "run", {"steps": "8", "logger": "tensorboard"}, registry)
    assert resumed.logger == "tensorboard" and resumed.steps == 8
    with pytest.raises(ConfigError, match="cannot change lr when resuming"):
        resume_config(tmp_path / "run", {"lr": "3e-3", "logger": "tensorboard"}, registry)


def test_a_comparison_groups_its_runs_by_folder_arm_and_seed(tmp_path, registry):
    from kennethlm_core import experiment
    from kennethlm_core.experiment import Arm, Comparison, arm_configs, plan_jobs

    comp = Comparison(
        baseline=Arm("baseline", recipe="baseline"),
        candidate=Arm("--posemb none", overrides={"posemb": "none"}),
        shared={"steps": 10},
        seeds=[1, 2],
        logger="tensorboard",
    )
    cfgs = arm_configs(comp, registry)
    assert experiment.candidate_settings(cfgs) == {"posemb": "none"}
    (jobs,) = plan_jobs(comp, cfgs, tmp_path / "my-exp", force=False, threads=0)
    assert [(j.cfg.logger, j.cfg.group, j.cfg.arm, j.cfg.seed) for j in jobs] == [
        ("tensorboard", "my-exp", arm, seed) for seed in (1, 2) for arm in ("baseline", "candidate")
    ]
    unwatched = Comparison(comp.baseline, comp.candidate, comp.shared, comp.seeds)
    (plain,) = plan_jobs(unwatched, cfgs, tmp_path / "my-exp", force=False, threads=0)
    assert [j.cfg.group for j in plain] == ["", "", "", ""]  # no logger: nothing added
    same = Comparison(comp.baseline, Arm("--logger x", overrides={"logger": "tensorboard"}))
    with pytest.raises(ConfigError, match="is the same configuration as the baseline"):
        arm_configs(Comparison(same.baseline, same.candidate, {"steps": 10}), registry)
    bad = Comparison(comp.baseline, comp.candidate, {"steps": 10}, logger="tensorbord")
    with pytest.raises(UnknownComponent, match="did you mean 'tensorboard'"):
        arm_configs(bad, registry)


def test_log_every_must_be_positive(registry):
    with pytest.raises(ConfigError, match="log_every must be at least 1, got 0"):
        tiny(registry, log_every=0)


def test_the_logger_flag_in_the_help(klm):
    code, out, _ = klm("run", "--help")
    assert code == 0 and "--logger NAME" in out
