"""Precision: float32, or bf16 autocast where the machine is faster with it.

``--dtype float32|bfloat16|float16`` is taken as asked, where the device can: float16 trains
with a gradient scaler (``grad_scaler``: the loss is scaled up before the backward pass so that
small gradients do not underflow float16's narrow range, and a step whose gradients overflowed
is skipped), on a CUDA GPU or a CPU whose torch autocasts to float16 (rarely faster there:
bf16 has float32's range and needs no scaler); elsewhere (MPS) it is refused.
``--dtype auto`` chooses:

- on a CUDA GPU with bf16: bf16 autocast;
- on a CPU: bf16 autocast only where the CPU has bf16 matrix instructions (AMX-BF16 or
  AVX512-BF16 on x86, BF16 on Arm) *and* a probe at the run's own shapes shows it faster:
  a few forward and backward passes of the run's model at the run's context, in each
  precision, timed (the weights, gradients and random state are left as they were). The
  probe's batch is the run's, cut to at most ``PROBE_TOKENS`` tokens: matrices of 2,048 rows
  already show the bf16 units' gain, and a full batch of a large model in eager float32 would
  hold more memory than the compiled run itself. A CPU without such units emulates bf16 in
  software, many times slower than float32, so it is not even probed;
- elsewhere (MPS, other devices): float32.

The choice, its reason and the probe's figures go into summary.json (``precision``). A
resumed run keeps the precision it started with, so it continues exactly. The environment
variable ``KLM_DTYPE_PROBE=bfloat16|float32`` forces the probe's answer (no timing), for tests
and for machines whose timings are too noisy to trust.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kennethlm_core.device import pick_device
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import build_model

BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # /proc/cpuinfo: x86 AMX, x86 AVX-512, Arm
PROBE_MARGIN = 1.10  # bf16 must be at least 10% faster to be chosen
PROBE_STEPS = 3  # timed steps per precision, after one untimed warm-up step
PROBE_TOKENS = 2048  # the probe's batch: the run's rows, cut to this many tokens
FORCE = "KLM_DTYPE_PROBE"


@dataclass
class Precision:
    dtype: str  # float32, bfloat16 or float16
    reason: str
    probe: dict[str, float] | None = None  # seconds per step of each precision, ratio, rows

    def autocast(self, device: torch.device):
        """The context the model's forward passes run in."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.dtype))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 "flags", Arm "Features"); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_units() -> list[str]:
    """The bf16 matrix instructions this CPU has (empty: none, or not known)."""
    if platform.system() == "Darwin":  # Apple silicon from M2 on
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True
            )
            return ["bf16"] if out.stdout.strip() == "1" else []
        except OSError:
            return []
    flags = cpu_flags()
    return [f for f in BF16_FLAGS if f in flags]


def has_bf16_matmul(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU with bf16, a CPU with
    bf16 matrix instructions; elsewhere not known, so no."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_bf16_units())


def check(device: torch.device, dtype: str) -> None:
    """Refuse a precision the device cannot run."""
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"--dtype bfloat16: {torch.cuda.get_device_name(device)} has no bf16; "
            "use --dtype auto or float16"
        )
    if dtype == "bfloat16" and device.type not in ("cuda", "cpu"):
        if not autocasts_to(device, torch.bfloat16):
            raise ConfigError(
                f"--dtype bfloat16: torch {torch.__version__} cannot autocast to bf16 on "
                f"{device.type}; use --dtype float32 or auto"
            )
    if dtype == "bfloat16" and device.type == "cpu" and not cpu_bf16_units():
        warnings.warn(
            "--dtype bfloat16: this CPU has no bf16 matrix instructions, so bf16 is emulated, "
            "many times slower than float32 (--dtype auto chooses float32 here)",
            stacklevel=2,
        )
    if dtype == "float16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(
            f"--dtype float16 trains with a gradient scaler on CUDA GPUs and CPUs, not on "
            f"{device.type}; use --dtype float32 or auto"
        )
    if dtype == "float16" and device.type == "cpu" and not autocasts_to(device, torch.float16):
        raise ConfigError(
            f"--dtype float16: torch {torch.__version__} cannot autocast to float16 on a CPU; "
            "use --dtype bfloat16, float32 or auto"
        )


