"""Plots (matplotlib, Agg backend): written to PNG files, never shown."""

from __future__ import annotations

from collections.abc import Sequence
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


_METHOD_STYLE = {
    "ours": ("#d62728", "o"),
    "split+huffman": ("#1f77b4", "s"),
    "2-step+huffman": ("#2ca02c", "^"),
    "bottlenet++": ("#9467bd", "D"),
    "bottlenet++ ec": ("#8c564b", "d"),
    "on-device": ("#7f7f7f", "x"),
    "server-png": ("#ff7f0e", "P"),
}


def plot_macs_vs_bits(rows: dict[str, list[dict]], path: str | Path, subtitle: str = "") -> Path:
    """The paper's Fig. 3: device MACs vs bits per image, one marker style per method (rows: method → dicts with
    ``device_macs`` and ``bits_mean``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, rs in rows.items():
        if not rs:
            continue
        color, marker = _METHOD_STYLE.get(method, ("black", "."))
        ax.scatter(
            [max(r["bits_mean"], 1) for r in rs], [r["device_macs"] / 1e6 for r in rs],
            label=method, color=color, marker=marker, s=36,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("bits per image (from encoded bytes)")
    ax.set_ylabel("device computation (M MACs)")
    ax.set_title(f"device computation vs communication ({subtitle})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_vs_bandwidth(
    bandwidths: Sequence[float], latency: dict[str, list[float]], path: str | Path, subtitle: str = ""
) -> Path:
    """The paper's Fig. 4: end-to-end latency (s) vs bandwidth (bytes/s), best variant of each method per rate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, ys in latency.items():
        color, marker = _METHOD_STYLE.get(method, ("black", "."))
        ax.plot(bandwidths, ys, label=method, color=color, marker=marker, markersize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bandwidth (bytes/s)")
    ax.set_ylabel("end-to-end latency (s)")
    ax.set_title(f"latency vs bandwidth ({subtitle})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
