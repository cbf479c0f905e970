"""Trust under misuse: a folder in use by another process, a full disk while checkpointing,
NaN in the loss or the weights, float16, and the clock of asynchronous devices.

The lock and disk tests use real processes; the others train tiny models in-process."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import types

import pytest
import torch

from kennethlm_core import hookimpl, jobs, precision, runlock
from kennethlm_core.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    NonFiniteWeights,
    save_checkpoint,
    save_weights,
)
from kennethlm_core.errors import ConfigError, Interrupted, KLMError, NonFiniteLoss
from kennethlm_core.model import GPT, build_model
from kennethlm_core.plugins import Registry
from kennethlm_core.rundir import read_metrics, snapshot_path
from kennethlm_core.train import LossWatch, train

from .conftest import PYTHON, assert_one_line_error, tiny_config
from .test_faults import kill_loop, wait_for

TINY = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
    "--batch-size", "4", "--eval-every", "5", "--set", "warmup_steps=2",
    "--set", "eval_bytes=1024", "--set", "final_eval_bytes=2048", "--set", "threads=1",
]  # fmt: skip


def klm_process(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "kennethlm_core", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def klm_once(*args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """klm in a process of its own, stopped after ``timeout`` by SIGTERM (a run or comparison
    that should have been refused at once would otherwise train on, with its workers)."""
    proc = klm_process(*args, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def losses(run) -> list[tuple]:
    return [(r["step"], r["train_loss"], r["val_bpb"], r["lr"]) for r in read_metrics(run)]


def checkpoint_meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["klm"])


# -- one process per folder ------------------------------------------------------------------


def test_a_live_runs_folder_is_refused_naming_its_pid_and_taken_over_once_it_is_killed(
    tmp_path, klm
):
    run = tmp_path / "run"
    first = klm_process("run", *TINY, "--steps", "100000", "--out", run, "-q")
    try:
        wait_for(run / CHECKPOINT, first)
        second = klm_once("run", "--resume", run, "-q")
        assert_one_line_error(
            second.returncode, second.stderr, str(run), f"pid {first.pid} is training this run"
        )
        assert first.poll() is None  # the holder trains on, undisturbed
    finally:
        first.kill()  # SIGKILL: the lock file stays behind, naming a dead process
        first.communicate()
    assert runlock.lock_file(run).read_text() == f"{first.pid} training this run\n"
    step = kill_loop.checkpoint_state(run)
    code, out, err = klm("run", "--resume", run, "--steps", step + 5, "-q")
    assert code == 0, err
    assert [r["step"] for r in read_metrics(run)][-2:] == [step, step + 5]
    assert json.loads((run / "summary.json").read_text())["steps"] == step + 5


def test_a_comparison_in_use_is_refused_naming_its_pid_but_its_workers_train(tmp_path):
    folder = tmp_path / "exp"
    args = ["compare", "--baseline", "baseline", "--candidate", "--set lr=3e-3", "--seeds", "2"]
    args += ["--steps", "100000", *TINY, "--jobs", "2", "--out", str(folder), "-q"]
    first = klm_process(*args)
    runs = [folder / arm / "seed-1" for arm in ("baseline", "candidate")]
    try:
        for run in runs:  # both workers train while their parent holds the folder
            wait_for(run / CHECKPOINT, first)
        second = klm_once(*args)
        assert_one_line_error(
            second.returncode, second.stderr, str(folder), f"pid {first.pid} is running this"
        )
        second = klm_once("run", "--resume", runs[0], "-q")  # a worker's own run
        assert_one_line_error(second.returncode, second.stderr, "is training this run")
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)  # the workers checkpoint and stop
        first.communicate(timeout=120)
    assert first.returncode == 130


def test_a_start_that_fails_leaves_no_folder_and_no_lock_behind(tmp_path, registry):
    out, empty = tmp_path / "never", tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "bad.jsonl").write_text('{"no_text": 1}\n')
    cfg = tiny_config(registry, corpus=str(tmp_path / "bad.jsonl"))
    for folder in (out, empty):
        with pytest.raises(KLMError):  # the corpus fails after the folder was locked
            train(cfg, folder, registry=registry)
    assert not out.exists() and list(empty.iterdir()) == []


def test_a_folder_held_by_this_very_process_is_refused_too(tmp_path, registry):
    with runlock.hold(tmp_path / "r", "holding it for a test"):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()} is holding it for a test"):
            train(tiny_config(registry), tmp_path / "r", registry=registry)
    train(tiny_config(registry, steps=1), tmp_path / "r", registry=registry)  # free again


# -- a full disk while checkpointing ---------------------------------------------------------


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one_and_resume_works(tmp_path, klm):
    run = tmp_path / "run"
    code, out, err = klm("run", *TINY, "--steps", "10", "--out", run, "-q")
    assert code == 0, err
    limit = (run / CHECKPOINT).stat().st_size // 2  # a file-size limit: writes fail with EFBIG

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    full = klm_once("run", "--resume", run, "--steps", "20", "-q", preexec_fn=small_files)
    assert_one_line_error(
        full.returncode,
        full.stderr,
        "could not write checkpoint.safetensors at step 15 (File too large)",
        "the previous checkpoint (step 10) is kept",
        f"continue with: klm run --resume {run}",
    )
    assert kill_loop.checkpoint_state(run) == 10  # the previous checkpoint loads
    assert not list(run.glob(".*.tmp"))  # the torn write was cleared
    code, out, err = klm("run", "--resume", run, "--steps", "20", "-q")
    assert code == 0, err
    assert [r["step"] for r in read_metrics(run)] == [0, 5, 10, 15, 20]


# -- only finite weights are saved; a non-finite loss stops the run at once -------------------


def poisoned(at: int, interrupt: bool = False) -> Registry:
    """A registry whose model 'poisoned' (a GPT) sets a spare weight, one no computation uses
    (so the loss stays finite), to NaN in training step ``at``; with ``interrupt`` it also
    sends this process SIGINT (Ctrl-C) there."""

    class Poisoned(GPT):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.spare = torch.nn.Parameter(torch.zeros(1))
            self.steps = 0

        def forward(self, idx, targets=None):
            if self.training and targets is not None:
                self.steps += 1
                if self.steps == at:
                    with torch.no_grad():
                        self.spare.fill_(float("nan"))
                    if interrupt:
                        os.kill(os.getpid(), signal.SIGINT)
            return super().forward(idx, targets)

    return registry_with("poisoned", Poisoned)


def exploding(at: int) -> Registry:
    """A registry whose model 'exploding' returns a NaN loss from training step ``at`` on."""

    class Exploding(GPT):
        steps = 0

        def forward(self, idx, targets=None):
            logits, loss = super().forward(idx, targets)
            if self.training and targets is not None:
                self.steps += 1
                if self.steps >= at:
                    loss = loss * float("nan")
            return logits, loss

    return registry_with("exploding", Exploding)


def registry_with(name: str, model: type) -> Registry:
    plugin = types.ModuleType(name)
    plugin.klm_register_model = hookimpl(lambda register: register(name, model))
    reg = Registry(entry_points=False)
    reg.add_plugin(plugin, name, "test")
    return reg


def assert_kept_step_10(out):
    meta = checkpoint_meta(out / CHECKPOINT)
    assert meta["step"] == 10
    assert not (out / WEIGHTS).exists() and not (out / "summary.json").exists()


def test_non_finite_weights_are_not_checkpointed_at_an_evaluation(tmp_path):
    reg = poisoned(at=12)
    with pytest.raises(NonFiniteLoss, match=r"the weights became non-finite by step 20; .*step 10"):
        train(tiny_config(reg, model="poisoned"), tmp_path / "x", registry=reg)
    assert_kept_step_10(tmp_path / "x")


def test_non_finite_weights_are_not_checkpointed_when_a_signal_stops_the_run(tmp_path):
    reg = poisoned(at=13, interrupt=True)
    with pytest.raises(NonFiniteLoss, match=r"the weights became non-finite by step 13; .*step 10"):
        train(tiny_config(reg, model="poisoned"), tmp_path / "x", registry=reg)
    assert_kept_step_10(tmp_path / "x")


def test_non_finite_weights_are_not_kept_as_a_branch_snapshot(tmp_path):
    reg = poisoned(at=13)
    with pytest.raises(NonFiniteLoss, match=r"the weights became non-finite by step 13"):
        train(tiny_config(reg, model="poisoned"), tmp_path / "x", registry=reg, snapshot_at=13)
    assert not snapshot_path(tmp_path / "x", 13).exists()
    assert_kept_step_10(tmp_path / "x")


def test_saving_non_finite_weights_is_refused_and_keeps_the_file(tmp_path, registry):
    cfg = tiny_config(registry)
    model = build_model(cfg, 64, registry)
    optimizer = torch.optim.AdamW(model.parameters())
    save_weights(model, tmp_path / WEIGHTS)
    save_checkpoint(tmp_path / CHECKPOINT, model, optimizer, {}, {"step": 1})
    before = {name: (tmp_path / name).read_bytes() for name in (WEIGHTS, CHECKPOINT)}
    with torch.no_grad():
        model.ln_f.weight[3] = float("inf")
    with pytest.raises(NonFiniteWeights, match=r"ln_f.weight holds NaN or infinite values"):
        save_weights(model, tmp_path / WEIGHTS)  # the final save of a run
    with pytest.raises(NonFiniteWeights, match=r"checkpoint.safetensors was not written"):
        save_checkpoint(tmp_path / CHECKPOINT, model, optimizer, {}, {"step": 2})
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("bar", [False, True], ids=["quiet", "progress bar"])
def test_a_non_finite_loss_stops_the_run_in_its_step(tmp_path, bar):
    reg = exploding(at=13)
    progress = (lambda *args: None) if bar else None
    with pytest.raises(NonFiniteLoss, match=r"the training loss became non-finite by step 13; "):
        train(tiny_config(reg, model="exploding"), tmp_path / "x", registry=reg, progress=progress)
    assert_kept_step_10(tmp_path / "x")


def test_a_non_finite_loss_stops_a_comparison_worker_in_its_step(tmp_path, registry, capsys):
    cfg = tiny_config(registry, lr=1e12, steps=40, eval_every=20)
    job = jobs.Job("candidate", 1, cfg, tmp_path / "w")
    assert jobs._worker([job.to_json([])]) == 2
    line = capsys.readouterr().err.strip()
    step = int(line.split("non-finite by step ")[1].split(";")[0])
    assert 0 < step < 20 and "(step 0) is kept" in line  # long before the evaluation at 20
    assert checkpoint_meta(tmp_path / "w" / CHECKPOINT)["step"] == 0


def test_the_loss_watch_answers_for_this_step_on_a_cpu():
    watch = LossWatch(torch.device("cpu"))
    assert not watch.check(torch.tensor(2.5))
    assert watch.check(torch.tensor(float("inf")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_loss_watch_answers_a_step_late_on_cuda_without_waiting():
    watch = LossWatch(torch.device("cuda"))
    losses = [2.0, float("nan"), 1.0, 1.0]
    answers = [watch.check(torch.tensor(x, device="cuda")) for x in losses]
    assert answers == [False, False, True, False]


# -- float16 and the clock of asynchronous devices --------------------------------------------


def test_float16_on_a_cpu_trains_with_a_gradient_scaler_and_resumes_exactly(tmp_path, registry):
    assert precision.autocasts_to(torch.device("cpu"), torch.float16)  # this torch can
    cfg = tiny_config(registry, dtype="float16")
    straight = train(cfg, tmp_path / "a", registry=registry)
    assert straight["dtype"] == "float16"
    scaler = checkpoint_meta(tmp_path / "a" / CHECKPOINT)["grad_scaler"]
    assert scaler["scale"] == 2.0**16 and scaler["_growth_tracker"] == 20

    def stop_at_10(clock, *rest):
        if clock.step == 10:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "b", registry=registry, progress=stop_at_10)
    assert checkpoint_meta(tmp_path / "b" / CHECKPOINT)["grad_scaler"]["_growth_tracker"] == 10
    resumed = train(cfg, tmp_path / "b", registry=registry, resume=True)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert resumed["val_bpb"] == straight["val_bpb"]
    assert checkpoint_meta(tmp_path / "b" / CHECKPOINT)["grad_scaler"] == scaler


def test_float16_where_torch_cannot_autocast_to_it_is_one_line(klm, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "autocasts_to", lambda device, dtype: False)
    code, out, err = klm("run", *TINY, "--dtype", "float16", "--out", tmp_path / "x", "-q")
    assert_one_line_error(code, err, "--dtype float16", "cannot autocast to float16 on a CPU")
    assert not (tmp_path / "x").exists()


def test_float16_is_refused_where_no_gradient_scaler_is_known_to_work():
    with pytest.raises(ConfigError, match="float16 trains with a gradient scaler .* not on mps"):
        precision.check(torch.device("mps"), "float16")


def test_mps_is_synchronised_for_the_clock_as_cuda_is(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("cuda"))
    for device in ("mps", "cuda", "cpu"):
        precision.synchronize(torch.device(device))
    assert calls == ["mps", "cuda"]


def test_a_time_budget_waits_for_the_device_at_every_step(tmp_path, registry, monkeypatch):
    import itertools

    import kennethlm_core.train as train_module

    ticks = itertools.count(0.0, 0.25)
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: next(ticks))
    waited = []
    monkeypatch.setattr(precision, "synchronize", lambda device: waited.append(device.type))
    summary = train(tiny_config(registry, steps=0, time=1.0), tmp_path / "t", registry=registry)
    assert summary["steps"] == 4 and waited == ["cpu"] * 4
