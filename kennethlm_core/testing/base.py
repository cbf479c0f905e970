"""What every kit stands on: the tiny configuration components are built from (``TINY``,
``SEED``, ``VOCAB``), ``tiny_gpt`` for a tweak's own tests, the devices to check on, the base
class ``Conformance`` and the small tensor helpers the module kits share."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kennethlm_core.config import build_config, field_names, resolve
from kennethlm_core.model import build_model
from kennethlm_core.plugins import get_registry

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


def tiny_gpt(tweak: str = "", *, seed: int = 0, **settings: Any) -> torch.nn.Module:
    """A TINY GPT of vocabulary VOCAB with ``tweak`` (a name or "qk-norm,softcap"), built from
    the torch seed ``seed`` with the installed plugins, in eval mode: for a tweak's own tests
    against the plain GPT of the same seed (``tiny_gpt("")``)."""
    registry = get_registry()
    cfg = resolve(build_config(overrides={**TINY, "tweak": tweak, **settings}), registry)
    torch.manual_seed(seed)
    return build_model(cfg, VOCAB, registry).eval()


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


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
