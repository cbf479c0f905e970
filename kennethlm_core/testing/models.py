"""The kits for whole models: a model (``ModelChecks``, the module checks on a GPT's logits,
and its loss) and a tweak (``TweakChecks``, the model checks on a GPT built with it)."""

from __future__ import annotations

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.model import build_model
from kennethlm_core.testing.base import SEED, TINY, VOCAB
from kennethlm_core.testing.modules import ModuleChecks


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
