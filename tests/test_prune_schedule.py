from __future__ import annotations

import itertools

import pytest

from coinference.errors import ConfigError
from coinference.prune import PruneConfig, Schedule, TwoStepConfig


@pytest.mark.parametrize("target", [0.25, 0.5, 0.75, 0.0])
def test_cubic_rises_to_target(target: float) -> None:
    s = Schedule("cubic", iterations=5).sparsities(target)
    assert len(s) == 5 and s[-1] == pytest.approx(target, abs=1e-12)
    assert all(b >= a for a, b in itertools.pairwise(s))
    if target > 0:  # Zhu & Gupta: the big steps come first
        steps = [b - a for a, b in zip((0.0, *s), s, strict=False)]
        assert steps[0] > steps[-1] > 0


def test_step_list_and_even_steps() -> None:
    assert Schedule("step", steps=(0.2, 0.4, 0.5)).sparsities(0.5) == (0.2, 0.4, 0.5)
    assert Schedule("step", iterations=4).sparsities(0.8) == pytest.approx((0.2, 0.4, 0.6, 0.8))
    assert Schedule("step", steps=(0.25, 0.5)).progress(0.5) == (0.5, 1.0)
    assert Schedule("cubic", iterations=2).progress(0.0) == (0.5, 1.0)


def test_schedule_that_never_reaches_target_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"never reaches the target sparsity 0.75: ends at 0.5"):
        Schedule("step", steps=(0.25, 0.5)).sparsities(0.75)
    with pytest.raises(ConfigError, match=r"never reaches the target sparsity 0.5: goes above it \(0.6\)"):
        Schedule("step", steps=(0.25, 0.6)).sparsities(0.5)
    with pytest.raises(ConfigError, match="never reaches the target sparsity 0.75"):
        PruneConfig(sparsity=0.75, schedule=Schedule("step", steps=(0.25, 0.5)))
    with pytest.raises(ConfigError, match=r"non-decreasing, got \[0.5, 0.25\]"):
        Schedule("step", steps=(0.5, 0.25))
    with pytest.raises(ConfigError, match="at least 1 iteration, got 0"):
        Schedule("cubic", iterations=0)
    with pytest.raises(ConfigError, match="schedule 'linear' unknown"):
        PruneConfig(schedule="linear")


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_sparsity_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ConfigError, match=rf"sparsity must be in \[0, 1\), got {bad}"):
        PruneConfig(sparsity=bad)
    with pytest.raises(ConfigError, match=rf"activation sparsity must be in \[0, 1\), got {bad}"):
        PruneConfig(activation_sparsity=bad)
    with pytest.raises(ConfigError, match=str(bad)):
        TwoStepConfig(activation_sparsity=bad)
    with pytest.raises(ConfigError, match=str(bad)):
        Schedule("step", steps=(0.1, bad))


def test_config_accepts_schedule_by_name() -> None:
    cfg = PruneConfig(sparsity=0.5, schedule="step")
    assert cfg.plan_schedule == Schedule("step") and cfg.plan_schedule.sparsities(0.5)[-1] == 0.5
    with pytest.raises(ConfigError, match="residual rule 'half' unknown"):
        PruneConfig(residual="half")
