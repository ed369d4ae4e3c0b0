"""Toy landscapes larger than a search budget, with a known answer: the "does it find it" contract tests.

Both live on one space of 4 splits × 6 sparsities × 6 ratios × 2 bit widths = 288 cells, 264 of them valid and
distinct (ratio 8 at 2 bits has no codec). The evaluator knows each spec's cell and computes the measurement in
closed form from its level indices, so each landscape is defined on the ordinal levels the samplers see:

* :func:`bowl`: one cell (:data:`BOWL_OPTIMUM`) is best on all three objectives at once and every objective grows
  with the distance from it; the front is that one cell. It sits beside cells that have no codec, as the most
  accurate cheap variants of a real space do.
* :func:`cluster`: each objective has its own best cell (:data:`CLUSTER_CENTRES`) and grows with the weighted L1
  distance from it, so the front is 8 cells between the three (all at split layer1.1 and 4 bits), a trade-off
  between accuracy, MACs and bits; every other cell is dominated by one of them.

Accuracy falls linearly with the distance; MACs and bits grow by a fixed factor per level, so they are smooth on
the log scale that :func:`storage.metrics.log_hypervolume` judges a search on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from coinference.variant import Measurement, VariantSpec
from search.space import SearchSpace

SPLITS = ("stem", "layer1.0", "layer1.1", "layer2.0")
FEATURE = (64, 16, 16)
"""Every split's feature (C, H, W): large enough that no two cells share a spec."""
SPARSITIES = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75)
RATIOS = (8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
BITS = (2, 4)
SERVER_MACS = 10_000_000


def landscape_space() -> SearchSpace:
    """4 splits × 6 sparsities × 6 ratios × 2 bits = 288 cells, 264 valid and distinct."""
    return SearchSpace(
        model="tiny-cnn",
        dataset="synthetic",
        splits=SPLITS,
        feature_shapes=(FEATURE,) * len(SPLITS),
        sparsities=SPARSITIES,
        ratios=RATIOS,
        bits=BITS,
        total_macs=SERVER_MACS,
    )


Landscape = Callable[[Sequence[int]], tuple[float, int, float]]
"""Cell (split, sparsity, ratio, bits level indices) → (val accuracy, device MACs, bits per image)."""


def _l1(cell: Sequence[int], centre: Sequence[int], weights: Sequence[float]) -> float:
    return sum(w * abs(a - b) for a, b, w in zip(cell, centre, weights, strict=True))


BOWL_OPTIMUM = (2, 3, 1, 0)
"""The bowl's only Pareto-optimal cell: split layer1.1, sparsity 0.45, ratio 16, 2 bits (ratio 8 at 2 bits, one
level away, has no codec)."""


def bowl(cell: Sequence[int]) -> tuple[float, int, float]:
    """Accuracy 0.95 − 0.02 × squared distance from :data:`BOWL_OPTIMUM`; MACs 1e5 and bits 1e3 at it, doubling
    per weighted level away, with different weights per dimension so no two objectives agree exactly."""
    d = [c - o for c, o in zip(cell, BOWL_OPTIMUM, strict=True)]
    acc = 0.95 - 0.02 * (d[0] ** 2 + d[1] ** 2 + d[2] ** 2 + 2 * d[3] ** 2)
    macs = 100_000 * 2 ** _l1(cell, BOWL_OPTIMUM, (1, 0.5, 0.25, 0.5))
    bits = 1_000 * 2 ** _l1(cell, BOWL_OPTIMUM, (0.25, 0.25, 1, 1))
    return acc, int(macs), bits


CLUSTER_CENTRES = {"accuracy": (2, 1, 1, 1), "macs": (2, 4, 2, 1), "bits": (2, 2, 4, 1)}
"""Each objective's best cell in :func:`cluster`: the most accurate keeps more channels and bits; the fewest MACs
prunes more; the fewest bits compresses more."""
CLUSTER_WEIGHTS = (2, 1, 1, 2)
"""Per-dimension weights of the distance: a step in split or bits costs twice a step in sparsity or ratio."""


def cluster(cell: Sequence[int]) -> tuple[float, int, float]:
    """Accuracy 0.95 − 0.03 per weighted level from its centre; MACs 1e4 and bits 1e3 at theirs, ×10^0.25 (1.78)
    per weighted level away."""
    c, w = CLUSTER_CENTRES, CLUSTER_WEIGHTS
    acc = 0.95 - 0.03 * _l1(cell, c["accuracy"], w)
    macs = 10_000 * 10 ** (0.25 * _l1(cell, c["macs"], w))
    bits = 1_000 * 10 ** (0.25 * _l1(cell, c["bits"], w))
    return acc, int(macs), bits


def measurement(acc: float, macs: int, bits: float) -> Measurement:
    """A measurement with these objectives (the rest fixed)."""
    return Measurement(
        val_accuracy=acc,
        device_macs=macs,
        server_macs=SERVER_MACS - macs,
        bits_mean=bits,
        bits_max=int(bits),
        device_param_bytes=1_000,
        device_peak_activation_bytes=1_000,
    )


class LandscapeEvaluator:
    """Measures a spec of :func:`landscape_space` by its cell's value in ``landscape``; lists the builds."""

    def __init__(self, landscape: Landscape) -> None:
        self.landscape = landscape
        self.space = landscape_space()
        self.cells = {spec.key: cell for cell, spec in self.space.grid()}
        self.builds: list[str] = []

    def __call__(self, spec: VariantSpec) -> Measurement:
        self.builds.append(spec.key)
        return measurement(*self.landscape(self.cells[spec.key]))

    def exhaustive(self) -> dict[str, Measurement]:
        """Every distinct variant's measurement by key: the ground truth a search is compared with."""
        return {key: measurement(*self.landscape(cell)) for key, cell in self.cells.items()}
