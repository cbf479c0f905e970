"""wsd: the conformance kit and the three phases."""

import pytest

from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestWsd = conformance("schedule", "wsd")
TestWsdFractions = conformance("schedule", "wsd", wsd_warmup=0.1, wsd_decay=0.5, wsd_floor=0.1)


def wsd(**overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={"schedule": "wsd", **overrides}), registry)
    return registry.get("schedule", "wsd").factory(cfg)


def test_warmup_stable_decay_with_the_run_warmup():
    f = wsd(steps=1000, warmup_steps=99)
    at = lambda s: f(s, s / 1000)  # noqa: E731
    assert at(0) == pytest.approx(0.01) and at(49) == pytest.approx(0.5)
    assert at(99) == at(500) == at(800) == 1.0  # the stable phase, up to the last 20%
    assert at(900) == pytest.approx(0.5)
    assert at(1000) == 0.0


def test_fractions_and_floor():
    f = wsd(steps=100, wsd_warmup=0.1, wsd_decay=0.5, wsd_floor=0.2)
    assert f(0, 0.05) == pytest.approx(0.5)  # warmup by progress, not by warmup_steps
    assert f(0, 0.1) == f(0, 0.5) == 1.0
    assert f(0, 0.75) == pytest.approx(0.6)
    assert f(0, 1.0) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "bad", [dict(wsd_decay=1.5), dict(wsd_warmup=0.6, wsd_decay=0.6), dict(wsd_floor=2.0)]
)
def test_impossible_fractions_are_refused(bad):
    with pytest.raises(ConfigError, match="wsd"):
        wsd(**bad)
