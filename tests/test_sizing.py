"""--size auto (sizing.py): the rule's choice between probed shapes, the parameters it counts,
a real run that trains the chosen shape and reports why, and the budgets it refuses."""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from itertools import chain, repeat
from time import sleep

import pytest
import torch

from kennethlm_core import sizing
from kennethlm_core.config import build_config, resolve
from kennethlm_core.model import build_model

from .conftest import assert_one_line_error, tiny_config


def fake_probes(monkeypatch, rates, n, gain=lambda batch: 1.0, vocab_gain=None):
    """tokens_per_s answers from tables: (rate x gain(batch) x vocab_gain[vocab_size], body
    params) per (n_layer, n_embd). Returns the probes asked for, as (n_layer, n_embd, batch)."""
    probed = []

    def probe(cfg, registry, vocab_size, device, autocast, seconds=0):
        probed.append((cfg.n_layer, cfg.n_embd, cfg.batch_size))
        rate = rates[cfg.n_layer, cfg.n_embd] * gain(cfg.batch_size)
        return rate * (vocab_gain or {}).get(vocab_size, 1.0), n[cfg.n_layer, cfg.n_embd]

    monkeypatch.setattr(sizing, "tokens_per_s", probe)
    return probed


SHAPES = ((2, 64), (4, 64), (4, 128), (4, 256))  # (n_layer, n_embd)
HEADS = {(2, 64): 2, (4, 64): 2, (4, 128): 4, (4, 256): 4}
N = {(2, 64): 100_000, (4, 64): 200_000, (4, 128): 800_000, (4, 256): 3_200_000}
FIT = {"E": 1.0, "A": 10.0, "alpha": 0.25, "B": 100.0, "beta": 0.35}
BATCH = 4  # tiny_config's


def choice(
    monkeypatch, registry, rates, time=1000.0, gain=lambda batch: 1.0, vocabularies=None,
    **overrides,
):  # fmt: skip
    """The choice, and the shapes probed at the recipe's batch as (n_layer, n_embd).
    ``vocabularies``: {setting: (vocab_size, bytes per token, rate factor)} the rule may try."""
    monkeypatch.setattr(sizing, "SHAPES", tuple((d, HEADS[d, w], w) for d, w in SHAPES))
    monkeypatch.setattr(sizing, "FIT", FIT)
    table = vocabularies or {}
    seen = fake_probes(monkeypatch, rates, N, gain, {v: f for v, _, f in table.values()})

    def vocabulary(setting):
        if setting not in table:
            return None
        return sizing.Vocabulary(setting, table[setting][0], table[setting][1])

    cfg = tiny_config(registry, **overrides).replace(time=time, steps=0)
    args = (cfg, registry, cfg.vocab_size or 50, torch.device("cpu"), None)
    c = sizing.choose(*args, log=lambda m: None, bytes_per_token=2.0, vocabulary=vocabulary)
    return c, [(d, w) for d, w, b in seen if b == cfg.batch_size]


def test_the_shape_with_the_lowest_predicted_bpb_wins_and_probing_stops_past_it(
    monkeypatch, registry
):
    # tokens/s falling about as 1/N: a bigger model sees fewer tokens in the same time
    rates = {(2, 64): 40_000.0, (4, 64): 20_000.0, (4, 128): 5_000.0, (4, 256): 1_250.0}
    monkeypatch.setattr(sizing, "MARGIN", 0.0)  # no second probes (below)
    c, seen = choice(monkeypatch, registry, rates)
    predicted = {s: sizing.predicted_bpb(N[s], rates[s] * 1000.0, 2.0) for s in SHAPES}
    best = min(predicted, key=predicted.get)
    assert (c.n_layer, c.n_embd) == best and c.n_head == HEADS[best]
    assert best != SHAPES[-1]  # the case is interesting: the prediction rises after the best
    assert seen == list(SHAPES[: SHAPES.index(best) + 2])  # one past the best, no further
    shapes = [p for p in c.probes if p["batch_size"] == BATCH]
    assert [p["predicted_bpb"] for p in shapes] == [round(predicted[s], 4) for s in seen]
    assert "lowest predicted val_bpb" in c.reason and "tokens per parameter" in c.reason


