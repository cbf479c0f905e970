"""--size auto (sizing.py): the rule's choice between probed shapes, the parameters it counts,
a real run that trains the chosen shape and reports why, and the budgets it refuses."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import torch

from kennethlm_core import sizing
from kennethlm_core.config import build_config, resolve
from kennethlm_core.model import build_model

from .conftest import assert_one_line_error, tiny_config


def fake_probes(monkeypatch, rates: dict[tuple[int, int], float], n: dict[tuple[int, int], int]):
    """tokens_per_s answers from tables: (rate, body params) per (n_layer, n_embd)."""
    probed = []

    def probe(cfg, registry, vocab_size, device, autocast, seconds=0):
        probed.append((cfg.n_layer, cfg.n_embd))
        return rates[cfg.n_layer, cfg.n_embd], n[cfg.n_layer, cfg.n_embd]

    monkeypatch.setattr(sizing, "tokens_per_s", probe)
    return probed


SHAPES = ((2, 64), (4, 64), (4, 128), (4, 256))
N = {(2, 64): 100_000, (4, 64): 200_000, (4, 128): 800_000, (4, 256): 3_200_000}


@pytest.mark.parametrize(
    ("k", "probed", "chosen"),
    [
        (400.0, 4, (4, 128)),  # 1,000 s x 10k tok/s = 10M tokens: N* = 400 sqrt(1e7) = 1.26M
        (1000.0, 4, (4, 256)),  # N* = 3.16M: only the largest is as big, and it is nearest
        (10.0, 1, (2, 64)),  # N* = 31.6k: the smallest is already bigger
        (1e4, 4, (4, 256)),  # N* = 31.6M: every shape is smaller, the largest is taken
    ],
)
def test_the_shape_nearest_the_rule_on_a_log_scale(monkeypatch, registry, k, probed, chosen):
    monkeypatch.setattr(sizing, "SHAPES", SHAPES)
    monkeypatch.setattr(sizing, "K", k)
    monkeypatch.setattr(sizing, "A", 0.5)
    seen = fake_probes(monkeypatch, dict.fromkeys(SHAPES, 10_000.0), N)
    cfg = tiny_config(registry).replace(time=1000.0, steps=0)
    choice = sizing.choose(cfg, registry, 50, torch.device("cpu"), None, log=lambda m: None)
    assert len(seen) == probed  # probing stops at the first shape as big as its budget asks
    assert (choice.n_layer, choice.n_embd) == chosen
    assert choice.n_head == chosen[1] // 32
    nearest = min(choice.probes, key=lambda p: abs(math.log(p["params"] / p["best_params"])))
    assert (nearest["n_layer"], nearest["n_embd"]) == chosen
    assert all(p["tokens"] == 10_000_000 for p in choice.probes)


def test_a_faster_machine_gets_a_bigger_model(monkeypatch, registry):
    monkeypatch.setattr(sizing, "SHAPES", SHAPES)
    monkeypatch.setattr(sizing, "K", 400.0)
    cfg = tiny_config(registry).replace(time=1000.0, steps=0)
    chosen = []
    for rate in (1_000.0, 10_000.0, 100_000.0):
        fake_probes(monkeypatch, dict.fromkeys(SHAPES, rate), N)
        c = sizing.choose(cfg, registry, 50, torch.device("cpu"), None, log=lambda m: None)
        chosen.append(c.n_embd * c.n_layer)
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1]


def test_body_params_leave_out_the_embedding_tables(registry):
    cfg = resolve(build_config(overrides={"n_layer": 2, "n_embd": 64, "n_head": 2}), registry)
    model = build_model(cfg, 300, registry)
    total = sum(p.numel() for p in model.parameters())
    assert sizing.body_params(model) == total - 300 * 64 - 64 * 64  # tokens (tied), positions
    blocks = sum(p.numel() for p in model.blocks.parameters())
    assert sizing.body_params(model) == blocks + sum(p.numel() for p in model.ln_f.parameters())


def test_a_probe_measures_real_training_steps(registry):
    cfg = tiny_config(registry)
    rate, n = sizing.tokens_per_s(cfg, registry, 50, torch.device("cpu"), nullcontext, 0.05)
    assert rate > 0 and n == sizing.body_params(build_model(cfg, 50, registry))


def test_klm_run_size_auto_trains_the_chosen_shape_and_says_why(tmp_path, klm, monkeypatch):
    monkeypatch.setattr(sizing, "SHAPES", ((1, 32), (2, 64), (2, 96)))
    monkeypatch.setattr(sizing, "PROBE_S", 0.05)
    monkeypatch.setattr(sizing, "K", 0.05)  # small: N* = 0.05 sqrt(D), a few hundred
    out = tmp_path / "run"
    args = ["--block-size", "16", "--batch-size", "4", "--set", "final_eval_bytes=1024"]
    code, _, err = klm("run", "--time", "2s", "--size", "auto", *args, "--out", out, "-q")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    size = summary["size"]
    assert (config["n_layer"], config["n_embd"], config["n_head"]) == (
        size["n_layer"], size["n_embd"], size["n_head"],
    )  # fmt: skip
    assert config["size"] == "auto" and size["rule"] == {"k": 0.05, "a": sizing.A}
    assert size["probes"][0]["tokens_per_s"] > 0 and "nearest" in size["reason"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--size", "auto", "--steps", "100"], ["--size auto picks the shape for a time budget"]),
        (["--size", "auto", "--tokens", "1M"], ["give one with --time"]),
        (["--size", "big", "--time", "1m"], ["'big' is not 'auto'"]),
    ],
)
def test_size_auto_needs_a_time_budget(klm, args, needles, tmp_path):
    code, _, err = klm("run", *args, "--out", tmp_path / "r")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "r").exists()


def test_a_comparison_refuses_size_auto(klm, tmp_path):
    """Both arms of a comparison must train one shape; --size auto would pick one per run."""
    args = ["--baseline", "baseline", "--candidate", "--set lr=3e-3", "--time", "10s"]
    code, _, err = klm("compare", *args, "--size", "auto", "--out", tmp_path / "exp")
    assert_one_line_error(code, err, "asks for --size auto", "give --n-layer, --n-embd")
    assert not (tmp_path / "exp").exists()
