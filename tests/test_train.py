"""The training loop: determinism, exact resume, budgets, non-finite losses."""

from __future__ import annotations

import itertools
import json
import os
import signal
import types

import pytest
import torch

from kennethlm_core import hookimpl
from kennethlm_core.config import RunConfig, resolve
from kennethlm_core.errors import Interrupted, NonFiniteLoss
from kennethlm_core.plugins import Registry
from kennethlm_core.rundir import read_metrics
from kennethlm_core.train import train

from .conftest import tiny_config


def losses(run):
    return [(r["step"], r["train_loss"], r["val_bpb"], r["lr"]) for r in read_metrics(run)]


def test_same_seed_gives_identical_metrics(tmp_path, registry):
    cfg = tiny_config(registry)
    a = train(cfg, tmp_path / "a", registry=registry)
    b = train(cfg, tmp_path / "b", registry=registry)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert a["val_bpb"] == b["val_bpb"]
    other = train(cfg.replace(seed=2), tmp_path / "c", registry=registry)
    assert other["val_bpb"] != a["val_bpb"]


def test_run_folder_has_the_designed_files(tmp_path, registry):
    summary = train(tiny_config(registry), tmp_path / "r", registry=registry)
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert {
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "checkpoint.safetensors",
        "tokenizer",
        "summary.json",
    } <= names
    for key in (
        "val_bpb",
        "val_bpb_by_domain",
        "params",
        "tokens_seen",
        "train_time_s",
        "tokens_per_s",
        "device",
        "git_commit",
    ):
        assert key in summary
    assert set(summary["val_bpb_by_domain"]) == {
        "conversation",
        "encyclopedic",
        "fiction",
        "legal",
        "news",
    }
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert set(rows[0]) == {"step", "tokens", "train_time_s", "lr", "train_loss", "val_bpb"}
    assert summary["tokens_seen"] == 20 * 4 * 16
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["n_embd"] == 32 and saved["mlp_ratio"] == 4.0  # flat, with plugin options


@pytest.mark.parametrize("eval_every", [10, 15], ids=["at-an-eval", "between-evals"])
def test_stopped_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, registry, eval_every):
    """Stopped at step 20: with evaluations every 10 steps it checkpoints where it evaluated;
    every 15, it stops between two (the last metrics row is step 15) and must still resume
    exactly: the schedule, the data order and the RNGs at step 20, not 15."""
    # dropout: the torch RNG must resume too; a mix: the domain draws too
    cfg = tiny_config(registry, steps=40, dropout=0.1, mix="news=2,legal=1,fiction=1")
    cfg.eval_every = eval_every
    train(cfg, tmp_path / "straight", registry=registry)

    def interrupt_at_20(clock, *rest):
        if clock.step == 20:
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C: finish the step, checkpoint

    with pytest.raises(Interrupted, match="klm run --resume"):
        train(cfg, tmp_path / "stopped", registry=registry, progress=interrupt_at_20)
    assert read_metrics(tmp_path / "stopped")[-1]["step"] == 20 // eval_every * eval_every
    summary = train(cfg, tmp_path / "stopped", registry=registry, resume=True)
    assert losses(tmp_path / "stopped") == losses(tmp_path / "straight")
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["val_bpb"] == straight["val_bpb"]
    assert summary["steps"] == 40


def test_config_json_repeats_the_run_with_the_mix_it_records(tmp_path, registry):
    first = train(tiny_config(registry), tmp_path / "a", registry=registry)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    weights = dict(item.split("=") for item in saved["mix"].split(","))
    assert set(weights) == set(first["val_bpb_by_domain"])  # natural proportions, written out
    assert sum(map(float, weights.values())) == pytest.approx(1, abs=1e-5)
    again = train(resolve(RunConfig.from_dict(saved), registry), tmp_path / "b", registry=registry)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert again["val_bpb"] == first["val_bpb"]
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == saved


def test_time_budget_counts_training_steps_only(tmp_path, registry, monkeypatch):
    """With a clock on which every step takes 0.25 s, a 1 s budget is exactly 4 steps, whatever
    the machine's speed or load; evaluation and start-up do not count."""
    import kennethlm_core.train as train_module

    ticks = itertools.count(0.0, 0.25)
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: next(ticks))
    summary = train(tiny_config(registry, steps=0, time=1.0), tmp_path / "t", registry=registry)
    assert summary["steps"] == 4 and summary["train_time_s"] == 1.0


def test_token_budget(tmp_path, registry):
    summary = train(tiny_config(registry, steps=0, tokens=640), tmp_path / "t", registry=registry)
    assert summary["tokens_seen"] == 640 and summary["steps"] == 10


