"""The kits for the training loop's slots: optimizer, schedule and callback."""

from __future__ import annotations

import math
import os
import signal

import torch

from kennethlm_core.checkpoint import load_checkpoint, save_checkpoint
from kennethlm_core.components import Callback
from kennethlm_core.errors import Interrupted
from kennethlm_core.model import build_model
from kennethlm_core.rundir import read_metrics
from kennethlm_core.testing.base import SEED, VOCAB, Conformance, devices
from kennethlm_core.train import train


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


class CallbackChecks(Conformance):
    """``factory(cfg) -> components.Callback``: a tiny run on the embedded sample trains with
    it to finite figures, and a run stopped half way and resumed ends exactly like one that
    was not stopped (the callback's state survives the checkpoint)."""

    slot = "callback"

    def run(self, out, stop_at: int | None = None, resume: bool = False) -> dict:
        cfg = self.config(steps=20, eval_every=10, eval_bytes=2048, final_eval_bytes=4096)

        def stop(clock, *rest):
            if clock.step == stop_at:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would: checkpoint, stop

        try:
            return train(cfg, out, registry=self.reg, resume=resume, progress=stop)
        except Interrupted:
            return {}

    def test_is_a_callback(self):
        made = self.component.factory(self.config())
        assert isinstance(made, Callback), f"{self.what}: factory(cfg) must return a Callback"

    def test_a_run_trains_with_it(self, tmp_path):
        summary = self.run(tmp_path / "run")
        assert math.isfinite(summary["val_bpb"]) and summary["steps"] == 20, (
            f"{self.what}: the run did not train to finite figures"
        )

    def test_a_resumed_run_ends_like_an_uninterrupted_one(self, tmp_path):
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
