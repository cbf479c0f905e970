"""AdamW with decay and no-decay groups, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch


def adamw(cfg, model):
    """Weight decay on matrices (linears, embeddings), none on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = params[0].device.type == "cuda"
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused
    )


def warmup(cfg, step: int) -> float:
    return min(1.0, (step + 1) / (cfg.warmup_steps + 1))


def cosine(cfg):
    """Linear warmup over warmup_steps, cosine from 1 down to min_lr_ratio over the budget."""
    floor = cfg.min_lr_ratio

    def multiplier(step: int, progress: float) -> float:
        decay = floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * min(1.0, progress)))
        return min(warmup(cfg, step), decay)

    return multiplier


def constant(cfg):
    """Linear warmup, then the full learning rate to the end."""
    return lambda step, progress: warmup(cfg, step)