def test_non_finite_loss_stops_with_advice_and_keeps_the_checkpoint(tmp_path):
    from kennethlm_core.model import GPT

    class Exploding(GPT):
        calls = 0

        def forward(self, idx, targets=None):
            logits, loss = super().forward(idx, targets)
            if targets is not None:
                Exploding.calls += 1
                if Exploding.calls > 14:
                    loss = loss * float("nan")
            return logits, loss

    plugin = types.ModuleType("exploding")
    plugin.klm_register_model = hookimpl(lambda register: register("exploding", Exploding))
    reg = Registry(entry_points=False)
    reg.add_plugin(plugin, "exploding", "test")
    cfg = tiny_config(reg, model="exploding")
    with pytest.raises(
        NonFiniteLoss,
        match=r"non-finite by step 15; the last good checkpoint "
        r"\(step 10\).*lower --lr",
    ):
        train(cfg, tmp_path / "x", registry=reg, progress=lambda *a: None)
    from safetensors import safe_open

    with safe_open(tmp_path / "x" / "checkpoint.safetensors", framework="pt") as f:
        assert json.loads(f.metadata()["klm"])["step"] == 10
        assert torch.isfinite(f.get_tensor("model.wte.weight")).all()


# -- starting from another run's checkpoint (klm compare --branch-at, --init-from) ------------


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A 40-step run that keeps its checkpoint of step 20."""
    from kennethlm_core.plugins import get_registry

    registry = get_registry()
    out = tmp_path_factory.mktemp("straight") / "run"
    cfg = tiny_config(registry, steps=40, dropout=0.1)
    train(cfg, out, registry=registry, snapshot_at=20)
    return cfg, out


def test_a_branch_with_the_same_settings_continues_exactly(straight, tmp_path, registry):
    from kennethlm_core.rundir import snapshot_path

    cfg, run = straight
    summary = train(cfg, tmp_path / "b", registry=registry, init_from=snapshot_path(run, 20))
    branch, source = read_metrics(tmp_path / "b"), read_metrics(run)
    assert branch[:2] == source[:2]  # copied from the source
    assert branch[2]["step"] == 20 and branch[2]["val_bpb"] == source[2]["val_bpb"]
    assert losses(tmp_path / "b")[3:] == losses(run)[3:]  # then the very same steps
    assert summary["val_bpb"] == json.loads((run / "summary.json").read_text())["val_bpb"]
    assert summary["init_from"]["step"] == 20 and summary["steps"] == 40


def test_a_branch_keeps_its_own_hyperparameters(straight, tmp_path, registry):
    from kennethlm_core.rundir import snapshot_path

    cfg, run = straight
    train(cfg.replace(lr=3e-3), tmp_path / "b", registry=registry, init_from=snapshot_path(run, 20))
    lr = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "b")}
    source = {r["step"]: r["lr"] for r in read_metrics(run)}
    assert lr[30] == pytest.approx(3 * source[30])  # same schedule, three times the peak


def test_a_branch_with_another_architecture_copies_what_fits(straight, tmp_path, registry):
    cfg, run = straight
    messages = []
    other = tiny_config(registry, steps=60, dropout=0.1, posemb="none")
    summary = train(other, tmp_path / "b", registry=registry, init_from=run, log=messages.append)
    assert any("new: none; dropped: posemb.wpe.weight" in m for m in messages)
    rows = read_metrics(tmp_path / "b")
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    assert rows[:4] == read_metrics(run)[:4]
    assert rows[4]["val_bpb"] != read_metrics(run)[4]["val_bpb"]  # no position table now
    assert summary["init_from"]["step"] == 40 and summary["steps"] == 60


def test_a_branch_needs_the_same_tokenizer(straight, tmp_path, registry):
    from kennethlm_core.errors import ConfigError

    cfg, run = straight
    with pytest.raises(ConfigError, match="its tokenizer is 'char'.*same tokenizer"):
        train(cfg.replace(tokenizer="byte"), tmp_path / "b", registry=registry, init_from=run)
    assert not (tmp_path / "b").exists()


# -- the sequence-length warm-up -------------------------------------------------------------


def test_shorter_rows_are_the_same_tokens_cut_into_quarters_then_halves():
    from kennethlm_core.train import shorter_rows

    x = torch.arange(2 * 16).view(2, 16)
    y = x + 100
    quarter, targets = shorter_rows(x, y, progress=0.1, warmup=0.4)
    assert quarter.shape == (8, 4) and torch.equal(quarter.flatten(), x.flatten())
    assert torch.equal(targets, quarter + 100)  # each target stays with its input
    assert shorter_rows(x, y, 0.2, 0.4)[0].shape == (4, 8)
    assert shorter_rows(x, y, 0.4, 0.4)[0] is x


def test_a_run_with_sequence_warmup_trains_on_short_rows_first(tmp_path):
    from kennethlm_core.model import GPT

    class Recording(GPT):
        shapes = []

        def forward(self, idx, targets=None):
            if targets is not None:  # a training step, not an evaluation
                Recording.shapes.append(tuple(idx.shape))
            return super().forward(idx, targets)

    plugin = types.ModuleType("recording")
    plugin.klm_register_model = hookimpl(lambda register: register("recording", Recording))
    reg = Registry(entry_points=False)
    reg.add_plugin(plugin, "recording", "test")
    summary = train(
        tiny_config(reg, model="recording", seq_warmup=0.5), tmp_path / "w", registry=reg
    )
    assert Recording.shapes == [(16, 4)] * 5 + [(8, 8)] * 5 + [(4, 16)] * 10  # 20 steps
    assert summary["tokens_seen"] == 20 * 4 * 16  # the same tokens per step throughout
