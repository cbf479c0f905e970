"""Faults in real processes: SIGKILL at random moments (checkpoint writes included), SIGTERM,
and a `klm compare` killed half way. Nothing is lost; resumed runs end as if never stopped."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import time

import pytest

from kennethlm_core.checkpoint import CHECKPOINT
from kennethlm_core.rundir import read_metrics

from .conftest import PYTHON, REPO, assert_one_line_error

spec = importlib.util.spec_from_file_location("kill_loop", REPO / "benchmarks" / "kill_loop.py")
kill_loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kill_loop)

KILLS = 3  # each costs a process start (importing torch); benchmarks/kill_loop.py does more
STEPS = 40


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill-loop")
    return folder, kill_loop.kill_loop(folder, KILLS, seed=8, window=0.3, steps=STEPS)


def test_sigkill_at_random_moments_loses_no_checkpoint(killed):
    folder, figures = killed
    assert figures["checkpoints_lost"] == 0, figures
    assert figures["kills"] >= 1
    # every resume trained on from its checkpoint: beyond it when killed, to the end otherwise
    assert figures["resumes_ok"] == figures["resumes"] == KILLS
    # the run killed and resumed again and again ends exactly as the one never killed
    assert figures["same_losses_as_uninterrupted"], figures
    assert figures["final_val_bpb"] == figures["final_val_bpb_uninterrupted"]
    assert not list((folder / "killed").glob(".*.tmp"))  # a resume clears torn writes


def wait_for(path, proc, timeout=120):
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout
        time.sleep(0.01)


def test_sigterm_checkpoints_says_how_to_resume_and_the_resume_is_exact(killed, tmp_path, klm):
    folder, _ = killed
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "kennethlm_core",
            "run",
            *kill_loop.RUN_ARGS,
            "--steps",
            str(STEPS),
            "--out",
            run,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(run / CHECKPOINT, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("klm: stopped: stopped by SIGTERM at step ")
    assert f"Continue with: klm run --resume {run}" in lines[0]
    step = int(lines[0].split(" at step ")[1].split(";")[0])
    assert read_metrics(run)[-1]["step"] <= step
    code, out, err = klm("run", "--resume", run, "-q")
    assert code == 0, err
    assert kill_loop.losses(run) == kill_loop.losses(folder / "straight")


TINY = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
    "--batch-size", "4", "--eval-every", "5", "--set", "warmup_steps=2",
    "--set", "eval_bytes=1024", "--set", "final_eval_bytes=2048", "--set", "threads=1",
]  # fmt: skip


def test_compare_killed_half_way_reuses_finished_runs_and_resumes_the_rest(tmp_path, klm):
    folder = tmp_path / "exp"
    args = ["compare", "--baseline", "baseline", "--candidate", "--set lr=3e-3", "--seeds", "2"]
    args += ["--steps", "40", *TINY, "--out", str(folder), "-q"]
    proc = subprocess.Popen(
        [PYTHON, "-m", "kennethlm_core", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first, second = folder / "baseline" / "seed-1", folder / "candidate" / "seed-1"
    wait_for(first / "summary.json", proc)
    wait_for(second / CHECKPOINT, proc)
    proc.kill()
    proc.communicate()
    assert not (second / "summary.json").exists()  # killed half way through its second run
    done = (first / "summary.json").stat().st_mtime_ns
    code, out, err = klm(*args[:-1])
    assert code == 0, err
    assert "baseline seed 1: finished before, reused" in err
    assert "candidate seed 1: resuming" in err
    assert "baseline seed 2: training" in err
    assert (first / "summary.json").stat().st_mtime_ns == done  # not trained again
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["arms"]["candidate"]["values"]) == 2
    assert [r["step"] for r in read_metrics(second)] == list(range(0, 41, 5))


def test_a_background_compare_stopped_by_sigterm_stops_its_workers_too(tmp_path):
    """Started as `nohup klm compare ... &` starts it (SIGINT ignored), a SIGTERM to klm stops
    the comparison and its workers, which checkpoint first: none trains on alone."""
    folder = tmp_path / "exp"
    args = ["compare", "--baseline", "baseline", "--candidate", "--set lr=3e-3", "--seeds", "2"]
    args += ["--steps", "5000", *TINY, "--jobs", "2", "--out", str(folder), "-q"]
    proc = subprocess.Popen(
        [PYTHON, "-m", "kennethlm_core", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    runs = [folder / arm / "seed-1" for arm in ("baseline", "candidate")]
    for run in runs:
        wait_for(run / CHECKPOINT, proc)
    proc.send_signal(signal.SIGINT)  # ignored, as in the background
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("klm: stopped: ")
    workers = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True)
    assert workers.stdout == ""  # no worker left behind
    for run in runs:  # each stopped between steps, with a checkpoint of where it was
        step = read_metrics(run)[-1]["step"]
        assert 0 < step < 5000 and not (run / "summary.json").exists()


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tmp_path, klm):
    run = tmp_path / "early"
    code, out, err = klm("run", *TINY, "--steps", "10", "--out", run, "-q")
    assert code == 0, err
    for name in (CHECKPOINT, "summary.json", "model.safetensors", "metrics.jsonl"):
        (run / name).unlink()  # as if killed between writing config.json and step 0
    code, out, err = klm("run", "--resume", run, "-q")
    assert code == 0, err
    assert [r["step"] for r in read_metrics(run)] == [0, 5, 10]


def test_a_non_finite_loss_from_the_command_line_is_one_line_with_advice(tmp_path, klm):
    run = tmp_path / "nan"
    code, out, err = klm("run", *TINY, "--steps", "20", "--out", run, "--lr", "1e12", "-q")
    assert_one_line_error(code, err, "non-finite by step 2", "(step 0) is kept", "lower --lr")
    assert kill_loop.checkpoint_state(run) == 0  # loads, finite weights
