"""The training batches: the weight of each domain (``--mix``: explicit weights,
``temperature=A`` or each domain's share of the tokens) and the random windows drawn by them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kennethlm_core.config import mix_temperature, parse_mix
from kennethlm_core.data.tokens import TokenSplit
from kennethlm_core.errors import DataError

# -- the training mix ------------------------------------------------------------------------


def mix_weights(mix: str, split: TokenSplit, block_size: int) -> dict[str, float]:
    """The weight of every domain in the training batches, normalised.

    ``mix`` is "books=0.5,speech=0.3,wiki=0.2" (domains left out get 0), "temperature=A"
    (each domain's share of the training tokens to the power A, renormalised: 1 natural, 0
    uniform) or "" for each domain's share of the training tokens. Only domains with room for
    a window get weight. Weights given that already sum to 1 (within 1e-4) are kept as they
    are, others rounded as format_mix records them, so that the recorded mix reproduces itself
    exactly. Validation never depends on the mix: every domain is scored, whatever its weight.
    """
    available = split.domain_tokens()
    usable = available > block_size  # room for at least one window of block_size + 1 tokens
    alpha = mix_temperature(mix)
    if alpha is not None:
        share = np.where(usable, available, 0) / max(1, available[usable].sum())
        weights = np.where(usable, share**alpha, 0.0)
    elif mix:
        asked = parse_mix(mix)
        unknown = [d for d in asked if d not in split.domains]
        if unknown:
            raise DataError(
                f"--mix names domain '{unknown[0]}', which this corpus does not have; "
                f"its domains: {', '.join(split.domains)}"
            )
        weights = np.array([asked.get(d, 0.0) for d in split.domains])
        for d, name in enumerate(split.domains):
            if weights[d] > 0 and not usable[d]:
                raise DataError(
                    f"domain '{name}' has {available[d]} training tokens, too few for one window "
                    f"of block_size {block_size}; leave it out of --mix or lower --block-size"
                )
    else:
        weights = np.where(usable, available, 0).astype(np.float64)
    if weights.sum() <= 0:
        raise DataError(
            f"the training split has {len(split.tokens)} tokens, too few for one window of "
            f"block_size {block_size} in any domain; use a bigger corpus or a smaller --block-size"
        )
    if abs(weights.sum() - 1) > 1e-4 or alpha is not None:  # computed: as config.json has them
        weights = np.array([float(f"{w:.6g}") for w in weights / weights.sum()])
    return dict(zip(split.domains, weights.tolist(), strict=True))


def format_mix(weights: dict[str, float]) -> str:
    """{"books": 0.5, "speech": 0.5} -> "books=0.5,speech=0.5" (what config.json records)."""
    return ",".join(f"{d}={w:.6g}" for d, w in weights.items())


# -- batches -------------------------------------------------------------------------------


class Batches:
    """Random training windows: x is block_size tokens, y the same shifted by one.

    Each window picks a domain by ``weights`` (one per domain of the split; default: each
    domain's share of the tokens), then a uniform start inside that domain's tokens, so a
    window never crosses domains. The order comes from its own generator, seeded by the run's
    seed: the same for every arm of a comparison, and saved in checkpoints.
    """

    def __init__(
        self,
        split: TokenSplit,
        block_size: int,
        batch_size: int,
        seed: int,
        device,
        weights: Sequence[float] | None = None,
    ):
        if weights is None:
            weights = list(mix_weights("", split, block_size).values())
        starts = split.domain_starts()
        windows = split.domain_tokens() - block_size  # possible start positions per domain
        self.tokens, self.T, self.B, self.device = split.tokens, block_size, batch_size, device
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.first = torch.from_numpy(starts)
        self.windows = torch.from_numpy(np.maximum(windows, 0))
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.generator
        dom = torch.multinomial(self.weights, self.B, replacement=True, generator=g)
        at = torch.rand(self.B, generator=g, dtype=torch.float64) * self.windows[dom]
        starts = (self.first[dom] + at.long()).numpy()
        window = self.tokens[starts[:, None] + self.offsets].astype(np.int64)
        xy = torch.from_numpy(window)
        if self.device.type == "cuda":
            xy = xy.pin_memory().to(self.device, non_blocking=True)
        else:
            xy = xy.to(self.device)
        return xy[:, :-1], xy[:, 1:]

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
