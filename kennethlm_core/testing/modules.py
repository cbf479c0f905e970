"""The kits for modules applied to sequences (``ModuleChecks``): attention, norm and mlp, and
positional embeddings (``PosembChecks``: the module checks on ``embed`` and ``rotate``, and
checks of its own for ``score_bias`` and a GPT built with the embedding)."""

from __future__ import annotations

import itertools

import pytest
import torch

from kennethlm_core.checkpoint import load_weights, save_weights
from kennethlm_core.components import PositionalEmbedding
from kennethlm_core.model import build_model
from kennethlm_core.testing.base import (
    SEED,
    VOCAB,
    Conformance,
    _cast,
    _close,
    _randn,
    devices,
    lengths,
)


class ModuleChecks(Conformance):
    """Checks for an ``nn.Module`` applied to sequences, positions along dimension -2 of
    its output (or of each output, where ``forward`` gives a tuple). Subclasses say how to
    build it, what to feed it and how to change the future."""

    def make(self, cfg):
        raise NotImplementedError

    def examples(self, cfg, T: int) -> list[tuple]:
        """Input tuples (float32, on the CPU) for a sequence of length T."""
        raise NotImplementedError

    def change_future(self, inputs: tuple, t: int) -> tuple:
        """The inputs with everything at positions after ``t`` replaced."""
        raise NotImplementedError

    def expected_shape(self, inputs: tuple) -> tuple:
        """The output's shape (a tuple of shapes where ``forward`` gives a tuple)."""
        return tuple(inputs[0].shape)

    def forward(self, module, inputs: tuple) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return module(*inputs)

    def build(self, seed: int = SEED, **changes):
        cfg = self.config(**changes)
        torch.manual_seed(seed)
        module = self.make(cfg)
        if module is None:
            pytest.skip(f"{self.what} builds no sublayer (None): there is nothing to check")
        return module

    def outputs(self, module, inputs: tuple) -> tuple[torch.Tensor, ...]:
        """``forward``'s output as a tuple: every check below runs on each of them."""
        y = self.forward(module, inputs)
        return y if isinstance(y, tuple) else (y,)

    def test_shapes(self):
        cfg = self.config()
        module = self.build().eval()
        for T in lengths(cfg.block_size):
            for inputs in self.examples(cfg, T):
                y = self.forward(module, inputs)
                shape = tuple(tuple(o.shape) for o in y) if isinstance(y, tuple) else tuple(y.shape)
                assert shape == self.expected_shape(inputs), (
                    f"{self.what}: output shape {shape} for inputs of length {T}, "
                    f"expected {self.expected_shape(inputs)}"
                )

    def test_dtype(self):
        cfg = self.config()
        for inputs in self.examples(cfg, cfg.block_size):
            reference = self.outputs(self.build().eval(), inputs)
            for dtype in (torch.float32, torch.bfloat16):
                module = self.build().to(dtype).eval()
                outputs = self.outputs(module, _cast(inputs, dtype, "cpu"))
                for y, ref in zip(outputs, reference, strict=True):
                    assert y.dtype == dtype, f"{self.what}: {dtype} in, {y.dtype} out"
                    assert torch.isfinite(y).all(), f"{self.what}: non-finite output in {dtype}"
                    scale = 1 + ref.abs().max().item()
                    assert _close(y, ref, atol=0.05 * scale), (
                        f"{self.what}: its {dtype} output is far from its float32 output"
                    )

    def test_device(self):
        cfg = self.config()
        with torch.device("meta"):  # `klm run` builds every model on the meta device first
            self.build()
        for device in devices():
            module = self.build().to(device).eval()
            for inputs in self.examples(cfg, cfg.block_size):
                for y in self.outputs(module, _cast(inputs, torch.float32, device)):
                    assert y.device.type == device, (
                        f"{self.what}: inputs on {device}, output on {y.device}"
                    )

    def test_causal(self):
        cfg = self.config()
        module = self.build().eval()
        T = cfg.block_size
        for inputs in self.examples(cfg, T):
            outputs = self.outputs(module, inputs)
            for t in (0, T // 2, T - 2):
                changed = self.outputs(module, self.change_future(inputs, t))
                for y, y2 in zip(outputs, changed, strict=True):
                    assert _close(y[..., : t + 1, :], y2[..., : t + 1, :]), (
                        f"{self.what} is not causal: positions up to {t} changed when only "
                        "later positions changed"
                    )
                    assert not _close(y[..., t + 1 :, :], y2[..., t + 1 :, :], atol=1e-6), (
                        f"{self.what}: positions after {t} did not change when their inputs did"
                    )

    def test_finite_gradients(self):
        cfg = self.config()
        module = self.build().train()
        for inputs in self.examples(cfg, cfg.block_size):
            leaves = tuple(
                x.clone().requires_grad_(True) if x is not None and x.is_floating_point() else x
                for x in inputs
            )
            module.zero_grad(set_to_none=True)
            outputs = self.outputs(module, leaves)
            sum(
                (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum() for y in outputs
            ).backward()
            grads = [x.grad for x in leaves if x is not None and x.requires_grad]
            grads += [p.grad for p in module.parameters() if p.requires_grad]
            assert any(g is not None and g.abs().sum() > 0 for g in grads), (
                f"{self.what}: no gradient reaches its inputs or parameters"
            )
            for g in grads:
                assert g is None or torch.isfinite(g).all(), f"{self.what}: non-finite gradient"

    def test_deterministic_under_a_seed(self):
        cfg = self.config()
        a, b = self.build(seed=SEED), self.build(seed=SEED)
        for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(ta, tb), f"{self.what}: the same seed gave a different {name}"
        for inputs in self.examples(cfg, cfg.block_size):
            runs = []
            for _ in range(2):
                module = self.build(seed=SEED, dropout=0.1).train()
                torch.manual_seed(SEED)
                runs.append(self.outputs(module, inputs))
            assert all(map(torch.equal, *runs)), (
                f"{self.what}: the same seed gave different outputs"
            )

    def test_dropout_only_in_training(self):
        cfg = self.config()
        plain = self.build(dropout=0.0).eval()
        dropping = self.build(dropout=0.5).eval()
        for inputs in self.examples(cfg, cfg.block_size):
            pairs = zip(self.outputs(plain, inputs), self.outputs(dropping, inputs), strict=True)
            assert all(_close(a, b, 1e-6) for a, b in pairs), (
                f"{self.what}: with dropout set, evaluation (eval mode) gives other outputs"
            )

    def test_save_load_round_trip(self, tmp_path):
        cfg = self.config()
        saved, fresh = self.build(seed=1).eval(), self.build(seed=2).eval()
        save_weights(saved, tmp_path / "weights.safetensors")
        load_weights(fresh, tmp_path / "weights.safetensors")
        for inputs in self.examples(cfg, cfg.block_size):
            assert all(
                map(torch.equal, self.outputs(saved, inputs), self.outputs(fresh, inputs))
            ), f"{self.what}: a copy loaded from safetensors gives other outputs"


class AttentionChecks(ModuleChecks):
    """``module(q, k, v, bias=None)``, all (B, H, T, D); a bias broadcasts to (B, H, T, T)."""

    slot = "attention"

    @property
    def takes_bias(self) -> bool:
        return "score_bias" in self.component.provides

    def make(self, cfg):
        return self.component.factory(cfg)

    def examples(self, cfg, T):
        D = cfg.n_embd // cfg.n_head
        q, k, v = (_randn(2, cfg.n_head, T, D, seed=i) for i in range(3))
        if not self.takes_bias:
            return [(q, k, v, None)]
        return [(q, k, v, None), (q, k, v, _randn(cfg.n_head, T, T, seed=3))]

    def change_future(self, inputs, t):
        changed = []
        for i, x in enumerate(inputs):
            if x is not None:
                x = x.clone()
                x[..., t + 1 :, :] = _randn(*x[..., t + 1 :, :].shape, seed=10 + i)
                if i == 3:  # the bias: scores of later keys too
                    x[..., t + 1 :] = _randn(*x[..., t + 1 :].shape, seed=20)
            changed.append(x)
        return tuple(changed)

    def test_score_bias(self):
        cfg = self.config()
        attend = self.build().eval()
        q, k, v, _ = self.examples(cfg, cfg.block_size)[0]
        T = cfg.block_size
        if not self.takes_bias:
            with pytest.raises(ValueError):  # silently ignoring a bias would be a wrong model
                attend(q, k, v, torch.zeros(cfg.n_head, T, T))
            return
        zero = attend(q, k, v, torch.zeros(cfg.n_head, T, T))
        assert _close(zero, attend(q, k, v, None)), f"{self.what}: a zero bias changed the output"
        self_only = attend(q, k, v, 50.0 * torch.eye(T))  # every query attends to itself
        assert _close(self_only, v, atol=1e-3), f"{self.what}: the score bias is not applied"


class NormChecks(ModuleChecks):
    """``factory(cfg, dim)``: a module from (B, T, dim) to (B, T, dim), position by position."""

    slot = "norm"

    def make(self, cfg):
        return self.component.factory(cfg, cfg.n_embd)

    def examples(self, cfg, T):
        return [(3.0 * _randn(2, T, cfg.n_embd, seed=0) + 1.0,)]

    def change_future(self, inputs, t):
        x = inputs[0].clone()
        x[:, t + 1 :] = _randn(*x[:, t + 1 :].shape, seed=7)
        return (x,)

    def test_sequences_are_independent(self):
        cfg = self.config()
        module = self.build().eval()
        (x,) = self.examples(cfg, cfg.block_size)[0]
        other = x.clone()
        other[1] = _randn(*x[1].shape, seed=8)
        assert _close(module(x)[0], module(other)[0]), (
            f"{self.what}: one sequence's output depends on another sequence in the batch"
        )


class MlpChecks(NormChecks):
    """``factory(cfg)``: a module from (B, T, n_embd) to (B, T, n_embd), or None for none."""

    slot = "mlp"

    def make(self, cfg):
        return self.component.factory(cfg)


class PosembChecks(ModuleChecks):
    """``factory(cfg) -> PositionalEmbedding``: the module checks on what ``embed`` and
    ``rotate`` make of a sequence, which must not depend on its length; ``score_bias``, which
    sees only the length, has checks of its own; a GPT built with it is causal and has
    finite gradients."""

    slot = "posemb"

    def make(self, cfg) -> PositionalEmbedding:
        pe = self.component.factory(cfg)
        assert isinstance(pe, PositionalEmbedding), (
            f"{self.what}: the factory must return a kennethlm_core.components."
            f"PositionalEmbedding, got {type(pe).__name__}"
        )
        return pe

    def examples(self, cfg, T):
        D = cfg.n_embd // cfg.n_head
        x = _randn(2, T, cfg.n_embd, seed=0)
        return [(x, *(_randn(2, cfg.n_head, T, D, seed=i) for i in (1, 2)))]

    def change_future(self, inputs, t):
        changed = tuple(x.clone() for x in inputs)
        for i, x in enumerate(changed):
            x[..., t + 1 :, :] = _randn(*x[..., t + 1 :, :].shape, seed=10 + i)
        return changed

    def expected_shape(self, inputs):
        return tuple(tuple(x.shape) for x in inputs)

    def forward(self, pe, inputs):
        """What the embedding does to a sequence (x, q, k): (embedded x, rotated q and k)."""
        x, q, k = inputs
        return (pe.embed(x), *pe.rotate(q, k))

    def gpt(self):
        """A GPT built with the embedding (in training mode) and token ids to feed it."""
        cfg = self.config()
        torch.manual_seed(SEED)
        model = build_model(cfg.replace(model="gpt"), VOCAB, self.reg)
        g = torch.Generator().manual_seed(0)
        return model, torch.randint(0, VOCAB, (2, cfg.block_size), generator=g)

    def test_causal(self):
        super().test_causal()
        cfg = self.config()
        pe = self.build().eval()
        T, cpu = cfg.block_size, torch.device("cpu")
        (inputs,) = self.examples(cfg, T)
        whole, bias = self.forward(pe, inputs), pe.score_bias(T, cpu)
        for t in (1, T // 2):
            prefix = self.forward(pe, tuple(x[..., :t, :] for x in inputs))
            for name, a, b in zip(("embed", "rotate q", "rotate k"), whole, prefix, strict=True):
                assert _close(a[..., :t, :], b), (
                    f"{self.what}: {name} at the first {t} positions depends on what follows"
                )
            if bias is not None:
                assert _close(bias[..., :t, :t], pe.score_bias(t, cpu)), (
                    f"{self.what}: score_bias({t}) differs from the first {t} rows of "
                    f"score_bias({T})"
                )
        model, idx = self.gpt()
        model.eval()
        t = T // 2
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % VOCAB
        a, b = model(idx)[0], model(changed)[0]
        assert _close(a[:, : t + 1], b[:, : t + 1]), f"a GPT with {self.what} is not causal"

    def test_finite_gradients(self):
        super().test_finite_gradients()
        model, idx = self.gpt()
        _, loss = model(idx, torch.roll(idx, -1, dims=1))
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (
                f"a GPT with {self.what}: non-finite gradient in {name}"
            )

    def test_score_bias(self):
        """None, or a bias broadcastable to (B, H, T, T) of finite floats in every dtype, on
        the device asked for. (That it does not depend on T is part of ``test_causal``.)"""
        cfg = self.config()
        T, cpu = cfg.block_size, torch.device("cpu")
        pe = self.build()
        if pe.score_bias(T, cpu) is None:
            return
        for t in lengths(T):
            shape, full = tuple(pe.score_bias(t, cpu).shape), (2, cfg.n_head, t, t)
            assert torch.broadcast_shapes(shape, full) == full, (
                f"{self.what}: score_bias({t}) has shape {shape}, not broadcastable to {full}"
            )
        for dtype, device in itertools.product((torch.float32, torch.bfloat16), devices()):
            b = self.build().to(device=device, dtype=dtype).score_bias(T, torch.device(device))
            assert b.is_floating_point() and torch.isfinite(b).all(), (
                f"{self.what}: score_bias in {dtype} is not all finite floating point numbers"
            )
            assert b.device.type == device, f"{self.what}: score_bias for {device} on {b.device}"

    def test_score_bias_is_reproducible(self, tmp_path):
        """The same score bias from the same seed and from a saved copy; finite gradients."""
        cfg = self.config()
        T, cpu = cfg.block_size, torch.device("cpu")
        pe, twin, loaded = self.build(), self.build(), self.build(seed=2)
        if (bias := pe.score_bias(T, cpu)) is None:
            return
        save_weights(pe, tmp_path / "posemb.safetensors")
        load_weights(loaded, tmp_path / "posemb.safetensors")
        for other, how in ((twin, "the same seed"), (loaded, "a copy loaded from safetensors")):
            assert torch.equal(other.score_bias(T, cpu), bias), (
                f"{self.what}: {how} gives another score_bias"
            )
        if bias.requires_grad:
            bias.float().square().sum().backward()
            for p in pe.parameters():
                assert p.grad is None or torch.isfinite(p.grad).all(), (
                    f"{self.what}: non-finite gradient of score_bias"
                )
