"""Runs saved by an earlier version of the code train to the same numbers today.

tests/saved-runs/NAME/ holds a tiny run of the baseline and of the record recipe, as commit
b4b8cd1 wrote them (before the training loop was restructured): its config.json, metrics.jsonl
and the summary's figures. Training the same config now must give the same losses and bits per
byte at every evaluation and at the end. On the machine that saved them (an AMD EPYC, float32,
one thread) they agree to the last bit; the tolerance leaves room for another CPU's float32
kernels rounding differently, far below any change a bug in the loop makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kennethlm_core.config import RunConfig, resolve
from kennethlm_core.rundir import read_metrics
from kennethlm_core.train import train

SAVED = Path(__file__).parent / "saved-runs"
REL = 1e-5


@pytest.mark.parametrize("name", ["baseline", "record"])
def test_a_run_saved_before_trains_to_the_same_numbers(name, registry, tmp_path, one_thread):
    saved = SAVED / name
    cfg = resolve(RunConfig.from_dict(json.loads((saved / "config.json").read_text())), registry)
    summary = train(cfg, tmp_path / name, registry=registry)
    then = json.loads((saved / "summary.json").read_text())
    assert (summary["params"], summary["steps"], summary["tokens_seen"]) == (
        then["params"],
        then["steps"],
        then["tokens_seen"],
    )
    assert summary["val_bpb"] == pytest.approx(then["val_bpb"], rel=REL)
    rows = [json.loads(line) for line in (saved / "metrics.jsonl").read_text().splitlines()]
    now = read_metrics(tmp_path / name)
    assert [(r["step"], r["tokens"], r["lr"]) for r in now] == [
        (r["step"], r["tokens"], r["lr"]) for r in rows
    ]
    for a, b in zip(now, rows, strict=True):
        assert a["val_bpb"] == pytest.approx(b["val_bpb"], rel=REL), a["step"]
        loss = b["train_loss"]  # none before the first step
        assert a["train_loss"] == (loss if loss is None else pytest.approx(loss, rel=REL))
