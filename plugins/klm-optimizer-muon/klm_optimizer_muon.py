"""Muon (Keller Jordan et al., 2024): orthogonalised momentum for the hidden weight matrices.

For each 2-D weight matrix inside the transformer blocks (attention and MLP projections),
Muon keeps a momentum buffer like SGD, but instead of stepping along the momentum M it steps
along the nearest semi-orthogonal matrix, U V^T where M = U S V^T: every singular direction
of the update gets the same size. U V^T is approximated without an SVD by a few steps of a
Newton-Schulz iteration X <- a X + b (X X^T) X + c (X X^T)^2 X, started from M / ||M||, whose
odd polynomial pushes every singular value towards 1 (the coefficients are chosen to do this
fast rather than exactly: the result has singular values roughly in [0.7, 1.2]).

Everything else (the token embedding and the tied output head, learned positions, norm
gains, biases) is not a hidden matrix and is trained with AdamW, as in the ``adamw``
optimizer. One optimizer holds both kinds of group, so the trainer's schedule and the
checkpoint treat it like any other: each group has its own base lr (``muon_lr`` for the
matrices, ``lr`` for the rest, except that ``muon_embed_lr`` and ``muon_head_lr``, when not 0,
give the token tables and an untied head rates of their own, as the speedruns do).
"""

from __future__ import annotations

import math

import torch
from torch.optim.adamw import adamw

from kennethlm_core import hookimpl, precision
from kennethlm_core.errors import ConfigError

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic of the Muon write-up
FUSED_DEVICES = ("cpu", "cuda")  # where torch has a fused AdamW kernel


def orthogonalise(
    g: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """An approximation of U V^T for g = U S V^T, by Newton-Schulz iteration in ``dtype``.
    ``g`` is one matrix (m, n) or a stack of same-shape matrices (k, m, n), each orthogonalised
    on its own: one batched matrix product per step instead of k small ones. The iteration is
    built to tolerate bfloat16 (torch.optim.Muon always runs it so), which is several times
    faster where the hardware multiplies bf16 matrices."""
    a, b, c = NS_COEFFICIENTS
    one = g.dim() == 2
    x = (g.unsqueeze(0) if one else g).to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: X X^T is then the smaller square
        x = x.mT
    # Frobenius norm >= spectral norm: singular values now <= 1
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G G
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b G + c G G) X
    if tall:
        x = x.mT
    return (x[0] if one else x).to(g.dtype)


def ns_dtype(setting: str, device: torch.device) -> str:
    """The Newton-Schulz precision for ``muon_ns_dtype``: float32, bfloat16, or auto, which is
    bfloat16 where ``device`` has bf16 matrix units (a CUDA GPU with bf16, a CPU with AMX,
    AVX512-BF16 or Arm BF16) and float32 elsewhere (a CPU without them emulates bf16 slowly)."""
    if setting == "auto":
        setting = "bfloat16" if precision.has_bf16_matmul(device) else "float32"
    if setting not in ("float32", "bfloat16"):
        raise ConfigError(
            f"muon_ns_dtype must be float32, bfloat16 or auto, got {setting!r}; "
            "try --set muon_ns_dtype=auto"
        )
    return setting


class Muon(torch.optim.Optimizer):
    """Muon for groups with ``muon=True``, AdamW for the others."""

    def __init__(
        self, groups, *, lr, momentum, nesterov, ns_steps, betas, eps, weight_decay,
        ns_dtype="float32",
    ):  # fmt: skip
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            muon=False,
        )
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def _muon(self, group):
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else bufs
        dtype = getattr(torch, group.get("ns_dtype", "float32"))  # older checkpoints: float32
        shapes: dict[torch.Size, list[int]] = {}
        for i, p in enumerate(params):  # the matrices of one shape are orthogonalised together
            shapes.setdefault(p.shape, []).append(i)
        for shape, index in shapes.items():
            same = [params[i] for i in index]
            stack = torch.stack([updates[i] for i in index])
            update = orthogonalise(stack, group["ns_steps"], dtype=dtype)
            # U V^T has RMS 1/sqrt(max side); this makes tall and wide matrices move alike
            scale = math.sqrt(max(1.0, shape[0] / shape[1]))
            if wd:
                torch._foreach_mul_(same, 1 - lr * wd)
            torch._foreach_add_(same, list(update.unbind(0)), alpha=-lr * scale)

    def _adamw(self, group):
        """torch's AdamW, in its fused kernel (one pass over each tensor) where it has one."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        states = [self.state[p] for p in params]
        # the step count stays an int (as checkpoints keep it); adamw counts on tensors
        counts = [
            torch.tensor(float(s["step"]), device=p.device)
            for s, p in zip(states, params, strict=True)
        ]
        beta1, beta2 = group["betas"]
        adamw(
            params, [p.grad for p in params], [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states], [], counts,
            fused=all(p.device.type in FUSED_DEVICES for p in params), amsgrad=False,
            beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False,
        )  # fmt: skip
        for state in states:
            state["step"] += 1


def is_hidden_matrix(name: str, p: torch.nn.Parameter, model: torch.nn.Module) -> bool:
    """A 2-D weight inside the network, not an embedding or the output head."""
    if p.dim() != 2:
        return False
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None:
        embeddings.add(id(head.weight))
    return id(p) not in embeddings


def make(cfg, model):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if is_hidden_matrix(n, p, model)]
    other = [p for n, p in named if not is_hidden_matrix(n, p, model)]
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "lm_head", None)
    untied = head is not None and id(head.weight) not in embeddings
    head_ids = {id(head.weight)} if untied else set()
    rate = {  # AdamW's lr for token tables and an untied head; 0: lr
        "embed": float(cfg.get("muon_embed_lr")) or cfg.lr,
        "head": float(cfg.get("muon_head_lr")) or cfg.lr,
    }
    matrices = [p for p in other if p.dim() >= 2 and id(p) not in embeddings | head_ids]
    groups = [  # AdamW groups first: the trainer logs the first group's lr
        {"params": matrices, "weight_decay": cfg.weight_decay},
        {"params": [p for p in other if id(p) in embeddings], "lr": rate["embed"],
         "weight_decay": cfg.weight_decay},
        {"params": [p for p in other if id(p) in head_ids], "lr": rate["head"],
         "weight_decay": cfg.weight_decay},
        {"params": [p for p in other if p.dim() < 2], "weight_decay": 0.0},
        {
            "params": hidden,
            "muon": True,
            "lr": float(cfg.get("muon_lr")),
            "weight_decay": float(cfg.get("muon_weight_decay")),
        },
    ]  # fmt: skip
    return Muon(
        [g for g in groups if g["params"]],
        lr=cfg.lr,
        momentum=float(cfg.get("muon_momentum")),
        nesterov=True,
        ns_steps=int(cfg.get("muon_ns_steps")),
        betas=(cfg.beta1, cfg.beta2),
        eps=1e-8,
        weight_decay=cfg.weight_decay,
        ns_dtype=ns_dtype(str(cfg.get("muon_ns_dtype")), next(model.parameters()).device),
    )


@hookimpl
def klm_register_optimizer(register):
    register(
        "muon",
        make,
        "Muon: orthogonalised momentum for hidden matrices, AdamW for embeddings, head, gains",
        options={
            "muon_lr": 0.02,
            "muon_momentum": 0.95,
            "muon_ns_steps": 5,
            "muon_ns_dtype": "float32",
            "muon_weight_decay": 0.0,
            "muon_embed_lr": 0.0,
            "muon_head_lr": 0.0,
        },
    )
