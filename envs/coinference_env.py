"""``CoInference-v0``: choose a co-inference variant for the edge environment at hand.

Each episode is one decision (a contextual bandit): ``reset`` samples an edge environment (link bandwidth,
device speed, device memory, accuracy floor) from an :class:`EdgeDistribution`; the action picks one level per
search-space dimension (split, sparsity, ratio[, bits, activation sparsity]); ``step`` measures that variant
through the injected evaluator and ends the episode.

Reward: ``-min(latency / device_only_latency, latency_clip)`` when the variant's accuracy reaches the floor and
its device memory fits; ``-penalty`` otherwise (also for a failed build or an invalid level combination).
``device_only_latency`` = the whole model's MACs on this episode's device, so the reward is comparable across
devices. Observations are the four edge quantities scaled to [0, 1] (log scale for the rates and memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from coinference.errors import ConfigError
from coinference.latency import SERVERS, DeviceProfile, Link, ServerProfile, end_to_end, feasible
from coinference.variant import Measurement, VariantSpec


class VariantGrid(Protocol):
    """What the env needs of a search space (``search.space.SearchSpace`` provides it)."""

    @property
    def sizes(self) -> tuple[int, ...]: ...
    def valid(self, index: Sequence[int]) -> bool: ...
    def spec(self, index: Sequence[int]) -> VariantSpec: ...
    def action_mask(self) -> np.ndarray: ...


EnvEvaluator = Callable[[VariantSpec], Measurement | None]
"""Measures a variant; None when its build failed."""


@dataclass(frozen=True)
class EdgeDistribution:
    """Where each episode's edge environment is drawn from: log-uniform ranges and a uniform floor range."""

    bandwidth_bytes_per_s: tuple[float, float] = (1e3, 1e6)
    """Link payload rate range, bytes/s (1 KB/s … 1 MB/s)."""
    device_macs_per_s: tuple[float, float] = (1.2e8, 1.2e10)
    """Device speed range, MAC/s (an MCU … a Raspberry Pi 3)."""
    memory_bytes: tuple[float, float] = (2.0**17, 2.0**30)
    """Device memory range, bytes (128 KiB … 1 GiB)."""
    accuracy_floor: tuple[float, float] = (0.5, 0.9)
    """Accuracy floor range, in [0, 1]."""
    rtt_s: float = 0.0
    """Round-trip time added to every inference, seconds."""
    symbols_per_bit: float = 1.0
    """Real channel uses per second the link carries per bit/s of its rate, for analog JSCC variants (1: as many
    real symbols as bits, the count by which the search space and the Pareto front weigh a channel use)."""
    server: ServerProfile = field(default_factory=lambda: SERVERS.get("rtx2080ti"))
    """The edge server."""

    def __post_init__(self) -> None:
        for name in ("bandwidth_bytes_per_s", "device_macs_per_s", "memory_bytes"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"edge distribution {name} must satisfy 0 < low ≤ high, got {(lo, hi)}")
        if not self.symbols_per_bit > 0:
            raise ConfigError(f"edge distribution symbols_per_bit must be > 0, got {self.symbols_per_bit}")
        lo, hi = self.accuracy_floor
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"accuracy floor range must lie in [0, 1], got {(lo, hi)}")


_KEYS = ("bandwidth_bytes_per_s", "device_macs_per_s", "memory_bytes", "accuracy_floor")


