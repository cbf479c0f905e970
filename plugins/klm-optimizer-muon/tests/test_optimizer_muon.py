"""muon: the conformance kit, the orthogonalisation, which parameters get which rule."""

import klm_optimizer_muon
import pytest
import torch

from kennethlm_core.checkpoint import load_checkpoint, save_checkpoint
from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import build_model
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import TINY, conformance

TestMuon = conformance("optimizer", "muon")


def setup(seed=0, **overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={**TINY, "optimizer": "muon", **overrides}), registry)
    torch.manual_seed(seed)
    model = build_model(cfg, 50, registry)
    return cfg, model, registry.get("optimizer", "muon").factory(cfg, model)


def step(model, optimizer, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 50, (4, 16), generator=g)
    _, loss = model(idx, torch.roll(idx, -1, dims=1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_newton_schulz_gives_nearly_orthogonal_matrices():
    torch.manual_seed(0)
    for shape in ((32, 32), (32, 96), (128, 32)):
        s = torch.linalg.svdvals(klm_optimizer_muon.orthogonalise(torch.randn(*shape)))
        assert s.min() > 0.6 and s.max() < 1.3, (shape, s.min(), s.max())


def test_every_direction_that_matters_gets_about_the_same_step():
    """An ill-conditioned g (singular values over 3 decades): along each of g's singular
    directions that is at least 5% of the largest, the result has a singular value near 1."""
    torch.manual_seed(0)
    for shape in ((32, 32), (32, 96), (128, 32)):
        g = torch.randn(*shape) @ torch.diag(torch.logspace(-2, 1, shape[1]))
        u, s, vh = torch.linalg.svd(g, full_matrices=False)
        along = (u.T @ klm_optimizer_muon.orthogonalise(g) @ vh.T).diagonal()
        kept = along[s / s.max() >= 0.05]
        assert len(kept) >= 8 and kept.min() > 0.6 and kept.max() < 1.3, (shape, kept)


def test_update_of_a_hidden_matrix_is_nearly_orthogonal():
    """The first step moves a matrix by lr * orthogonalise(gradient): its singular values are
    near 1 along the directions the gradient spans (a small batch leaves a few out)."""
    _, model, optimizer = setup(muon_weight_decay=0.0)
    lr = optimizer.param_groups[-1]["lr"]
    for w, scale in (
        (model.blocks[0].attn.c_proj.weight, 1.0),
        (model.blocks[0].mlp.c_fc.weight, 2.0),
    ):
        before = w.detach().clone()
        step(model, optimizer)
        s = torch.linalg.svdvals((before - w.detach()) / (lr * scale))  # tall c_fc: sqrt(128/32)
        top = s[: int(0.75 * len(s))]
        assert top.min() > 0.5 and top.max() < 1.3, s
        for p in model.parameters():  # back to a fresh optimizer state for the next matrix
            optimizer.state.pop(p, None)


def test_update_is_the_orthogonalised_gradient():
    _, model, optimizer = setup(muon_weight_decay=0.0)
    w = model.blocks[0].mlp.c_proj.weight
    before = w.detach().clone()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50, (4, 16), generator=g)
    model(idx, torch.roll(idx, -1, dims=1))[1].backward()
    expected = before - 0.02 * klm_optimizer_muon.orthogonalise(w.grad)  # 32 x 128: wide
    optimizer.step()
    torch.testing.assert_close(w.detach(), expected, atol=1e-5, rtol=1e-4)


def test_embeddings_head_and_gains_go_to_adamw():
    _, model, optimizer = setup()
    muon = {id(p) for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {
        "blocks.0.attn.c_attn.weight",
        "blocks.0.attn.c_proj.weight",
        "blocks.0.mlp.c_fc.weight",
        "blocks.0.mlp.c_proj.weight",
    }
    assert not optimizer.param_groups[0]["muon"]  # the trainer logs group 0's lr: AdamW's
    assert optimizer.param_groups[0]["lr"] == 1e-3 and optimizer.param_groups[-1]["lr"] == 0.02
    every = sum(len(g["params"]) for g in optimizer.param_groups)
    assert every == len(list(model.parameters()))


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(8, 4))
    b = torch.nn.Parameter(a.detach().clone())
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    ours = klm_optimizer_muon.Muon([a], momentum=0.95, nesterov=True, ns_steps=5, **hyper)
    reference = torch.optim.AdamW([b], **hyper)
    for _ in range(5):
        grad = torch.randn(8, 4)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_stack_of_matrices_is_orthogonalised_each_on_its_own():
    """The batched Newton-Schulz (one matrix product per step for every matrix of a shape)
    gives what each matrix gives alone, to float32 rounding."""
    torch.manual_seed(0)
    for shape in ((4, 32, 96), (3, 128, 32)):
        g = torch.randn(*shape)
        one_by_one = torch.stack([klm_optimizer_muon.orthogonalise(m) for m in g])
        torch.testing.assert_close(klm_optimizer_muon.orthogonalise(g), one_by_one)


@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
def test_hidden_matrices_move_as_torch_optim_muon_moves_them(ns_dtype):
    """torch.optim.Muon on the same matrices, steps and hyper-parameters. Its momentum is an
    average (buf <- mu buf + (1 - mu) g) where ours is a sum (buf <- mu buf + g): (1 - mu)
    times ours, the same direction, which the normalisation before Newton-Schulz removes.
    It iterates in bfloat16, so the updates agree to bfloat16 precision, ours in float32 or bf16."""
    torch.manual_seed(0)
    ours_params = [torch.nn.Parameter(torch.randn(*s)) for s in ((32, 96), (32, 96), (128, 32))]
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in ours_params]
    hyper = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5)
    ours = klm_optimizer_muon.Muon(
        [{"params": ours_params, "muon": True, "ns_dtype": ns_dtype}],
        betas=(0.9, 0.99), eps=1e-8, **hyper,
    )  # fmt: skip
    reference = torch.optim.Muon(ref_params, adjust_lr_fn="original", **hyper)
    start = [p.detach().clone() for p in ours_params]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ours_params]
        for a, b, g in zip(ours_params, ref_params, grads, strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        reference.step()
    for a, b, s in zip(ours_params, ref_params, start, strict=True):
        moved_ours, moved_ref = (a - s).flatten(), (b - s).flatten()
        cosine = torch.nn.functional.cosine_similarity(moved_ours, moved_ref, dim=0)
        assert cosine > 0.9995, cosine
        assert abs(moved_ours.norm() / moved_ref.norm() - 1) < 0.005


def test_checkpoint_round_trip_keeps_the_momentum(tmp_path):
    _, model, optimizer = setup(seed=1)
    for s in range(3):
        step(model, optimizer, s)
    save_checkpoint(tmp_path / "checkpoint.safetensors", model, optimizer, {}, {"step": 3})
    _, model2, optimizer2 = setup(seed=2)
    load_checkpoint(tmp_path / "checkpoint.safetensors", model2, optimizer2)
    w = model.blocks[0].mlp.c_fc.weight
    buf = optimizer.state[w]["momentum_buffer"]
    buf2 = optimizer2.state[model2.blocks[0].mlp.c_fc.weight]["momentum_buffer"]
    assert torch.equal(buf, buf2) and buf.abs().sum() > 0
    for s in range(3, 5):
        step(model, optimizer, s)
        step(model2, optimizer2, s)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_token_tables_and_an_untied_head_may_have_learning_rates_of_their_own():
    _, model, optimizer = setup(tweak="untied-head", muon_embed_lr=0.05, muon_head_lr=0.004)
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr[id(model.wte.weight)] == 0.05
    assert lr[id(model.lm_head.weight)] == 0.004
    assert lr[id(model.blocks[0].ln_1.weight)] == 1e-3  # gains keep lr
    _, tied, optimizer = setup(muon_embed_lr=0.05, muon_head_lr=0.004)
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr[id(tied.lm_head.weight)] == 0.05  # tied: the head is the embedding


def test_newton_schulz_in_bfloat16_gives_what_float32_gives_to_bf16_precision():
    torch.manual_seed(0)
    for shape in ((32, 96), (3, 128, 32)):
        g = torch.randn(*shape)
        wide = klm_optimizer_muon.orthogonalise(g)
        bf16 = klm_optimizer_muon.orthogonalise(g, dtype=torch.bfloat16)
        assert bf16.dtype == torch.float32  # the update comes back in the gradient's dtype
        cosine = torch.nn.functional.cosine_similarity(bf16.flatten(), wide.flatten(), dim=0)
        assert cosine > 0.999, cosine
        s = torch.linalg.svdvals(bf16)
        assert s.min() > 0.6 and s.max() < 1.3, (shape, s.min(), s.max())


def test_muon_ns_dtype_auto_is_bfloat16_only_where_the_cpu_has_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(klm_optimizer_muon.precision, "cpu_bf16_units", lambda: ["amx_bf16"])
    assert klm_optimizer_muon.ns_dtype("auto", cpu) == "bfloat16"
    monkeypatch.setattr(klm_optimizer_muon.precision, "cpu_bf16_units", lambda: [])
    assert klm_optimizer_muon.ns_dtype("auto", cpu) == "float32"
    assert klm_optimizer_muon.ns_dtype("bfloat16", cpu) == "bfloat16"  # as asked
    _, _, optimizer = setup(muon_ns_dtype="auto")
    assert optimizer.param_groups[-1]["ns_dtype"] == "float32"


def test_a_bfloat16_run_iterates_in_bf16_and_checkpoints_its_choice(tmp_path):
    _, model, optimizer = setup(seed=1, muon_ns_dtype="bfloat16")
    w = model.blocks[0].mlp.c_proj.weight
    before = w.detach().clone()
    step(model, optimizer)
    _, reference, ref_optimizer = setup(seed=1)  # the same start, float32 iteration
    step(reference, ref_optimizer)
    moved, ref_moved = (w - before).flatten(), (reference.blocks[0].mlp.c_proj.weight - before)
    assert not torch.equal(moved, ref_moved.flatten())  # bf16 rounding: really another path
    # a gradient of 64 tokens has many small singular values, which the iteration's rounding
    # moves most; the update is still the float32 one to within a few percent
    cosine = torch.nn.functional.cosine_similarity(moved, ref_moved.flatten(), dim=0)
    assert cosine > 0.995, cosine
    save_checkpoint(tmp_path / "checkpoint.safetensors", model, optimizer, {}, {"step": 1})
    _, fresh, loaded = setup(seed=2)  # a float32 iteration until the checkpoint says bf16
    load_checkpoint(tmp_path / "checkpoint.safetensors", fresh, loaded)
    assert loaded.param_groups[-1]["ns_dtype"] == "bfloat16"


def test_an_unknown_muon_ns_dtype_is_one_clear_error():
    with pytest.raises(ConfigError, match="muon_ns_dtype must be float32, bfloat16 or auto"):
        setup(muon_ns_dtype="float16")
