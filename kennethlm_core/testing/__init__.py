"""The conformance kit: what every component of a slot must do, as ready-made pytest tests.

A plugin package's tests use it in one line per component:

    from kennethlm_core.testing import conformance

    TestFlash = conformance("attention", "flash")
    TestWindow = conformance("attention", "window", window=4)  # settings, as --set gives them

``conformance`` returns a test class that pytest collects (its name must start with ``Test``).
The component is looked up through the registry by slot and name, so the package must be
installed (``make test`` installs every package under ``plugins/``). It is built from a tiny
configuration (``TINY``, then the settings given) and checked for its slot:

- **attention, norm, mlp, model**: output shape, dtype, device, causality (with and without
  a score bias), finite gradients, determinism under a seed, dropout only in training,
  save/load round trip through safetensors (kennethlm_core.checkpoint); attention also: a
  score bias is taken (``provides={"score_bias"}``) or refused with ValueError; norm and mlp
  also: each position and sequence is processed on its own.
- **posemb**: the same, for ``embed``, ``rotate`` and ``score_bias``; positions do not depend
  on the sequence length; a GPT built with it is causal and trains (finite gradients).
- **optimizer**: a few steps lower a loss; deterministic; parameters stay finite, in their
  dtype and on their device; optimizer state survives a checkpoint round trip.
- **schedule**: the multiplier is finite and in [0, 1] over the whole budget, and lets
  training happen; it is a pure function of (step, progress), so a resumed run gets the same.
- **tokenizer**: exact round trip of Danish text (æøå, newlines, tabs, emoji, unseen
  characters), ids in range, a document token that carries no text, JSON save and restore,
  deterministic training.
- **corpus**: documents are Documents with unique ids, in the same order on every pass, with
  a stable fingerprint.
- **task**: evaluating a tiny untrained run gives a TaskResult of finite metrics, the same
  twice. Set ``data`` and ``limit`` on a subclass to point the task at local files.
- **tweak**: a tiny GPT built with the tweak passes the model checks, differs from a plain
  GPT of the same seed, and learns a simple sequence with AdamW.
- **callback**: a tiny run on the embedded sample trains with it, and a run stopped half
  way and resumed ends exactly like one that was not stopped.

A check that does not apply is not run; a check that fails says which component broke which
rule. Subclass the returned class to add checks of your own, or set ``registry`` to test a
component that is registered by hand rather than installed.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
import signal
import sys
from typing import Any

import pytest
import torch

from kennethlm_core.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from kennethlm_core.components import Document, Metric, PositionalEmbedding, TaskResult, Tokenizer
from kennethlm_core.config import build_config, field_names, resolve
from kennethlm_core.errors import UnknownComponent
from kennethlm_core.hookspecs import SLOTS
from kennethlm_core.model import build_model

TINY = dict(
    n_layer=1,
    n_head=2,
    n_embd=32,
    block_size=16,
    batch_size=4,
    steps=20,
    warmup_steps=2,
    dropout=0.0,
)
SEED = 1234
VOCAB = 50  # vocabulary of the tiny models built around a component

# Original text for the tokenizer round trip: Danish letters, whitespace of every kind, emoji
# (with joiners and flags), and characters no Danish training text is likely to contain.
DANISH = (
    "Blåbærgrøden på Ærø var lunken, men øllet var koldt.",
    "Første linje\nanden linje\n\n\ttredje, med tabulator  og to mellemrum ",
    "Hør her! 🙂🇩🇰 👩‍👩‍👧 — «citat», ½ kop mælk à 12,50 kr.",
    "ÆØÅ æøå Ü é ß ŋ 日本語 ∑ x² \u00a0hårdt mellemrum",
    "  indrykket\r\nmed CRLF\r\n",
    "",
    " ",
    "\n",
)


def tiny_gpt(tweak: str = "", *, seed: int = 0, **settings: Any) -> torch.nn.Module:
    """A TINY GPT of vocabulary VOCAB with ``tweak`` (a name or "qk-norm,softcap"), built from
    the torch seed ``seed`` with the installed plugins, in eval mode: for a tweak's own tests
    against the plain GPT of the same seed (``tiny_gpt("")``)."""
    from kennethlm_core.plugins import get_registry

    registry = get_registry()
    cfg = resolve(build_config(overrides={**TINY, "tweak": tweak, **settings}), registry)
    torch.manual_seed(seed)
    return build_model(cfg, VOCAB, registry).eval()


def conformance(slot: str, name: str, *, registry: Any = None, **settings: Any) -> type:
    """A pytest test class checking component ``name`` of ``slot`` against its slot's rules.

    ``settings`` are run settings (as ``--set`` would give them) for the tiny configuration
    the component is built from; ``registry`` defaults to the installed plugins.
    """
    if slot not in KITS:
        close = difflib.get_close_matches(slot, SLOTS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownComponent(f"unknown slot '{slot}'; {hint}slots: {', '.join(SLOTS)}")
    if registry is None:
        from kennethlm_core.plugins import get_registry

        registry = get_registry()
    registry.get(slot, name)  # an unknown name fails now, at collection, listing known ones
    title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name))
    caller = sys._getframe(1).f_globals.get("__name__", __name__)  # pytest reports it there
    attrs = dict(slot=slot, name=name, settings=settings, registry=registry, __module__=caller)
    return type(f"Test{title}", (KITS[slot],), attrs)


def devices() -> list[str]:
    """The devices torch can use here; every module check runs on each."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


