"""Multi-process training (DDP over gloo on CPU): 2 processes train what 1 process trains.

The same global batch and seed give the same loss curve within TOLERANCE (relative): the
processes split each global batch and average their gradients, which changes only the order
of floating-point additions. Measured on 2 CPU processes over 30 steps: the largest relative
difference of train_loss and val_bpb was below 1e-7 (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from kennethlm_core.errors import Interrupted
from kennethlm_core.rundir import read_metrics
from kennethlm_core.train import train

from .conftest import PYTHON, tiny_config

TOLERANCE = 1e-5
SETTINGS = dict(
    n_layer=1,
    n_embd=32,
    block_size=32,
    batch_size=8,
    steps=30,
    eval_every=10,
    final_eval_bytes=4096,
)
ARGS = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--block-size",
    "32",
    "--batch-size",
    "8",
    "--steps",
    "30",
    "--eval-every",
    "10",
    "--set",
    "warmup_steps=2",
    "--set",
    "eval_bytes=2048",
    "--set",
    "final_eval_bytes=4096",
    "--device",
    "cpu",
    "-q",
]


def close(a, b):
    return a == b or abs(a - b) <= TOLERANCE * max(abs(a), abs(b))


def assert_same_curve(one, two):
    """Same steps, tokens and learning rates; losses and val_bpb within TOLERANCE."""
    rows_1, rows_2 = read_metrics(one), read_metrics(two)
    assert [(r["step"], r["tokens"], r["lr"]) for r in rows_1] == [
        (r["step"], r["tokens"], r["lr"]) for r in rows_2
    ]
    for a, b in zip(rows_1, rows_2, strict=True):
        assert (a["train_loss"] is None) == (b["train_loss"] is None)
        assert a["train_loss"] is None or close(a["train_loss"], b["train_loss"]), (a, b)
        assert close(a["val_bpb"], b["val_bpb"]), (a, b)
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert close(s1["val_bpb"], s2["val_bpb"])
    return s2


def klm_nproc(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [PYTHON, "-m", "kennethlm_core", "run", *map(str, args), "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, one_thread):
    from kennethlm_core.plugins import get_registry

    registry = get_registry()
    cfg = tiny_config(registry, **SETTINGS, warmup_steps=2, device="cpu")
    out = tmp_path_factory.mktemp("ddp") / "one"
    train(cfg, out, registry=registry)
    return cfg, out


def test_a_run_stopped_in_one_process_continues_in_two_like_one(one_process, tmp_path):
    """One launch of 2 processes (a launch costs seconds of imports): the run starts in this
    process, is stopped at step 10 (as by Ctrl-C), and `klm run --resume --nproc 2` trains
    steps 10 to 30 with DDP and scores it; only rank 0 writes."""
    from kennethlm_core.plugins import get_registry

    cfg, one = one_process
    run = tmp_path / "r"

    def stop_at_10(clock, *rest):
        if clock.step == 10:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(cfg, run, registry=get_registry(), progress=stop_at_10)
    proc = klm_nproc("--resume", run, "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = assert_same_curve(one, run)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]
    assert strip(read_metrics(run)[:2]) == strip(read_metrics(one)[:2])  # 1 process: exact
    assert summary["device"].endswith("x 2 processes") and summary["steps"] == 30
    assert proc.stdout.count("run files:") == 1  # one process reports
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # nothing written elsewhere


def test_a_batch_that_does_not_split_is_refused_before_launching(klm, tmp_path):
    from .conftest import assert_one_line_error

    code, out, err = klm("run", "--batch-size", "5", "--nproc", "2", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "batch_size 5 cannot be split evenly over 2 processes")
    assert not (tmp_path / "x").exists()
