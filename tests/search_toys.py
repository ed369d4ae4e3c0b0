"""Toy evaluators and a tiny space for the search tests (importable by subprocesses via PYTHONPATH)."""

from __future__ import annotations

import os
import time
from collections import Counter

from coinference.errors import TrainingError
from coinference.variant import Measurement, VariantSpec
from search.space import SearchSpace


def tiny_space(**kw: object) -> SearchSpace:
    """tiny-cnn: 2 splits × 2 sparsities × 2 ratios = 8 valid, distinct cells."""
    base = dict(
        model="tiny-cnn",
        dataset="synthetic",
        splits=("stem", "block1"),
        feature_shapes=((8, 8, 8), (8, 8, 8)),
        sparsities=(0.0, 0.5),
        ratios=(32.0, 64.0),
        bits=(2,),
        total_macs=69_120,
    )
    base.update(kw)
    return SearchSpace(**base)  # type: ignore[arg-type]


OPTIMUM = {"split": "block1", "sparsity": 0.5, "ratio": 64.0}
"""The toy's only Pareto-optimal cell: best accuracy, fewest MACs and fewest bits at once."""


def toy_symbols(spec: VariantSpec) -> int:
    """Symbols sent for the toy's 8×8 features: FC dim, else channels × positions left by the stride."""
    c = spec.codec
    return c.dim or (c.channels or 8) * (8 // c.stride) ** 2


def toy_measure(spec: VariantSpec) -> Measurement:
    """Deterministic: the optimum dominates every other variant on all three objectives."""
    best = spec.split == "block1" and spec.sparsity == 0.5 and toy_symbols(spec) <= 128  # ratio 64 (not 32)
    depth = 1 if spec.split == "stem" else 2
    acc = 0.95 if best else 0.6 + 0.05 * depth + 0.1 * spec.sparsity
    macs = 1_000 if best else 10_000 * depth + int(5_000 * (1 - spec.sparsity))
    bits = 8.0 if best else float(toy_symbols(spec) * spec.codec.bits)
    return Measurement(
        val_accuracy=acc,
        device_macs=macs,
        server_macs=50_000 - macs,
        bits_mean=bits,
        bits_max=int(bits),
        device_param_bytes=1_000,
        device_peak_activation_bytes=1_000,
    )


class CountingEvaluator:
    """Counts builds per key; optionally fails on some splits/sparsities, sleeps, or logs to a file."""

    def __init__(self, fail_sparsity: float | None = None, sleep: float = 0.0, log: str | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_sparsity = fail_sparsity
        self.sleep = sleep
        self.log = log

    def __call__(self, spec: VariantSpec) -> Measurement:
        self.calls[spec.key] += 1
        if self.log:
            with open(self.log, "a") as f:
                f.write(spec.key + "\n")
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail_sparsity is not None and spec.sparsity == self.fail_sparsity and spec.split == "stem":
            raise TrainingError(f"loss became NaN at step 3 (sparsity {spec.sparsity})")
        return toy_measure(spec)


def slow_logged() -> CountingEvaluator:
    """For ``coinfer search --evaluator search_toys:slow_logged()``: sleeps, logs every build to $TOY_LOG."""
    return CountingEvaluator(sleep=float(os.environ.get("TOY_SLEEP", "0.3")), log=os.environ["TOY_LOG"])
