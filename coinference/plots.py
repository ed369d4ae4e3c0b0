"""Plots (matplotlib, Agg backend): written to PNG files, never shown."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from coinference.profile import ModelProfile


def plot_profile(p: ModelProfile, path: str | Path) -> Path:
    """Fig.-1-style plot: device computation (bars) and communication (line) per split point.

    The horizontal lines are the size of the raw input and of the PNG-compressed input, in bits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in p.splits]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.2))
    ax.bar(xs, [s.device_macs / 1e6 for s in p.splits], color="#9ecae1", label="device MACs")
    ax.set_ylabel("device computation (M MACs)")
    ax.set_xticks(list(xs), names, rotation=45, ha="right")
    ax2 = ax.twinx()
    ax2.plot(xs, [s.feature_bits for s in p.splits], "o-", color="#d62728", label="feature bits (float32)")
    ax2.axhline(p.input_bits_raw, color="#2ca02c", ls="--", label=f"raw input ({p.input_bits_raw:,} bits)")
    if p.input_bits_png:
        ax2.axhline(p.input_bits_png, color="#ff7f0e", ls=":", label=f"PNG input ({p.input_bits_png:,.0f} bits)")
    ax2.set_yscale("log")
    ax2.set_ylabel("communication (bits per image)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title(f"{p.model}: computation vs communication per split point")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
