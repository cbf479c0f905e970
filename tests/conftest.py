"""Shared fixtures: a private token cache, tiny configurations and an in-process `klm`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Under pytest-xdist (`make test` runs two workers) each worker and the `klm` processes it
# starts compute on one thread: two workers with a thread per core each would oversubscribe the
# cores, and threads waiting on a descheduled partner stall for a scheduler tick.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"


def copy_ledger(folder: Path) -> Path:
    """registry.toml and the pages rendered from it (docs/results.md, README.md) copied into
    ``folder``, laid out as in the repository: tests write the copies, never the real ones."""
    import shutil

    for name in ("registry.toml", "README.md", "docs/results.md"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, folder / name)
    return folder / "registry.toml"


@pytest.fixture(scope="session", autouse=True)
def klm_cache(tmp_path_factory):
    """Every test session gets its own token cache, so tests never see a user's cache. The
    workers of one xdist session share it (the cache takes a file lock per entry), so each
    tokenizer is learnt and each split tokenized once per session, not once per worker."""
    if WORKER:
        path = tmp_path_factory.getbasetemp().parent / "klm-cache"
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("klm-cache")
    old = os.environ.get("KLM_CACHE")
    os.environ["KLM_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("KLM_CACHE", None)
    else:
        os.environ["KLM_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def float32_unless_asked():
    """--dtype auto trains in float32 in tests, whatever the CPU: figures compared across
    runs (and across processes) must not depend on a timing probe. tests/test_precision.py
    tests the probe itself."""
    from kennethlm_core.precision import FORCE

    old = os.environ.get(FORCE)
    os.environ[FORCE] = "float32"
    yield
    if old is None:
        os.environ.pop(FORCE, None)
    else:
        os.environ[FORCE] = old


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and other processes on a shared machine cannot
    stall a single thread the way they stall two threads waiting on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def registry():
    from kennethlm_core.plugins import get_registry

    return get_registry()


TINY = dict(
    n_layer=2,
    n_head=2,
    n_embd=32,
    block_size=16,
    batch_size=4,
    steps=20,
    eval_every=10,
    warmup_steps=2,
    eval_bytes=2048,
    final_eval_bytes=4096,
)


def tiny_config(registry, **overrides):
    from kennethlm_core.config import build_config, resolve

    return resolve(build_config(overrides={**TINY, **overrides}), registry)


@pytest.fixture
def klm(capsys):
    """Run the klm CLI in-process: klm(*args) -> (exit code, stdout, stderr)."""
    from kennethlm_core.cli import main

    def run(*args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2, exactly one line on stderr, no traceback, mentioning each needle."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


PYTHON = sys.executable