def test_a_faster_machine_or_a_longer_budget_gets_a_bigger_model(monkeypatch, registry):
    def slope(speed):  # tokens/s about 1/N, times a machine's speed
        return {s: speed * 4e9 / N[s] for s in SHAPES}

    sizes = []
    for speed, time in ((0.1, 60.0), (1.0, 60.0), (1.0, 3600.0), (10.0, 3600.0)):
        c, _ = choice(monkeypatch, registry, slope(speed), time)
        sizes.append(N[c.n_layer, c.n_embd])
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_the_predicted_bpb_is_the_fitted_loss_model(monkeypatch):
    monkeypatch.setattr(sizing, "FIT", FIT)
    assert sizing.predicted_bpb(1e4, 1e6) == pytest.approx(1 + 10 * 1e4**-0.25 + 100 * 1e6**-0.35)


def test_the_project_fit_is_filled_in_and_prefers_more_tokens_and_parameters():
    f = sizing.FIT
    assert f["E"] > 0 and f["A"] > 0 and f["B"] > 0 and f["alpha"] > 0 and f["beta"] > 0
    assert sizing.predicted_bpb(1e6, 1e7) < sizing.predicted_bpb(1e6, 1e6)
    assert sizing.predicted_bpb(1e6, 1e7) < sizing.predicted_bpb(1e5, 1e7)


def test_the_rule_counts_text_so_longer_tokens_count_for_more():
    """D is text in the fit's tokens: a tokenizer of twice its bytes per token has seen what
    twice the tokens of the fit's tokenizer would hold; its own figure changes nothing."""
    fit_bpt = sizing.FIT_BYTES_PER_TOKEN
    assert sizing.predicted_bpb(1e6, 1e6, 2 * fit_bpt) == pytest.approx(
        sizing.predicted_bpb(1e6, 2e6)
    )
    assert sizing.predicted_bpb(1e6, 1e6, fit_bpt) == pytest.approx(sizing.predicted_bpb(1e6, 1e6))
    assert sizing.predicted_bpb(1e6, 1e6, 2 * fit_bpt) < sizing.predicted_bpb(1e6, 1e6)


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


def test_compiled_probes_leave_the_run_its_own_compilation(registry, monkeypatch):
    """torch compiles a function for at most recompile_limit models (8), then runs it eagerly:
    a ladder of compiled probes must not use those up, or the run trains uncompiled (a 15-minute
    run once lost a third of its rate so). Dynamo's eager backend keeps the test quick."""
    import functools

    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch.compiler.reset()
    for width in (32, 48, 64):  # three probes, one model each: past the limit of 2
        cfg = tiny_config(registry).replace(compile=True, n_embd=width)
        sizing.tokens_per_s(cfg, registry, 50, torch.device("cpu"), nullcontext, 0.01)
    counters = torch._dynamo.utils.counters
    counters.clear()
    cfg = tiny_config(registry)
    model = torch.compile(build_model(cfg, 50, registry))  # the run's own model
    x = torch.randint(0, 50, (2, cfg.block_size))
    model(x, x)
    assert counters["frames"]["ok"] >= 1 and not counters["recompile_limit"], dict(counters)
    torch.compiler.reset()


def test_a_probe_is_its_median_step_so_one_stalled_step_does_not_count(registry):
    cfg, steps = tiny_config(registry), []

    @contextmanager
    def stalling():  # the third step (the second counted) waits half a second, as if preempted
        steps.append(1)
        if len(steps) == 3:
            sleep(0.5)
        yield

    rate, _ = sizing.tokens_per_s(cfg, registry, 50, torch.device("cpu"), stalling, 0.05)
    tokens = cfg.batch_size * cfg.block_size
    # a mean over the (at most three) counted steps would be under 6 x tokens per second
    assert len(steps) == 4 and rate > 10 * tokens


def test_the_batch_doubles_while_it_buys_rate_with_learning_rates_by_its_square_root(
    monkeypatch, registry
):
    """Rate x1.3 from batch 4 to 8, x1.1 to 16, x1.02 to 32: batch 16 (the gain to 32 is under
    RATE_GAIN); lr and each *_lr option scaled by sqrt(16 / 4) = 2, an option of 0 kept 0."""
    rates = {(2, 64): 40_000.0, (4, 64): 20_000.0, (4, 128): 5_000.0, (4, 256): 1_250.0}
    gains = {4: 1.0, 8: 1.3, 16: 1.43, 32: 1.46}
    c, _ = choice(monkeypatch, registry, rates, gain=gains.get, lr=1e-3, optimizer="muon")
    assert c.settings["batch_size"] == 16
    assert c.settings["lr"] == pytest.approx(2e-3)
    assert c.settings["muon_lr"] == pytest.approx(2 * 0.02)  # muon's default, doubled
    assert c.settings["muon_embed_lr"] == 0.0  # 0: lr's (already scaled)
    assert "batch 16" in c.reason and "learning rates x2.00" in c.reason
    assert c.to_dict()["batch_size"] == 16