def autocasts_to(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a matrix product under autocast on ``device`` runs in ``dtype`` (a torch that
    cannot autocast to it warns and computes in float32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device.type, dtype=dtype):
            x = torch.ones(2, 2, device=device)
            return (x @ x).dtype == dtype


def grad_scaler(device: torch.device, dtype: str) -> torch.amp.GradScaler:
    """The training step's gradient scaler: a loss scale for float16, for the others one that
    does nothing (``scale`` returns the loss, ``step`` is the optimizer's)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == "float16")


def synchronize(device: torch.device) -> None:
    """Wait until the device has done the work queued so far: a clock around a GPU's work
    (CUDA or MPS, both asynchronous) reads the time it took only after this."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def choose(
    device: torch.device,
    asked: str,
    model: torch.nn.Module | None = None,
    batch_shape: tuple[int, int] = (1, 1),
    vocab_size: int = 256,
) -> Precision:
    """The precision a run trains and evaluates in (see the module docstring)."""
    if asked != "auto":
        check(device, asked)
        return Precision(asked, "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bfloat16", "a CUDA GPU with bf16")
        return Precision("float32", "a CUDA GPU without bf16")
    if device.type != "cpu":
        return Precision("float32", f"{device.type}: float32 unless asked")
    units = cpu_bf16_units()
    if not units:
        return Precision("float32", "this CPU has no bf16 matrix instructions")
    forced = os.environ.get(FORCE, "")
    if forced:
        if forced not in ("bfloat16", "float32"):
            raise ConfigError(f"{FORCE} must be bfloat16 or float32, got {forced!r}")
        return Precision(forced, f"{FORCE}={forced} (the probe's answer, forced)")
    if model is None:
        return Precision("float32", "no model to probe")
    shape = probe_shape(batch_shape)
    fp32 = time_step(model, shape, vocab_size, device, "float32")
    bf16 = time_step(model, shape, vocab_size, device, "bfloat16")
    probe = {"float32_s": fp32, "bfloat16_s": bf16, "speedup": fp32 / bf16, "rows": shape[0]}
    units_text = ", ".join(units)
    if fp32 >= PROBE_MARGIN * bf16:
        reason = f"{units_text}; the probe's step is {fp32 / bf16:.2f}x faster in bf16"
        return Precision("bfloat16", reason, probe)
    reason = f"{units_text}, but the probe's step is only {fp32 / bf16:.2f}x as fast in bf16"
    return Precision("float32", reason, probe)


def probe_shape(batch_shape: tuple[int, int]) -> tuple[int, int]:
    """The probe's batch: the run's context, and its rows cut to ``PROBE_TOKENS`` tokens (one
    row where the context alone is longer)."""
    rows, context = batch_shape
    return min(rows, max(1, PROBE_TOKENS // context)), context


def time_step(
    model: torch.nn.Module,
    batch_shape: tuple[int, int],
    vocab_size: int,
    device: torch.device,
    dtype: str,
    steps: int = PROBE_STEPS,
) -> float:
    """Seconds per forward and backward pass of ``model`` on a random batch, in ``dtype``.

    The model's gradients and the random state are restored; the weights never change (no
    optimizer step)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, batch_shape, generator=generator).to(device)
    y = torch.randint(0, vocab_size, batch_shape, generator=generator).to(device)
    context = Precision(dtype, "probe").autocast(device)
    rng = torch.get_rng_state()
    grads = {p: p.grad for p in model.parameters()}
    was_training = model.training
    model.train()
    try:
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            with context:
                _, loss = model(x, y)
            loss.backward()
            synchronize(device)
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    finally:
        for p, g in grads.items():
            p.grad = g
        torch.set_rng_state(rng)
        model.train(was_training)
    return min(times[1:])


@contextlib.contextmanager
def one_answer(cfg: Any, registry: Any, vocab_size: int, log=lambda message: None):
    """Within the block, every ``--dtype auto`` run of this process and its subprocesses gets
    the same answer: the probe's, taken once here on ``cfg``'s model (a comparison's arms and
    seeds must not differ in precision because one probe was timed under more load)."""

    old = os.environ.get(FORCE)
    device = pick_device(cfg.device)
    if cfg.dtype == "auto" and device.type == "cpu" and old is None:
        torch.manual_seed(0)
        model = build_model(cfg, vocab_size, registry).to(device)
        chosen = choose(device, "auto", model, (cfg.batch_size, cfg.block_size), vocab_size)
        os.environ[FORCE] = chosen.dtype
        log(f"precision for every run: {chosen.dtype} ({chosen.reason})")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(FORCE, None)
        else:
            os.environ[FORCE] = old