class Conformance:
    """What all kits share: the component under test and the configuration it is built from."""

    slot = ""
    name = ""
    settings: dict[str, Any] = {}
    registry: Any = None  # None: the installed plugins

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _one_thread(cls):
        """The checks use tiny tensors: one thread is fastest, and a busy machine cannot stall
        it the way it stalls threads that wait on each other."""
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    @property
    def reg(self):
        from kennethlm_core.plugins import get_registry

        return self.registry or get_registry()

    @property
    def component(self):
        return self.reg.get(self.slot, self.name)

    @property
    def what(self) -> str:
        return f"{self.slot} '{self.name}'"

    def config(self, **changes: Any):
        chosen = {self.slot: self.name} if self.slot in field_names() else {}
        overrides = {**TINY, **chosen, **self.settings, **changes}
        return resolve(build_config(overrides=overrides), self.reg)

    def sample_texts(self, max_chars: int = 200_000) -> list[str]:
        """Texts of the embedded Danish sample corpus (for training tokenizers)."""
        corpus = self.reg.get("corpus", "sample").factory(self.config())
        texts, total = [], 0
        for doc in corpus.documents():
            texts.append(doc.text)
            total += len(doc.text)
            if total >= max_chars:
                break
        return texts


def lengths(block_size: int) -> list[int]:
    return sorted({1, block_size // 2 + 1, block_size})


def _cast(inputs: tuple, dtype: torch.dtype, device: str) -> tuple:
    return tuple(
        None
        if x is None
        else x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        for x in inputs
    )


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=0, atol=atol)


# -- modules applied to sequences: attention, norm, mlp, model --------------------------------


class ModuleChecks(Conformance):
    """Checks for an ``nn.Module`` applied to sequences, positions along dimension -2 of
    its output. Subclasses say how to build it, what to feed it and how to change the future."""

    def make(self, cfg):
        raise NotImplementedError

    def examples(self, cfg, T: int) -> list[tuple]:
        """Input tuples (float32, on the CPU) for a sequence of length T."""
        raise NotImplementedError

    def change_future(self, inputs: tuple, t: int) -> tuple:
        """The inputs with everything at positions after ``t`` replaced."""
        raise NotImplementedError

    def expected_shape(self, inputs: tuple) -> tuple:
        return tuple(inputs[0].shape)

    def forward(self, module, inputs: tuple) -> torch.Tensor:
        return module(*inputs)

    def build(self, seed: int = SEED, **changes):
        cfg = self.config(**changes)
        torch.manual_seed(seed)
        module = self.make(cfg)
        if module is None:
            pytest.skip(f"{self.what} builds no sublayer (None): there is nothing to check")
        return module

    def test_shapes(self):
        cfg = self.config()
        module = self.build().eval()
        for T in lengths(cfg.block_size):
            for inputs in self.examples(cfg, T):
                y = self.forward(module, inputs)
                assert tuple(y.shape) == self.expected_shape(inputs), (
                    f"{self.what}: output shape {tuple(y.shape)} for inputs of length {T}, "
                    f"expected {self.expected_shape(inputs)}"
                )

    def test_dtype(self):
        cfg = self.config()
        for inputs in self.examples(cfg, cfg.block_size):
            reference = self.forward(self.build().eval(), inputs)
            for dtype in (torch.float32, torch.bfloat16):
                module = self.build().to(dtype).eval()
                y = self.forward(module, _cast(inputs, dtype, "cpu"))
                assert y.dtype == dtype, f"{self.what}: {dtype} in, {y.dtype} out"
                assert torch.isfinite(y).all(), f"{self.what}: non-finite output in {dtype}"
                scale = 1 + reference.abs().max().item()
                assert _close(y, reference, atol=0.05 * scale), (
                    f"{self.what}: its {dtype} output is far from its float32 output"
                )

    def test_device(self):
        cfg = self.config()
        with torch.device("meta"):  # `klm run` builds every model on the meta device first
            self.build()
        for device in devices():
            module = self.build().to(device).eval()
            for inputs in self.examples(cfg, cfg.block_size):
                y = self.forward(module, _cast(inputs, torch.float32, device))
                assert y.device.type == device, (
                    f"{self.what}: inputs on {device}, output on {y.device}"
                )

    def test_causal(self):
        cfg = self.config()
        module = self.build().eval()
        T = cfg.block_size
        for inputs in self.examples(cfg, T):
            y = self.forward(module, inputs)
            for t in (0, T // 2, T - 2):
                y2 = self.forward(module, self.change_future(inputs, t))
                assert _close(y[..., : t + 1, :], y2[..., : t + 1, :]), (
                    f"{self.what} is not causal: positions up to {t} changed when only later "
                    "positions changed"
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
            y = self.forward(module, leaves)
            (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
            grads = [x.grad for x in leaves if x is not None and x.requires_grad]
            grads += [p.grad for p in module.parameters() if p.requires_grad]
            assert any(g is not None and g.abs().sum() > 0 for g in grads), (
                f"{self.what}: no gradient reaches its inputs or parameters"
            )
            for g in grads:
                assert g is None or torch.isfinite(g).all(), f"{self.what}: non-finite gradient"

    def test_deterministic_under_a_seed(self):
        cfg = self.config()
        for inputs in self.examples(cfg, cfg.block_size):
            outputs = []
            for _ in range(2):
                module = self.build(seed=SEED, dropout=0.1).train()
                torch.manual_seed(SEED)
                outputs.append(self.forward(module, inputs))
            assert torch.equal(*outputs), f"{self.what}: the same seed gave different outputs"

    def test_dropout_only_in_training(self):
        cfg = self.config()
        plain = self.build(dropout=0.0).eval()
        dropping = self.build(dropout=0.5).eval()
        for inputs in self.examples(cfg, cfg.block_size):
            assert _close(self.forward(plain, inputs), self.forward(dropping, inputs), 1e-6), (
                f"{self.what}: with dropout set, evaluation (eval mode) gives other outputs"
            )

    def test_save_load_round_trip(self, tmp_path):
        cfg = self.config()
        saved, fresh = self.build(seed=1).eval(), self.build(seed=2).eval()
        save_weights(saved, tmp_path / "weights.safetensors")
        load_weights(fresh, tmp_path / "weights.safetensors")
        for inputs in self.examples(cfg, cfg.block_size):
            assert torch.equal(self.forward(saved, inputs), self.forward(fresh, inputs)), (
                f"{self.what}: a copy loaded from safetensors gives other outputs"
            )


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


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


class ModelChecks(ModuleChecks):
    """``factory(cfg, vocab_size, parts)``; ``forward(idx, targets=None) -> (logits, loss)``."""

    slot = "model"

    def make(self, cfg):
        return build_model(cfg, VOCAB, self.reg)

    def examples(self, cfg, T):
        return [(torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0)),)]

    def change_future(self, inputs, t):
        idx = inputs[0].clone()
        idx[:, t + 1 :] = (idx[:, t + 1 :] + 1) % VOCAB
        return (idx,)

    def expected_shape(self, inputs):
        return (*inputs[0].shape, VOCAB)

    def forward(self, module, inputs):
        return module(*inputs)[0]

    def test_loss(self):
        cfg = self.config()
        model = self.build()
        (idx,) = self.examples(cfg, cfg.block_size)[0]
        logits, loss = model(idx, torch.roll(idx, -1, dims=1))
        assert loss is not None and loss.dim() == 0 and torch.isfinite(loss), (
            f"{self.what}: forward(idx, targets) must return a finite scalar loss"
        )
        assert model(idx)[1] is None, f"{self.what}: without targets the loss must be None"


class TweakChecks(ModelChecks):
    """``factory(model, cfg)``: a GPT built with the tweak passes every model check, differs
    from a plain GPT of the same seed, and still learns.

    A tweak may start parameters at zero (a zero output head gives the same logits for every
    input), so the model checks run on the tweaked GPT with its all-zero parameters given
    small random values; the last two checks use it exactly as built."""

    slot = "tweak"

    def built(self, seed: int = SEED, **changes):
        cfg = self.config(**changes)
        torch.manual_seed(seed)
        return build_model(cfg, VOCAB, self.reg)

    def make(self, cfg):
        model = build_model(cfg, VOCAB, self.reg)
        with torch.no_grad():
            for p in model.parameters():
                if p.device.type != "meta" and p.dim() >= 2 and not p.any():
                    p.normal_(0.0, 0.02)
        return model

    def test_changes_the_model(self):
        cfg = self.config()
        (idx,) = self.examples(cfg, cfg.block_size)[0]
        own = set(self.component.options)  # the tweak's own options mean nothing without it
        plain_cfg = resolve(
            build_config(
                overrides={
                    **TINY,
                    **{k: v for k, v in self.settings.items() if k not in own},
                    "tweak": "",
                }
            ),
            self.reg,
        )
        torch.manual_seed(SEED)
        plain = build_model(plain_cfg, VOCAB, self.reg).eval()
        tweaked = self.built().eval()
        same_weights = tweaked.state_dict().keys() == plain.state_dict().keys() and all(
            torch.equal(a, b)
            for a, b in zip(tweaked.state_dict().values(), plain.state_dict().values(), strict=True)
        )
        assert not (same_weights and torch.equal(tweaked(idx)[0], plain(idx)[0])), (
            f"{self.what}: the tweaked GPT has the same weights and logits as a plain one"
        )

    def test_learns(self):
        cfg = self.config()
        model = self.built().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        start = torch.arange(4).view(4, 1) * 7
        seq = (start + torch.arange(cfg.block_size + 1)) % VOCAB  # each token: the next one
        losses = []
        for _ in range(30):
            _, loss = model(seq[:, :-1], seq[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        assert losses[-1] < losses[0] - 0.1, (
            f"{self.what}: 30 AdamW steps took the loss from {losses[0]:.3f} to {losses[-1]:.3f}"
        )


# -- positional embeddings ----------------------------------------------------------------


class PosembChecks(Conformance):
    """``factory(cfg) -> PositionalEmbedding``: ``embed``, ``rotate`` and ``score_bias``."""

    slot = "posemb"

    def build(self, seed: int = SEED, **changes) -> PositionalEmbedding:
        cfg = self.config(**changes)
        torch.manual_seed(seed)
        pe = self.component.factory(cfg)
        assert isinstance(pe, PositionalEmbedding), (
            f"{self.what}: the factory must return a kennethlm_core.components."
            f"PositionalEmbedding, got {type(pe).__name__}"
        )
        return pe

    def inputs(self, cfg, T: int, dtype=torch.float32, device="cpu"):
        D = cfg.n_embd // cfg.n_head
        x, q, k = (
            _randn(2, T, cfg.n_embd, seed=0),
            *(_randn(2, cfg.n_head, T, D, seed=i) for i in (1, 2)),
        )
        return _cast((x, q, k), dtype, device)

    def apply(self, pe, x, q, k):
        """Everything the embedding does to a sequence: (embedded x, q, k, score bias)."""
        T = x.size(1)
        return (pe.embed(x), *pe.rotate(q, k), pe.score_bias(T, x.device))

    def gpt(self, seed: int = SEED):
        cfg = self.config()
        torch.manual_seed(seed)
        return cfg, build_model(cfg.replace(model="gpt"), VOCAB, self.reg)

    def test_shapes(self):
        cfg = self.config()
        pe = self.build().eval()
        for T in lengths(cfg.block_size):
            x, q, k = self.inputs(cfg, T)
            ex, rq, rk, bias = self.apply(pe, x, q, k)
            assert ex.shape == x.shape, f"{self.what}: embed changed the shape {tuple(x.shape)}"
            assert rq.shape == q.shape and rk.shape == k.shape, (
                f"{self.what}: rotate changed shapes"
            )
            if bias is not None:
                full = (2, cfg.n_head, T, T)
                assert torch.broadcast_shapes(bias.shape, full) == full, (
                    f"{self.what}: score_bias({T}) has shape {tuple(bias.shape)}, "
                    f"not broadcastable to {full}"
                )

    def test_dtype(self):
        cfg = self.config()
        for dtype in (torch.float32, torch.bfloat16):
            pe = self.build().to(dtype).eval()
            outputs = self.apply(pe, *self.inputs(cfg, cfg.block_size, dtype))
            for out in outputs[:3]:
                assert out.dtype == dtype, f"{self.what}: {dtype} in, {out.dtype} out"
            if outputs[3] is not None:
                assert outputs[3].is_floating_point(), f"{self.what}: score_bias is not float"

    def test_device(self):
        cfg = self.config()
        with torch.device("meta"):  # `klm run` builds every model on the meta device first
            self.build()
        for device in devices():
            pe = self.build().to(device).eval()
            for out in self.apply(pe, *self.inputs(cfg, cfg.block_size, device=device)):
                assert out is None or out.device.type == device, (
                    f"{self.what}: inputs on {device}, output on {out.device}"
                )

    def test_causal(self):
        cfg = self.config()
        pe = self.build().eval()
        T = cfg.block_size
        x, q, k = self.inputs(cfg, T)
        whole = self.apply(pe, x, q, k)
        for t in (1, T // 2):
            prefix = self.apply(pe, x[:, :t], q[..., :t, :], k[..., :t, :])
            for name, a, b in zip(("embed", "rotate q", "rotate k"), whole, prefix, strict=False):
                assert _close(a[..., :t, :], b), (
                    f"{self.what}: {name} at the first {t} positions depends on what follows"
                )
            if whole[3] is not None:
                assert _close(whole[3][..., :t, :t], prefix[3]), (
                    f"{self.what}: score_bias({t}) differs from the first {t} rows of "
                    f"score_bias({T})"
                )
        self._gpt_is_causal()

    def _gpt_is_causal(self):
        cfg, model = self.gpt()
        model.eval()
        idx = torch.randint(
            0, VOCAB, (2, cfg.block_size), generator=torch.Generator().manual_seed(0)
        )
        t = cfg.block_size // 2
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % VOCAB
        a, b = model(idx)[0], model(changed)[0]
        assert _close(a[:, : t + 1], b[:, : t + 1]), f"a GPT with {self.what} is not causal"

    def test_finite_gradients(self):
        cfg, model = self.gpt()
        idx = torch.randint(
            0, VOCAB, (2, cfg.block_size), generator=torch.Generator().manual_seed(0)
        )
        _, loss = model(idx, torch.roll(idx, -1, dims=1))
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (
                f"a GPT with {self.what}: non-finite gradient in {name}"
            )
        pe = self.build().train()
        leaves = [t.requires_grad_(True) for t in self.inputs(cfg, cfg.block_size)]
        outputs = self.apply(pe, *leaves)
        sum(out.float().square().sum() for out in outputs if out is not None).backward()
        for t in (*leaves, *pe.parameters()):
            assert t.grad is None or torch.isfinite(t.grad).all(), (
                f"{self.what}: non-finite gradient"
            )

    def test_deterministic_under_a_seed(self):
        cfg = self.config()
        a, b = self.build(seed=SEED), self.build(seed=SEED)
        for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(ta, tb), f"{self.what}: the same seed gave a different {name}"
        inputs = self.inputs(cfg, cfg.block_size)
        for oa, ob in zip(self.apply(a, *inputs), self.apply(b, *inputs), strict=True):
            assert (oa is None and ob is None) or torch.equal(oa, ob), (
                f"{self.what}: the same seed gave different outputs"
            )

    def test_save_load_round_trip(self, tmp_path):
        cfg = self.config()
        saved, fresh = self.build(seed=1).eval(), self.build(seed=2).eval()
        save_weights(saved, tmp_path / "posemb.safetensors")
        load_weights(fresh, tmp_path / "posemb.safetensors")
        inputs = self.inputs(cfg, cfg.block_size)
        for a, b in zip(self.apply(saved, *inputs), self.apply(fresh, *inputs), strict=True):
            assert (a is None and b is None) or torch.equal(a, b), (
                f"{self.what}: a copy loaded from safetensors gives other outputs"
            )


# -- optimizers and schedules -------------------------------------------------------------


class OptimizerChecks(Conformance):
    """``factory(cfg, model) -> torch.optim.Optimizer``, stepped the way the trainer does."""

    slot = "optimizer"
    steps = 30

    def setup(self, seed: int = SEED, device: str = "cpu"):
        cfg = self.config()
        torch.manual_seed(seed)
        model = build_model(cfg, VOCAB, self.reg).to(device)
        optimizer = self.component.factory(cfg, model)
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        return cfg, model, optimizer

    def batch(self, cfg, device: str = "cpu"):
        """A learnable task: each token is followed by the next one (mod VOCAB)."""
        g = torch.Generator().manual_seed(0)
        start = torch.randint(0, VOCAB, (cfg.batch_size, 1), generator=g)
        seq = (start + torch.arange(cfg.block_size + 1)) % VOCAB
        return seq[:, :-1].to(device), seq[:, 1:].to(device)

    def train(self, model, optimizer, batch, steps: int) -> list[float]:
        losses = []
        for _ in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"]  # the trainer: base rate x schedule multiplier
            _, loss = model(*batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    def test_lowers_the_loss(self):
        cfg, model, optimizer = self.setup()
        losses = self.train(model, optimizer, self.batch(cfg), self.steps)
        assert losses[-1] < losses[0] - 0.01, (
            f"{self.what}: {self.steps} steps took the loss from {losses[0]:.4f} to "
            f"{losses[-1]:.4f}"
        )

    def test_parameters_stay_finite_in_dtype_and_device(self):
        for device in devices():
            cfg, model, optimizer = self.setup(device=device)
            before = {n: (p.dtype, p.device) for n, p in model.named_parameters()}
            self.train(model, optimizer, self.batch(cfg, device), 5)
            for n, p in model.named_parameters():
                assert torch.isfinite(p).all(), f"{self.what}: {n} became non-finite"
                assert (p.dtype, p.device) == before[n], f"{self.what}: {n} moved or changed dtype"

    def test_deterministic_under_a_seed(self):
        runs = []
        for _ in range(2):
            cfg, model, optimizer = self.setup(seed=SEED)
            self.train(model, optimizer, self.batch(cfg), 5)
            runs.append(list(model.parameters()))
        for a, b in zip(*runs, strict=True):
            assert torch.equal(a, b), f"{self.what}: the same seed gave different parameters"

    def test_save_load_round_trip(self, tmp_path):
        cfg, model, optimizer = self.setup(seed=1)
        batch = self.batch(cfg)
        self.train(model, optimizer, batch, 3)
        save_checkpoint(tmp_path / "checkpoint.safetensors", model, optimizer, {}, {"step": 3})
        _, model2, optimizer2 = self.setup(seed=2)
        load_checkpoint(tmp_path / "checkpoint.safetensors", model2, optimizer2)
        self.train(model, optimizer, batch, 2)
        self.train(model2, optimizer2, batch, 2)
        for (n, a), b in zip(model.named_parameters(), model2.parameters(), strict=True):
            assert torch.equal(a, b), (
                f"{self.what}: after a checkpoint round trip the next steps differ ({n})"
            )


class ScheduleChecks(Conformance):
    """``factory(cfg) -> f(step, progress) -> multiplier`` of each group's base lr."""

    slot = "schedule"
    max_multiplier = 1.0

    def points(self, cfg) -> list[tuple[int, float]]:
        return [(s, s / cfg.steps) for s in range(cfg.steps + 1)]

    def test_multiplier_in_range(self):
        cfg = self.config(steps=200, warmup_steps=20)
        f = self.component.factory(cfg)
        for step, progress in self.points(cfg):
            m = f(step, progress)
            assert isinstance(m, int | float) and math.isfinite(m), (
                f"{self.what}: f({step}, {progress}) = {m!r} is not a finite number"
            )
            assert 0 <= m <= self.max_multiplier, (
                f"{self.what}: f({step}, {progress:.3f}) = {m} is outside "
                f"[0, {self.max_multiplier}]"
            )

    def test_lets_training_happen(self):
        cfg = self.config(steps=200, warmup_steps=20)
        f = self.component.factory(cfg)
        assert f(cfg.steps // 2, 0.5) > 0, f"{self.what}: the multiplier is 0 half way"

    def test_pure_function_of_step_and_progress(self):
        cfg = self.config(steps=200, warmup_steps=20)
        points = self.points(cfg)
        forward = [self.component.factory(cfg)(s, p) for s, p in points]
        f = self.component.factory(cfg)
        backward = [f(s, p) for s, p in reversed(points)][::-1]
        assert forward == backward, (
            f"{self.what}: the multiplier depends on call order; a resumed run would differ"
        )


# -- tokenizers, corpora, tasks -----------------------------------------------------------


class TokenizerChecks(Conformance):
    """``factory(cfg) -> components.Tokenizer``, trained on the embedded Danish sample."""

    slot = "tokenizer"

    def build(self) -> Tokenizer:
        tok = self.component.factory(self.config())
        assert isinstance(tok, Tokenizer), (
            f"{self.what}: the factory must return a kennethlm_core.components.Tokenizer"
        )
        return tok

    def trained(self) -> Tokenizer:
        tok = self.build()
        tok.train(self.sample_texts())
        return tok

    def texts(self) -> list[str]:
        return [*DANISH, self.sample_texts()[0][:3000]]

    def test_round_trip_of_danish_text(self):
        tok = self.trained()
        for text in self.texts():
            back = tok.decode(tok.encode(text))
            assert back == text, f"{self.what}: {text[:40]!r} came back as {back[:40]!r}"

    def test_ids_in_range(self):
        tok = self.trained()
        assert 0 <= tok.doc_id < tok.vocab_size, f"{self.what}: doc_id outside the vocabulary"
        for text in self.texts():
            ids = tok.encode(text)
            assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids), (
                f"{self.what}: ids outside [0, {tok.vocab_size}) for {text[:40]!r}"
            )
            assert tok.doc_id not in ids, f"{self.what}: text encodes to the document token"

    def test_document_token_carries_no_text(self):
        tok = self.trained()
        for text in self.texts():
            ids = tok.encode(text)
            assert tok.decode([tok.doc_id, *ids]) == text, (
                f"{self.what}: the document token decodes to text"
            )

    def test_json_save_and_restore(self, tmp_path):
        tok = self.trained()
        state = tok.to_json()
        json.loads(state)  # plain JSON: loading a tokenizer never executes code
        restored = self.build()
        restored.restore(state)
        tok.save(tmp_path)
        loaded = self.build()
        loaded.load(tmp_path)
        for other in (restored, loaded):
            assert (other.vocab_size, other.doc_id) == (tok.vocab_size, tok.doc_id)
            assert other.fingerprint() == tok.fingerprint()
            for text in self.texts():
                assert other.encode(text) == tok.encode(text), (
                    f"{self.what}: a restored tokenizer encodes {text[:40]!r} differently"
                )

    def test_deterministic_training(self):
        assert self.trained().to_json() == self.trained().to_json(), (
            f"{self.what}: training twice on the same text gave different tokenizers"
        )

    def test_encode_batch_matches_encode(self):
        tok = self.trained()
        texts = self.texts()
        assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


class CorpusChecks(Conformance):
    """``factory(cfg) -> components.Corpus``: ``documents()`` and ``fingerprint()``."""

    slot = "corpus"
    limit = 500  # documents read per pass

    def documents(self) -> list[Document]:
        corpus = self.component.factory(self.config())
        return list(itertools.islice(corpus.documents(), self.limit))

    def test_documents(self):
        docs = self.documents()
        assert docs, f"{self.what} yields no documents"
        for doc in docs:
            assert isinstance(doc, Document), f"{self.what}: {doc!r} is not a Document"
            assert isinstance(doc.id, str) and doc.id, f"{self.what}: empty or non-str id"
            assert isinstance(doc.text, str) and isinstance(doc.domain, str) and doc.domain
        assert any(doc.text for doc in docs), f"{self.what}: every document is empty"
        ids = [doc.id for doc in docs]
        assert len(set(ids)) == len(ids), f"{self.what}: document ids repeat"

    def test_same_documents_on_every_pass(self):
        assert self.documents() == self.documents(), f"{self.what}: passes differ"

    def test_stable_fingerprint(self):
        a = self.component.factory(self.config()).fingerprint()
        b = self.component.factory(self.config()).fingerprint()
        assert isinstance(a, str) and a and a == b, f"{self.what}: fingerprint not stable"


class TaskChecks(Conformance):
    """``factory(cfg) -> components.Task``, evaluated on a tiny untrained run."""

    slot = "task"
    data: str | None = None  # passed to evaluate(data=...)
    limit: int | None = 8  # passed to evaluate(limit=...)

    def loaded_run(self, directory):
        from kennethlm_core.checkpoint import atomic_write_json
        from kennethlm_core.evaluate import LoadedRun

        cfg = self.config(tokenizer="char")
        tok = self.reg.get("tokenizer", cfg.tokenizer).factory(cfg)
        tok.train(self.sample_texts())
        tok.save(directory / "tokenizer")
        torch.manual_seed(SEED)
        save_weights(build_model(cfg, tok.vocab_size, self.reg), directory / "model.safetensors")
        atomic_write_json(directory / "config.json", cfg.to_dict())
        return LoadedRun(directory, device="cpu", registry=self.reg)

    def evaluate(self, lm) -> TaskResult:
        task = self.component.factory(lm.config)
        return task.evaluate(lm, data=self.data, limit=self.limit)

    def test_result_of_finite_metrics(self, tmp_path):
        result = self.evaluate(self.loaded_run(tmp_path))
        assert isinstance(result, TaskResult), f"{self.what}: evaluate must return a TaskResult"
        assert result.metrics, f"{self.what} reports no metrics"
        for key, m in result.metrics.items():
            assert isinstance(m, Metric) and math.isfinite(m.value), (
                f"{self.what}: metric {key} is {m!r}, not a finite Metric"
            )
            assert m.ci is None or m.ci[0] <= m.ci[1], f"{self.what}: {key} interval reversed"
        json.dumps(result.to_json())  # eval.json must be able to hold it

    def test_deterministic(self, tmp_path):
        lm = self.loaded_run(tmp_path)
        assert self.evaluate(lm).to_json() == self.evaluate(lm).to_json(), (
            f"{self.what}: two evaluations of the same run differ"
        )


# -- training-loop callbacks ------------------------------------------------------------------


class CallbackChecks(Conformance):
    """``factory(cfg) -> components.Callback``: a tiny run on the embedded sample trains with
    it to finite figures, and a run stopped half way and resumed ends exactly like one that
    was not stopped (the callback's state survives the checkpoint)."""

    slot = "callback"

    def run(self, out, stop_at: int | None = None, resume: bool = False) -> dict:
        from kennethlm_core.errors import Interrupted
        from kennethlm_core.train import train

        cfg = self.config(steps=20, eval_every=10, eval_bytes=2048, final_eval_bytes=4096)

        def stop(clock, *rest):
            if clock.step == stop_at:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would: checkpoint, stop

        try:
            return train(cfg, out, registry=self.reg, resume=resume, progress=stop)
        except Interrupted:
            return {}

    def test_is_a_callback(self):
        from kennethlm_core.components import Callback

        made = self.component.factory(self.config())
        assert isinstance(made, Callback), f"{self.what}: factory(cfg) must return a Callback"

    def test_a_run_trains_with_it(self, tmp_path):
        summary = self.run(tmp_path / "run")
        assert math.isfinite(summary["val_bpb"]) and summary["steps"] == 20, (
            f"{self.what}: the run did not train to finite figures"
        )

    def test_a_resumed_run_ends_like_an_uninterrupted_one(self, tmp_path):
        from kennethlm_core.rundir import read_metrics

        straight = self.run(tmp_path / "straight")
        assert self.run(tmp_path / "stopped", stop_at=10) == {}
        resumed = self.run(tmp_path / "stopped", resume=True)

        def figures(run):
            keys = ("step", "lr", "train_loss", "val_bpb")  # not the clock: timings differ
            return [tuple(row[k] for k in keys) for row in read_metrics(run)]

        assert figures(tmp_path / "stopped") == figures(tmp_path / "straight"), (
            f"{self.what}: a resumed run logs other figures than an uninterrupted one; "
            "does state_dict keep everything the callback needs?"
        )
        assert resumed["val_bpb"] == straight["val_bpb"]


KITS: dict[str, type[Conformance]] = {
    "model": ModelChecks,
    "attention": AttentionChecks,
    "posemb": PosembChecks,
    "norm": NormChecks,
    "mlp": MlpChecks,
    "optimizer": OptimizerChecks,
    "schedule": ScheduleChecks,
    "tokenizer": TokenizerChecks,
    "corpus": CorpusChecks,
    "task": TaskChecks,
    "tweak": TweakChecks,
    "callback": CallbackChecks,
}