def test_no_faster_batch_keeps_the_recipes_batch_and_says_why(monkeypatch, registry):
    rates = {(2, 64): 40_000.0, (4, 64): 20_000.0, (4, 128): 5_000.0, (4, 256): 1_250.0}
    c, _ = choice(monkeypatch, registry, rates, gain={4: 1.0, 8: 1.02}.get)
    assert c.settings == {} and "batch 4: twice was 1.02x the rate" in c.reason


def test_the_batch_stops_doubling_before_the_run_has_too_few_steps(monkeypatch, registry):
    # 1,250 tokens/s x 100 s at 4 x 256: doubling batch 4 of 16 tokens leaves 977 steps
    rates = dict.fromkeys(SHAPES, 1_250.0)
    c, _ = choice(monkeypatch, registry, rates, time=100.0, gain={4: 1.0, 8: 2.0}.get)
    assert c.settings == {} and "twice would leave 977 steps" in c.reason


def test_a_bigger_batch_probes_the_bigger_shapes_again(monkeypatch, registry):
    """At batch 4 the second shape wins; a doubled batch that only the bigger shapes gain
    from (their optimizer cost per step amortised) makes the third win."""
    rates = {(2, 64): 40_000.0, (4, 64): 30_000.0, (4, 128): 5_000.0, (4, 256): 1_000.0}
    monkeypatch.setattr(sizing, "MIN_STEPS", 1)
    calls = []

    def probe(cfg, registry, vocab_size, device, autocast, seconds=0):
        calls.append((cfg.n_layer, cfg.n_embd, cfg.batch_size))
        big = cfg.n_embd >= 128 and cfg.batch_size == 8
        return rates[cfg.n_layer, cfg.n_embd] * (1.1 if cfg.batch_size == 8 else 1.0) * (
            8.0 if big else 1.0
        ), N[cfg.n_layer, cfg.n_embd]

    monkeypatch.setattr(sizing, "SHAPES", tuple((d, HEADS[d, w], w) for d, w in SHAPES))
    monkeypatch.setattr(sizing, "FIT", FIT)
    monkeypatch.setattr(sizing, "tokens_per_s", probe)
    cfg = tiny_config(registry).replace(time=1000.0, steps=0)
    c = sizing.choose(cfg, registry, 50, torch.device("cpu"), None, log=lambda m: None)
    at4 = [(d, w) for d, w, b in calls if b == 4]
    assert at4 == list(SHAPES[:3])  # (4, 64) best at batch 4, (4, 128) a margin worse
    assert (4, 64, 8) in calls and (4, 128, 8) in calls  # the batch, then the shapes above
    assert (c.n_layer, c.n_embd, c.settings["batch_size"]) == (4, 128, 8)


RATES = {(2, 64): 40_000.0, (4, 64): 20_000.0, (4, 128): 5_000.0, (4, 256): 1_250.0}


def test_the_vocabulary_doubles_while_its_longer_tokens_outweigh_its_slower_step(
    monkeypatch, registry
):
    """From 512 (2.0 bytes per token): 1,024 carries 2.6 at 0.95x the rate (text 1.24x:
    better), 2,048 3.0 at 0.6x (0.9x: worse); 256 is not tried once a larger one won."""
    table = {1024: (1024, 2.6, 0.95), 2048: (2048, 3.0, 0.6), 256: (256, 1.6, 1.9)}
    c, _ = choice(monkeypatch, registry, RATES, vocabularies=table, vocab_size=512)
    assert c.settings["vocab_size"] == 1024 and c.to_dict()["vocab_size"] == 1024
    assert c.bytes_per_token == 2.6  # the chosen tokenizer's, which the prediction counted
    assert {p["vocab_size"] for p in c.probes} == {512, 1024, 2048}
    assert "vocabulary 1,024 of 512, 1,024, 2,048" in c.reason


def test_a_smaller_vocabulary_is_tried_when_a_larger_one_loses(monkeypatch, registry):
    table = {1024: (1024, 2.1, 0.8), 256: (256, 1.5, 1.5)}  # 128 is below VOCABULARIES
    c, _ = choice(monkeypatch, registry, RATES, vocabularies=table, vocab_size=512)
    assert c.settings["vocab_size"] == 256
    assert {p["vocab_size"] for p in c.probes} == {512, 1024, 256}


