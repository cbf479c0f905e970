"""The GPT: causality, nanoGPT's parameter count and initialisation, generation."""

from __future__ import annotations

import math

import pytest
import torch

from kennethlm_core.model import Bigram, build_model, count_params, generate

from .conftest import tiny_config


def nanogpt_params(V, T, C, L, bias):
    """GPT parameters in closed form (tied embeddings, learned positions, LayerNorm, 4x MLP)."""
    per_block = 12 * C * C + 2 * C  # qkv 3C^2 + proj C^2 + mlp 8C^2, two LayerNorm gains
    if bias:
        per_block += 3 * C + C + 4 * C + C + 2 * C  # linear biases and LayerNorm biases
    final_norm = 2 * C if bias else C
    return V * C + T * C + L * per_block + final_norm


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_matches_closed_form(registry, bias):
    cfg = tiny_config(registry, n_layer=3, n_embd=48, n_head=4, block_size=20, bias=bias)
    model = build_model(cfg, vocab_size=101, registry=registry)
    assert count_params(model) == nanogpt_params(101, 20, 48, 3, bias)
    assert model.wte.weight is model.lm_head.weight  # tied


def test_nanogpt_initialisation(registry):
    torch.manual_seed(0)
    cfg = tiny_config(registry, n_layer=4, n_embd=256, n_head=4, block_size=64, bias=True)
    model = build_model(cfg, vocab_size=300, registry=registry)
    residual = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(residual, rel=0.05), name
        elif name.endswith((".bias",)) and "ln" not in name:
            assert torch.all(p == 0), name
        elif p.dim() == 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif "ln" in name and name.endswith("weight"):
            assert torch.all(p == 1), name


@pytest.mark.parametrize("model_name", ["gpt", "bigram"])
def test_changing_the_future_never_changes_the_past(registry, model_name):
    cfg = tiny_config(registry, model=model_name)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=50, registry=registry).eval()
    x = torch.randint(0, 50, (2, cfg.block_size))
    for t in (0, 5, cfg.block_size - 2):
        y = x.clone()
        y[:, t + 1 :] = torch.randint(0, 50, y[:, t + 1 :].shape)
        a, _ = model(x)
        b, _ = model(y)
        assert torch.equal(a[:, : t + 1], b[:, : t + 1])
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :]) or model_name == "bigram"


def test_the_ladder_switches_change_the_architecture(registry):
    plain = tiny_config(registry, residual=False, mlp="none", norm="none", posemb="none")
    model = build_model(plain, vocab_size=30, registry=registry)
    assert all(block.mlp is None for block in model.blocks)
    assert not any("ln" in n for n, _ in model.named_parameters())
    logits, loss = model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, 30) and torch.isfinite(loss)


def test_loss_ignores_minus_one_targets(registry):
    cfg = tiny_config(registry)
    model = build_model(cfg, vocab_size=40, registry=registry)
    x = torch.randint(0, 40, (1, 8))
    y = torch.randint(0, 40, (1, 8))
    masked = y.clone()
    masked[0, 4:] = -1
    logits, loss = model(x, masked)
    ref = torch.nn.functional.cross_entropy(logits[0, :4], y[0, :4])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_too_long_input_is_refused(registry):
    cfg = tiny_config(registry)
    model = build_model(cfg, vocab_size=40, registry=registry)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, cfg.block_size + 1, dtype=torch.long))


def test_generate_crops_context_and_is_seeded(registry):
    cfg = tiny_config(registry, block_size=8)
    model = build_model(cfg, vocab_size=40, registry=registry).eval()
    start = torch.zeros(2, 3, dtype=torch.long)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = generate(model, start, 20, cfg.block_size, temperature=1.0, top_k=5, generator=g1)
    b = generate(model, start, 20, cfg.block_size, temperature=1.0, top_k=5, generator=g2)
    assert a.shape == (2, 23) and torch.equal(a, b)
    greedy = generate(model, start, 5, cfg.block_size, temperature=0)
    logits, _ = model(start)
    assert torch.equal(greedy[:, 3], logits[:, -1].argmax(-1))


def test_generate_stops_at_stop_token(registry):
    cfg = tiny_config(registry)
    model = Bigram(cfg, vocab_size=5)
    with torch.no_grad():
        model.table.weight.zero_()
        model.table.weight[:, 4] = 10.0  # always predicts token 4
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 50, 8, temperature=0, stop_id=4)
    assert out.tolist() == [[0, 4]]