class CoInferenceEnv(gym.Env[np.ndarray, np.ndarray]):
    """One-step env: observation = edge environment, action = variant cell, reward = −normalised latency.

    Args:
        space: the variant grid (sizes, validity, cell → spec).
        evaluator: measures a spec (real builder, cached table, or a stored-measurement lookup).
        reference_macs: MACs of the whole model (normalises latency); default ``space.total_macs``.
        edge: the per-episode distribution of edge environments.
        penalty: reward magnitude of an infeasible, failed or invalid choice.
        latency_clip: largest normalised latency rewarded as such (below the penalty).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(
        self,
        space: VariantGrid,
        evaluator: EnvEvaluator,
        reference_macs: float | None = None,
        edge: EdgeDistribution | None = None,
        penalty: float = 2.0,
        latency_clip: float = 1.5,
    ) -> None:
        ref = reference_macs if reference_macs is not None else getattr(space, "total_macs", None)
        if not ref or ref <= 0:
            raise ConfigError("CoInference-v0 needs reference_macs > 0 (the whole model's MACs)")
        if not 0 < latency_clip < penalty:
            raise ConfigError(f"need 0 < latency_clip < penalty, got {latency_clip} and {penalty}")
        self.grid = space
        self.evaluator = evaluator
        self.reference_macs = float(ref)
        self.edge = edge or EdgeDistribution()
        self.penalty = float(penalty)
        self.latency_clip = float(latency_clip)
        self.action_space = spaces.MultiDiscrete(list(space.sizes))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
        self._mask = np.asarray(space.action_mask(), dtype=bool)
        self._state: dict[str, float] = {}

    # ------------------------------------------------------------------------------------- sampling
    def _ranges(self) -> list[tuple[float, float, bool]]:
        e = self.edge
        return [
            (*e.bandwidth_bytes_per_s, True),
            (*e.device_macs_per_s, True),
            (*e.memory_bytes, True),
            (*e.accuracy_floor, False),
        ]

    def _obs(self) -> np.ndarray:
        out = []
        for key, (lo, hi, log) in zip(_KEYS, self._ranges(), strict=True):
            v = self._state[key]
            if log:
                lo, hi, v = math.log(lo), math.log(hi), math.log(v)
            out.append(0.5 if hi == lo else (v - lo) / (hi - lo))
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Sample an edge environment; ``options`` may fix any of bandwidth_bytes_per_s, device_macs_per_s,
        memory_bytes, accuracy_floor."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - set(_KEYS)
        if unknown:
            raise ConfigError(f"unknown reset options {sorted(unknown)}; valid: {', '.join(_KEYS)}")
        for key, (lo, hi, log) in zip(_KEYS, self._ranges(), strict=True):
            if key in options:
                self._state[key] = float(options[key])
            elif log:
                self._state[key] = float(math.exp(self.np_random.uniform(math.log(lo), math.log(hi))))
            else:
                self._state[key] = float(self.np_random.uniform(lo, hi))
        return self._obs(), dict(self._state)

    # ---------------------------------------------------------------------------------------- step
    def action_masks(self) -> np.ndarray:
        """Per-dimension level masks, concatenated (sb3-contrib MaskablePPO)."""
        return self._mask.copy()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self._state:
            raise ConfigError("call reset() before step()")
        index = tuple(int(a) for a in np.asarray(action).reshape(-1))
        info: dict[str, Any] = {"cell": index, **self._state}
        if not self.grid.valid(index):
            info["outcome"] = "invalid"
            return self._obs(), -self.penalty, True, False, info
        spec = self.grid.spec(index)
        info["key"] = spec.key
        m = self.evaluator(spec)
        if m is None:
            info["outcome"] = "failed"
            return self._obs(), -self.penalty, True, False, info
        device = DeviceProfile("episode", self._state["device_macs_per_s"], int(self._state["memory_bytes"]))
        bw = self._state["bandwidth_bytes_per_s"]
        link = Link(bw, self.edge.rtt_s, symbols_per_s=8 * bw * self.edge.symbols_per_bit)
        latency = end_to_end(m, device, self.edge.server, link).total_s
        info["latency_s"] = latency
        if m.val_accuracy < self._state["accuracy_floor"]:
            info["outcome"] = "below_floor"
            return self._obs(), -self.penalty, True, False, info
        if not feasible(m, device):
            info["outcome"] = "out_of_memory"
            return self._obs(), -self.penalty, True, False, info
        norm = latency / (self.reference_macs / device.macs_per_s)
        info["outcome"] = "ok"
        info["normalised_latency"] = norm
        return self._obs(), -min(norm, self.latency_clip), True, False, info
