"""Sparsity schedules of incremental pruning: a stepwise list, or the gradual cubic schedule of Zhu & Gupta.

A schedule turns a target sparsity ``S`` into the sparsities ``S_1 .. S_n`` of the pruning iterations; the last one
is always the target (a schedule that never reaches it is a :class:`ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass

from coinference.errors import ConfigError

SCHEDULE_KINDS = ("cubic", "step")
_TOL = 1e-9


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """``value`` as a float if it lies in [0, 1); a :class:`ConfigError` naming it otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= v < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {value}")
    return v


@dataclass(frozen=True)
class Schedule:
    """How the channel sparsity rises over the pruning iterations.

    ``cubic``: ``S_i = S + (S_0 - S) * (1 - i / n) ** 3`` for ``i = 1 .. n`` (Zhu & Gupta 2017, with the
    iterations as time steps): large steps first, while the network is most redundant, small ones near the target.
    ``step``: the explicit list ``steps`` (absolute sparsities, non-decreasing, the last equal to the target); an
    empty list means ``n`` equal steps ``S * i / n``.
    """

    kind: str = "cubic"
    """"cubic" or "step"."""
    iterations: int = 4
    """Number of pruning iterations ``n`` (cubic, and step with an empty list)."""
    steps: tuple[float, ...] = ()
    """Step schedule: the sparsity of each iteration, in order (overrides ``iterations``)."""
    initial: float = 0.0
    """Cubic schedule: the sparsity ``S_0`` before the first iteration."""

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"schedule {self.kind!r} unknown; valid: {', '.join(SCHEDULE_KINDS)}")
        if self.iterations < 1:
            raise ConfigError(f"schedule needs at least 1 iteration, got {self.iterations}")
        object.__setattr__(self, "steps", tuple(float(s) for s in self.steps))
        for s in self.steps:
            check_sparsity(s, "schedule step")
        if any(b < a - _TOL for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ConfigError(f"schedule steps must be non-decreasing, got {list(self.steps)}")
        check_sparsity(self.initial, "initial sparsity")

    @property
    def n_iterations(self) -> int:
        """How many pruning iterations the schedule runs."""
        return len(self.steps) if self.kind == "step" and self.steps else self.iterations

    def sparsities(self, target: float) -> tuple[float, ...]:
        """Channel sparsity ``S_i`` of each iteration for the final ``target``; the last equals ``target``.

        Raises:
            ConfigError: ``target`` is outside [0, 1), a step list ends below or rises above it, or the cubic
                schedule starts above it.
        """
        target = check_sparsity(target, "target sparsity")
        n = self.n_iterations
        if self.kind == "cubic":
            if self.initial > target + _TOL:
                raise ConfigError(f"cubic schedule starts at {self.initial}, above the target {target}")
            return tuple(target + (self.initial - target) * (1 - i / n) ** 3 for i in range(1, n + 1))
        if not self.steps:
            return tuple(target * i / n for i in range(1, n + 1))
        if abs(self.steps[-1] - target) > _TOL:
            above = [s for s in self.steps if s > target + _TOL]
            why = f"goes above it ({above[0]})" if above else f"ends at {self.steps[-1]}"
            raise ConfigError(f"schedule {list(self.steps)} never reaches the target sparsity {target}: {why}")
        return (*self.steps[:-1], target)

    def progress(self, target: float) -> tuple[float, ...]:
        """Fraction of the way to ``target`` at each iteration, in (0, 1], ending at 1.

        Used to ramp the activation sparsity along with the channel sparsity; with ``target == 0`` it is the
        linear ramp ``i / n``.
        """
        s = self.sparsities(target)
        if target <= 0:
            return tuple(i / len(s) for i in range(1, len(s) + 1))
        return tuple(v / target for v in s)


def as_schedule(value: Schedule | str) -> Schedule:
    """A :class:`Schedule` from itself or its kind's name (``"cubic"``, ``"step"``) with default settings."""
    return value if isinstance(value, Schedule) else Schedule(kind=value)
