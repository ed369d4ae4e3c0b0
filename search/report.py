"""A run's report: the Pareto front of the specs it finished, the variant chosen at a few bandwidths, a Pareto
plot (PNG) and ``report.md``. Fronts, queries and the plot come from ``storage`` (one definition of each).

A multi-fidelity run finished some variants at several rungs: the report compares each at the highest fidelity it
was measured at (:func:`storage.records.highest_fidelity`), says when its front mixes fidelities, and counts each
rung's variants and building seconds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from coinference.latency import SERVERS, Link, device_profile
from search.space import SearchSpace
from storage.query import floor_label, resolve_floor


@dataclass(frozen=True)
class Choice:
    """The variant to deploy at one bandwidth (None when no variant is feasible)."""

    bandwidth_bytes_per_s: float
    record: Any | None
    latency_s: float | None
    why: str = ""


@dataclass(frozen=True)
class Report:
    records: list[Any]
    """The run's records (``storage.VariantRecord``, ok and failed), one per variant: the highest fidelity it
    reached."""
    front: list[Any]
    """Non-dominated measured variants over (accuracy ↑, device MACs ↓, bits ↓)."""
    floor: float | None
    device: str
    choices: list[Choice]
    plot: Path | None
    markdown: Path
    log_hypervolume: float
    """storage.metrics.log_hypervolume of the measured variants (the headline; bounds in ``hypervolume_bounds``)."""
    hypervolume_bounds: str
    """The fixed bounds and reference point of ``log_hypervolume``, as one line."""
    linear_hypervolume: float
    """storage.pareto.hypervolume in raw units (error × MACs × bits, reference 1.1 × worst of this run)."""
    fidelity_note: str = ""
    """A line saying the front mixes fidelities (empty when it does not)."""


def write_report(table: Any, keys: Sequence[str], cfg: Any, space: SearchSpace) -> Report:
    """Front, choices, plot and report.md of the specs ``keys`` (the run's ledger) in ``table``."""
    from storage.errors import StorageError
    from storage.metrics import DEFAULT_BOUNDS, log_hypervolume
    from storage.pareto import hypervolume, pareto_front
    from storage.plots import plot_front
    from storage.query import BandwidthChoice, query
    from storage.records import highest_fidelity

    finished = [r for r in (table.get(k) for k in keys) if r is not None]
    records = highest_fidelity(finished)
    front = pareto_front(records)
    device = device_profile(cfg.device)
    # the run's --accuracy-floor, else the best accuracy that fits the device − 0.02 (the base's is not known here)
    floor = resolve_floor(records, cfg.accuracy_floor, device)
    server = SERVERS.get("rtx2080ti")
    choices = []
    for bw in cfg.bandwidths:
        try:
            q = query(records, Link(bw), device, server, floor)
            choices.append(Choice(bw, q.best.record, q.best.total_s))
        except StorageError as e:
            choices.append(Choice(bw, None, None, str(e)))
    run_dir = cfg.run_dir
    plot = None
    if front:
        marks = [
            BandwidthChoice(c.bandwidth_bytes_per_s, c.record.key, c.latency_s or 0.0, 0.0, 0.0)
            for c in choices
            if c.record is not None
        ]
        plot = plot_front(records, front, marks, run_dir / "pareto.png", title=f"{cfg.name}: {cfg.searcher}")
    ok = [r for r in records if r.status == "ok"]
    failed = [r for r in records if r.status == "failed"]
    log_hv, linear_hv = log_hypervolume(ok), hypervolume(ok)
    fids = _fidelities(front)
    mixed = f"the front mixes fidelities ({fids}), each variant at the highest it reached" if "," in fids else ""
    ladder = getattr(cfg, "fidelities", ())
    if ladder:
        fidelity = f"fidelity ladder `{' → '.join(ladder)}` (η {cfg.eta}, asynchronous successive halving)"
    else:
        fidelity = f"fidelity `{cfg.fidelity}`"
    lines = [
        f"# Search run `{cfg.name}`",
        "",
        f"- searcher: `{cfg.searcher}`, budget {cfg.trials} variants, seed {cfg.seed}, {fidelity}",
        f"- space: {space.describe()}",
        f"- finished: {len(records)} variants ({len(ok)} ok, {len(failed)} failed)",
        *([f"- rungs: {_rungs(finished)}"] if ladder else []),
        f"- Pareto front (accuracy ↑, device MACs ↓, bits ↓): {len(front)} variants"
        + (f" at fidelity {fids}" if ladder and not mixed else ""),
        *([f"- note: {mixed}"] if mixed else []),
        f"- log-normalised hypervolume {log_hv:.4f} ({DEFAULT_BOUNDS.describe()}; comparable across runs)",
        f"- linear hypervolume {linear_hv:.4g} (error × MACs × bits, reference = 1.1 × worst of this run)",
        f"- accuracy floor for the choices: {floor:.4f}" if floor is not None else "- no accuracy floor",
        "",
        "## Front",
        "",
        "| key | split | sparsity | codec | fidelity | accuracy | device MACs | bits/image | device memory B |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in front:
        m, s = r.measurement, r.spec
        assert m is not None
        lines.append(
            f"| `{r.key[:12]}` | {s.split} | {s.sparsity:.2f} | {s.codec.label} | {s.fidelity} | {m.accuracy:.4f} | "
            f"{m.device_macs:,} | {m.bits_mean + m.header_bits:,.0f} | {m.device_memory_bytes:,} |"
        )
    lines += ["", f"## Chosen variant per bandwidth (device `{cfg.device}`, server `rtx2080ti`)", ""]
    lines += ["| bandwidth | key | split | sparsity | codec | accuracy | latency |", "|---|---|---|---|---|---|---|"]
    for c in choices:
        if c.record is None:
            lines.append(f"| {_rate(c.bandwidth_bytes_per_s)} | — | | | | | {c.why} |")
            continue
        s, m = c.record.spec, c.record.measurement
        lines.append(
            f"| {_rate(c.bandwidth_bytes_per_s)} | `{c.record.key[:12]}` | {s.split} | {s.sparsity:.2f} | "
            f"{s.codec.label} | {m.accuracy:.4f} | {(c.latency_s or 0.0) * 1e3:.3f} ms |"
        )
    if failed:
        lines += ["", "## Failed variants", ""]
        lines += [f"- `{r.key[:12]}` {r.spec.split} s={r.spec.sparsity:.2f}: {r.error}" for r in failed]
    if plot is not None:
        lines += ["", f"![Pareto front]({plot.name})"]
    md = run_dir / "report.md"
    md.write_text("\n".join(lines) + "\n")
    bounds = DEFAULT_BOUNDS.describe()
    return Report(records, front, floor, cfg.device, choices, plot, md, log_hv, bounds, linear_hv, mixed)


def _fidelities(records: Sequence[Any]) -> str:
    """The fidelities of ``records``, cheapest first, comma-separated."""
    from coinference.variant import FIDELITIES

    return ", ".join(sorted({r.spec.fidelity for r in records}, key=FIDELITIES.index))


def _rungs(finished: Sequence[Any]) -> str:
    """Per fidelity, cheapest first: the variants finished at it and the seconds their builds took (a rung's cost;
    whole-model candidates left out)."""
    from coinference.variant import FIDELITIES

    parts = []
    for f in sorted({r.spec.fidelity for r in finished}, key=FIDELITIES.index):
        at = [r for r in finished if r.spec.fidelity == f and not r.spec.whole_model]
        secs = sum(r.measurement.train_seconds for r in at if r.measurement is not None)
        parts.append(f"{len(at)} variants at `{f}` ({secs:,.1f} s of building)")
    return "; ".join(parts)


def _rate(bw: float) -> str:
    from storage.plots import fmt_rate

    return fmt_rate(bw)


def render(rep: Report, console: Console) -> None:
    """Print the front and the per-bandwidth choices."""
    t = RichTable(
        title=f"Pareto front: {len(rep.front)} of {len(rep.records)} variants (fidelity {_fidelities(rep.records)})"
    )
    for col in ("key", "split", "sparsity", "codec", "fidelity", "accuracy", "device MACs", "bits/image"):
        t.add_column(col, justify="right")
    for r in rep.front:
        m = r.measurement
        t.add_row(
            r.key[:12],
            r.spec.split,
            f"{r.spec.sparsity:.2f}",
            r.spec.codec.label,
            r.spec.fidelity,
            f"{m.accuracy:.4f}",
            f"{m.device_macs:,}",
            f"{m.bits_mean + m.header_bits:,.0f}",
        )
    console.print(t)
    if rep.fidelity_note:
        console.print(f"note: {rep.fidelity_note}")
    console.print(
        f"hypervolume: log-normalised {rep.log_hypervolume:.4f} ({rep.hypervolume_bounds}); "
        f"linear {rep.linear_hypervolume:.4g} (raw units, reference 1.1 × worst of this run)"
    )
    floor = floor_label(rep.floor)
    c = RichTable(title=f"Chosen variant per bandwidth ({rep.device}, {floor})")
    for col in ("bandwidth", "key", "split", "sparsity", "codec", "accuracy", "latency"):
        c.add_column(col, justify="right")
    for ch in rep.choices:
        if ch.record is None:
            c.add_row(_rate(ch.bandwidth_bytes_per_s), "—", "", "", "", "", ch.why)
            continue
        s, m = ch.record.spec, ch.record.measurement
        c.add_row(
            _rate(ch.bandwidth_bytes_per_s),
            ch.record.key[:12],
            s.split,
            f"{s.sparsity:.2f}",
            s.codec.label,
            f"{m.accuracy:.4f}",
            f"{(ch.latency_s or 0) * 1e3:.3f} ms",
        )
    console.print(c)
