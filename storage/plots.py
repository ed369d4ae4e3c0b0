"""Plot of the Pareto front (PNG via matplotlib's Agg backend; never shown)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from coinference.latency import fmt_rate  # defined there, light, for the CLI; kept importable from here
from storage.pareto import measured, objectives
from storage.query import BandwidthChoice
from storage.records import VariantRecord


def plot_front(
    records: Sequence[VariantRecord],
    front: Sequence[VariantRecord],
    choices: Sequence[BandwidthChoice],
    path: str | Path,
    title: str = "",
    infeasible: Sequence[VariantRecord] = (),
) -> Path:
    """Device MACs vs bits per image of every measured variant (grey), the front coloured by accuracy, and the
    variant chosen at each bandwidth of ``choices`` marked with the range of rates where it wins; ``infeasible``
    variants (too big for the device) are drawn as crosses."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    ok = measured(records)
    pts = [objectives(r.measurement) for r in ok if r.measurement is not None]
    skip = {r.key for r in infeasible}
    fit = [objectives(r.measurement) for r in ok if r.measurement is not None and r.key not in skip]
    big = [objectives(r.measurement) for r in ok if r.measurement is not None and r.key in skip]
    ax.scatter([p[1] for p in fit], [p[2] for p in fit], s=14, c="#bbbbbb", label="measured variants")
    if big:
        ax.scatter([p[1] for p in big], [p[2] for p in big], s=18, c="#888888", marker="x", label="too big for device")
    fp = [(objectives(r.measurement), r.measurement.val_accuracy) for r in front if r.measurement is not None]
    sc = ax.scatter(
        [p[0][1] for p in fp], [p[0][2] for p in fp], s=40, c=[a for _, a in fp], cmap="viridis", label="Pareto front"
    )
    if fp:
        fig.colorbar(sc, ax=ax, label="validation accuracy")
    by_key: dict[str, list[float]] = {}
    for c in choices:
        by_key.setdefault(c.key, []).append(c.bandwidth_bytes_per_s)
    chosen = {r.key: r for r in ok}
    for i, (key, rates) in enumerate(by_key.items()):
        m = chosen[key].measurement if key in chosen else None
        if m is None:
            continue
        _, macs, bits = objectives(m)
        ax.scatter(
            [macs], [bits], s=160, marker="*", c="#d62728", zorder=3, label="chosen per bandwidth" if i == 0 else None
        )
        span = fmt_rate(min(rates)) if len(rates) == 1 else f"{fmt_rate(min(rates))}–{fmt_rate(max(rates))}"
        ax.annotate(span, (macs, bits), textcoords="offset points", xytext=(6, 6), fontsize=7, color="#d62728")
    if pts and min(min(p[1], p[2]) for p in pts) > 0:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("device MACs per image (incl. encoder)")
    ax.set_ylabel("bits per image (payload + header)")
    ax.set_title(title or "lookup table: Pareto front (accuracy ↑, device MACs ↓, bits ↓)", fontsize=10)
    ax.margins(0.12)
    ax.legend(fontsize=8, loc="best", framealpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