def test_the_recipes_vocabulary_stays_where_no_other_is_better_or_none_is_set(
    monkeypatch, registry
):
    table = {1024: (1024, 2.0, 0.9), 256: (256, 2.0, 0.9)}  # the same text, a slower step
    c, _ = choice(monkeypatch, registry, RATES, vocabularies=table, vocab_size=512)
    assert "vocab_size" not in c.settings and c.bytes_per_token == 2.0
    c, _ = choice(monkeypatch, registry, RATES, vocabularies=table)  # vocab_size 0: its own
    assert {p["vocab_size"] for p in c.probes} == {50} and "vocab_size" not in c.settings


def test_klm_run_size_auto_trains_the_chosen_shape_and_says_why(tmp_path, klm, monkeypatch):
    monkeypatch.setattr(sizing, "SHAPES", ((1, 1, 32), (2, 2, 64), (2, 3, 96)))
    monkeypatch.setattr(sizing, "PROBE_S", 0.05)
    monkeypatch.setattr(sizing, "FIT", FIT)
    out = tmp_path / "run"
    args = ["--block-size", "16", "--batch-size", "4", "--set", "final_eval_bytes=1024"]
    args += ["--tokenizer", "bpe", "--vocab-size", "300"]  # 600 is learnt and tried (perhaps more)
    code, _, err = klm("run", "--time", "2s", "--size", "auto", *args, "--out", out, "-q")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    size = summary["size"]
    assert (config["n_layer"], config["n_embd"], config["n_head"]) == (
        size["n_layer"], size["n_embd"], size["n_head"],
    )  # fmt: skip
    assert config["size"] == "auto" and size["fit"] == FIT
    assert 1 < size["bytes_per_token"] < 8  # the rule counted this tokenizer's text
    vocabularies = {p["vocab_size"]: p["bytes_per_token"] for p in size["probes"]}
    assert {300, 600} <= set(vocabularies) and vocabularies[600] > vocabularies[300]
    assert config["vocab_size"] == size.get("vocab_size", 300)  # the run trains the choice
    assert size["probes"][0]["tokens_per_s"] > 0 and "lowest predicted" in size["reason"]


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


def test_a_probe_slightly_worse_is_probed_again_and_the_faster_counts(monkeypatch, registry):
    # the third shape's first probe slowed by other work (2.01), its second 1.9: on to the fourth
    predictions = chain([3.0, 2.0, 2.01, 1.9, 1.5], repeat(9.0))
    monkeypatch.setattr(sizing, "predicted_bpb", lambda n, tokens, per_token: next(predictions))
    c, seen = choice(monkeypatch, registry, dict.fromkeys(SHAPES, 1000.0))
    assert seen == [SHAPES[0], SHAPES[1], SHAPES[2], SHAPES[2], SHAPES[3]]
    assert (c.n_layer, c.n_embd) == SHAPES[3]
    # worse twice: past the best, which stays the first shape
    predictions = chain([2.0, 2.01, 2.015, 1.0], repeat(9.0))
    c, seen = choice(monkeypatch, registry, dict.fromkeys(SHAPES, 1000.0))
    assert seen == [SHAPES[0], SHAPES[1], SHAPES[1]] and (c.n_layer, c.n_embd) == SHAPES[0]


def test_a_probe_predicting_a_margin_worse_ends_the_search_at_once(monkeypatch, registry):
    """A probe MARGIN worse than the best is past it, not slowed: neither it nor the bigger
    shapes are probed again (each would cost its probe's time and memory)."""
    predictions = chain([3.0, 2.0, 2.0 + sizing.MARGIN + 0.001, 1.0], repeat(9.0))
    monkeypatch.setattr(sizing, "predicted_bpb", lambda n, tokens, per_token: next(predictions))
    c, seen = choice(monkeypatch, registry, dict.fromkeys(SHAPES, 1000.0))
    assert seen == list(SHAPES[:3]) and (c.n_layer, c.n_embd) == SHAPES[1]


def test_probing_goes_on_while_the_prediction_falls_whatever_its_rounding(monkeypatch, registry):
    """The stop compares unrounded predictions (a rounded one below its own value once
    stopped the probing at the first shape)."""
    predictions = chain([3.00004, 2.00004, 1.00004, 1.5], repeat(9.0))
    monkeypatch.setattr(sizing, "predicted_bpb", lambda n, tokens, per_token: next(predictions))
    c, seen = choice(monkeypatch, registry, dict.fromkeys(SHAPES, 1000.0))
    assert seen == list(SHAPES) and (c.n_layer, c.n_embd) == SHAPES[2]
