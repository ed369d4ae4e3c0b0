"""Search efficiency: hypervolume vs number of evaluations for random, grid order, Optuna TPE, Optuna NSGA-II
and PPO on a ≥ 1,000-cell space whose evaluator is a *table* of measured variants (a lookup, so every searcher
sees the same numbers and the bench runs in minutes).

Two sources for the table, and every figure says which one produced it:

* ``--table PATH``: measured variants, either a lookup DB URL (``sqlite:///runs/x/lookup.db``) or a JSON list
  of ``{"spec": {...}, "measurement": {...}}``. Cells missing from the table are evaluated as failures.
* ``--synthetic-from-profile``: a table derived from the model's real split-point profile: device MACs and
  feature sizes are exact (coinference.profile, codec_for_ratio), while pruning's MAC saving, the entropy
  coder's gain and the accuracy are a documented model (:func:`synthetic_measurement`), not measurements.

* ``--reference FIXTURE``: the CIFAR-10 / ResNet-20 reference table of bench/build_reference.py, replayed with
  its measured build costs: each searcher is charged the CPU seconds its own evaluations cost (a cell's codec phase
  and evaluation; a pruning once per split × sparsity × fidelity, by whichever cell needs it first), runs until
  ``--budget-fraction`` of the exhaustive build's CPU seconds, and is scored at ``--points`` costs on the way by
  the log HV of its table (each cell at the highest rung it reached, as fronts count a table) ÷ the exhaustive fast
  table's, and its median deployment regret; median and interquartile band over the seeds, one plot, and the first
  cost at which the seeds' median reaches ≥ 95 % of the exhaustive log HV and ≤ 5 % regret.

Per searcher, over ≥ 10 seeds (storage.metrics; docs/ARCHITECTURE.md, "Pareto front"):

* **log HV** (headline): storage.metrics.log_hypervolume — error, log10 device MACs and log10 bits mapped to
  [0, 1] by fixed bounds (stated in the output), reference (1, 1, 1) — as a fraction of the exhaustive table's.
* ``linear HV`` (secondary): storage.pareto.hypervolume in raw units against the exhaustive table's reference
  (1.1 × worst), as a fraction of the exhaustive table's. MACs and bits span orders of magnitude, so a handful of
  cheap variants already cover nearly all of this volume (the output prints how much the best single variant holds).
* **deployment regret**: storage.metrics.regret_against over a fixed seeded sample of edge environments
  (storage.metrics.edge_environments): latency of the searcher's table's choice / the exhaustive table's − 1,
  median and p90 per seed (an environment the searcher's table cannot serve counts the stated penalty).

    .venv/bin/python bench/bench_search.py --synthetic-from-profile
    .venv/bin/python bench/bench_search.py --table sqlite:///runs/grid/lookup.db [--fidelity F --weights W]
    .venv/bin/python bench/bench_search.py --synthetic-from-profile --searchers random --budget-fraction 0.01  # smoke
    .venv/bin/python bench/bench_search.py --reference bench/fixtures/reference-resnet20-cifar10.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coinference.errors import ConfigError
from coinference.variant import Measurement, VariantSpec
from coinference.zoo import file_sha256
from search.evaluator import CachedEvaluator
from search.ladder import DEFAULT_ETA
from search.searchers import SEARCHERS, SearchContext, SearchOptions
from search.space import SearchSpace
from storage import open_table
from storage.metrics import (
    DEFAULT_BOUNDS,
    ENV_BANDWIDTH,
    ENV_DEVICES,
    ENV_MARGIN,
    INFEASIBLE_PENALTY,
    edge_environments,
    exhaustive_baseline,
    log_hypervolume,
    regret_against,
)
from storage.pareto import hypervolume, reference_point
from storage.plots import fmt_rate

SEARCHERS_BENCHED = {
    "random": ("random", {}),
    "grid order": ("grid", {}),
    "optuna TPE": ("optuna", {"sampler": "tpe"}),
    "optuna NSGA-II": ("optuna", {"sampler": "nsga2"}),
    "PPO": ("ppo", {"ppo_n_steps": 32}),
    "optuna GP": ("optuna", {"sampler": "gp"}),
    "multi-fidelity TPE": ("optuna", {"sampler": "tpe"}),
}
LADDERS = {"multi-fidelity TPE": ("screen", "fast")}
"""Searchers that climb a fidelity ladder (η 3): only on a table holding every rung (``--reference``)."""
SYNTHETIC_DEFAULT = ("random", "grid order", "optuna TPE", "optuna NSGA-II", "PPO")
"""The searchers of the synthetic and measured-table modes by default (as before the reference mode)."""


# ----------------------------------------------------------------------------------------- synthetic table
BASE_ACCURACY = 0.97
"""The digits base model's accuracy assumed by the synthetic model."""


def _noise(key: str, scale: float) -> float:
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return scale * (2 * u - 1)


def synthetic_measurement(spec: VariantSpec, space: SearchSpace, prof: dict) -> Measurement:
    """A measurement derived from the split-point profile (exact parts) and a documented accuracy model.

    Exact: the unpruned device MACs, parameter and activation bytes of the split, the feature shape, and the
    codec's symbol count (codec_for_ratio). Modelled:

    * pruning at channel sparsity s keeps (1 − s) of the stem's MACs and (1 − s)² of every later layer's
      (both input and output channels shrink); parameters shrink like the MACs;
    * encoder MACs: the 1×1 conv C → c over H×W, plus the FC layer when there is one;
    * bits = symbols × bits per symbol × an entropy-coder gain (0.55 at ≥ 4 bits, 0.8 at 2 bits);
    * accuracy = base − 0.30 · (s · depth)² − 0.5 · exp(−payload / (96 · width)) − quantiser loss
      (0.03 at 2 bits, 0.005 at 4 bits) ± 0.004 seeded noise, where depth is the device's share of the model's
      MACs and width = 1 at the deepest split, growing as the feature gets larger (earlier splits need more
      bits for the same information).
    """
    i = space.splits.index(spec.split)
    p = prof[spec.split]
    s = spec.sparsity
    stem = prof[space.splits[0]]["device_macs"]
    macs = stem * (1 - s) + (p["device_macs"] - stem) * (1 - s) ** 2
    shape = space.feature_shapes[i]
    c = spec.codec
    if len(shape) == 3:
        ch, h, w = shape
        ch_out = c.channels or ch
        h, w, k = h // c.stride, w // c.stride, (c.stride if c.stride > 1 else c.kernel)
        enc = ch * ch_out * k * k * h * w + (ch_out * h * w * c.dim if c.dim else 0)
        symbols = c.dim or ch_out * h * w
    else:
        enc = shape[0] * (c.dim or shape[0])
        symbols = c.dim or shape[0]
    gain = 0.8 if c.bits <= 2 else 0.55
    bits = symbols * c.bits * gain
    depth = p["device_macs"] / space.total_macs if space.total_macs else 0.5
    width = (p["feature_bits"] / prof[space.splits[-1]]["feature_bits"]) ** 0.5
    q = {1: 0.08, 2: 0.03, 4: 0.005}.get(c.bits, 0.0)
    acc = BASE_ACCURACY - 0.30 * (s * depth) ** 2 - 0.5 * math.exp(-symbols * c.bits / (96 * width)) - q
    acc = float(np.clip(acc + _noise(spec.key, 0.004), 0.0, 1.0))
    return Measurement(
        val_accuracy=acc,
        device_macs=int(macs + enc),
        server_macs=int(space.total_macs or 0) - int(p["device_macs"]),
        bits_mean=float(bits),
        bits_max=int(bits * 1.2),
        header_bits=32,
        encoder_macs=int(enc),
        device_param_bytes=int(p["device_param_bytes"] * (1 - s) ** 2),
        device_peak_activation_bytes=int(p["device_peak_activation_bytes"] * (1 - s)),
    )


def synthetic_table(space: SearchSpace) -> dict[str, Measurement]:
    from coinference.profile import profile_model
    from coinference.zoo import MODELS, build_model

    info = MODELS.get(space.model)
    pm = profile_model(build_model(space.model), info.input_shape, space.model)
    prof = {s.name: s.__dict__ for s in pm.splits}
    return {spec.key: synthetic_measurement(spec, space, prof) for _, spec in space.grid()}


def load_table(src: str) -> dict[str, Measurement]:
    """key → measurement from a lookup DB URL or a JSON list of {spec, measurement}."""
    if "://" in src:
        t = open_table(src)
        out = {r.key: r.measurement for r in t.variants(status="ok") if r.measurement is not None}
        t.close()
        return out
    rows = json.loads(Path(src).read_text())
    return {VariantSpec.from_dict(r["spec"]).key: Measurement.from_dict(r["measurement"]) for r in rows}


# ------------------------------------------------------------------------------------------------ reference
@dataclass
class Reference:
    """bench/build_reference.py's fixture, as the bench replays it: every rung's measurement and build cost."""

    path: Path
    space: SearchSpace
    """The fast rung's space (the cells; a rung's spec differs only in its fidelity)."""
    table: dict[str, Measurement]
    """Spec key (any rung) → measurement."""
    specs: dict[str, VariantSpec]
    """Spec key (any rung) → spec."""
    cell_cost: dict[str, float]
    """Spec key → CPU seconds of its codec phase and evaluation."""
    prune_cost: dict[tuple[str, float, str], float]
    """(split, sparsity, fidelity) → CPU seconds of its pruning, paid once by whichever cell comes first."""
    fast_keys: list[str]
    """The exhaustive table: every cell's fast-rung key."""
    meta: dict

    def group(self, key: str) -> tuple[str, float, str]:
        s = self.specs[key]
        return (s.split, s.sparsity, s.fidelity)

    @property
    def exhaustive_cost(self) -> float:
        """CPU seconds of building every cell at fast: its cells and its prunings."""
        return sum(self.cell_cost[k] for k in self.fast_keys) + sum(
            v for (_, _, f), v in self.prune_cost.items() if f == "fast"
        )

    def costs(self, order: list[str]) -> list[float]:
        """Cumulative CPU seconds after each evaluation of ``order`` (pruning charged to the first of its group)."""
        paid: set[tuple[str, float, str]] = set()
        out, total = [], 0.0
        for k in order:
            g = self.group(k) if k in self.specs else None
            total += self.cell_cost.get(k, 0.0)
            if g is not None and g not in paid:
                paid.add(g)
                total += self.prune_cost.get(g, 0.0)
            out.append(total)
        return out


def load_reference(path: Path) -> Reference:
    """Read a reference fixture (``coinference.reference/1``)."""
    doc = json.loads(path.read_text())
    if doc.get("format") != "coinference.reference/1":
        raise ConfigError(f"{path}: not a reference fixture (format {doc.get('format')!r})")
    table: dict[str, Measurement] = {}
    specs: dict[str, VariantSpec] = {}
    cell_cost: dict[str, float] = {}
    prune_cost: dict[tuple[str, float, str], float] = {}
    fast_keys: list[str] = []
    for cell in doc["cells"]:
        for f, entry in cell["rungs"].items():
            spec = VariantSpec.from_dict(entry["spec"])
            specs[spec.key] = spec
            # a failed build cost what it cost, and its group's pruning when it came first
            cell_cost[spec.key] = float(entry.get("cell_cpu_s") or 0.0)
            g = (spec.split, spec.sparsity, f)
            prune_cost[g] = prune_cost.get(g, 0.0) + float(entry.get("prune_cpu_s") or 0.0)
            if "measurement" not in entry:
                continue
            table[spec.key] = Measurement.from_dict(entry["measurement"])
            if f == "fast":
                fast_keys.append(spec.key)
    lv = doc["levels"]
    sha = next(iter(specs.values())).weights_sha256
    space = SearchSpace.for_model(
        doc["model"], splits=lv["splits"], sparsities=lv["sparsities"], ratios=lv["ratios"], bits=lv["bits"],
        fidelity="fast", weights_sha256=sha,
    )  # fmt: skip
    meta = {
        k: doc.get(k) for k in ("command", "commit", "dirty", "complete", "build_cpu_s", "rank_agreement", "wall_s")
    }
    return Reference(path, space, table, specs, cell_cost, prune_cost, fast_keys, meta)


def top_rung(keys: list[str], ref: Reference) -> list[str]:
    """The measured keys among ``keys`` at the top rung (``fast``), each once: a searcher is scored on what it has
    built at the fidelity of the exhaustive table, so a cheap-rung measurement (fewer images, shorter training)
    never stands in for a top-rung one; a multi-fidelity table shows its cheap-rung cells too, at their own rung."""
    return list(dict.fromkeys(k for k in keys if k in ref.table and ref.specs[k].fidelity == "fast"))


def compare_candidate(a: argparse.Namespace) -> dict:
    """A real search's table (``--candidate``) against the reference table: its log HV ÷ the exhaustive table's and
    its deployment regret, on its top-rung variants and on each variant at its highest rung (a table may hold
    variants outside the reference grid: a regret below 0 is a choice faster than the exhaustive grid's)."""
    from storage.records import highest_fidelity

    ref = load_reference(a.reference)
    exhaustive = records(ref.fast_keys, ref.table, ref.specs)
    hv_all = hv(exhaustive, DEFAULT_BOUNDS.reference, True)
    envs = edge_environments(a.envs)
    base = exhaustive_baseline(exhaustive, envs)  # type: ignore[arg-type]
    with open_table(a.candidate, create=False) as t:
        rows = [r for r in t.variants(status="ok") if not r.spec.whole_model and r.measurement is not None]
    out = {}
    for what, recs in (("top rung (fast)", [r for r in rows if r.spec.fidelity == "fast"]),
                       ("highest rung each", highest_fidelity(rows))):  # fmt: skip
        reg = regret_against(recs, base)
        out[what] = {"variants": len(recs), "log_hv_fraction": hv(recs, DEFAULT_BOUNDS.reference, True) / hv_all,
                     "regret_median": reg.median, "regret_p90": reg.p90, "infeasible": reg.infeasible}  # fmt: skip
    print(f"candidate {a.candidate} against the reference {ref.path} (exhaustive log HV {hv_all:.4f}, "
          f"{len(envs)} environments)")  # fmt: skip
    print("| variants read | n | log HV / exhaustive | regret median | regret p90 | infeasible envs |")
    print("|---|---:|---:|---:|---:|---:|")
    for what, r in out.items():
        print(f"| {what} | {r['variants']} | {r['log_hv_fraction']:.3f} | {r['regret_median']:.3f} | "
              f"{r['regret_p90']:.3f} | {r['infeasible']} |")  # fmt: skip
    return out


def bench_reference(a: argparse.Namespace, labels: list[str]) -> None:
    """Searchers replayed on the reference fixture; HV and regret against CPU seconds of building."""
    ref = load_reference(a.reference)
    space = ref.space
    exhaustive = records(ref.fast_keys, ref.table, ref.specs)
    hv_all = hv(exhaustive, DEFAULT_BOUNDS.reference, True)
    envs = edge_environments(a.envs)
    base = exhaustive_baseline(exhaustive, envs)  # type: ignore[arg-type]
    full_cost = ref.exhaustive_cost
    cap = a.budget_fraction * full_cost
    grid = np.linspace(cap / a.points, cap, a.points)
    n_cells = len(space.grid())

    def trials_for(label: str) -> int:
        """Distinct variants that surely exceed the budget: the budget ÷ the cheapest build at the searcher's
        first rung (a run is cut at the budget afterwards)."""
        first = LADDERS.get(label, ("fast",))[0]
        costed = [v for k, v in ref.cell_cost.items() if v > 0 and ref.specs[k].fidelity == first]
        if not costed:
            raise ConfigError(f"{ref.path}: no {first} build with a cost, which {label} needs")
        return min(n_cells, math.ceil(cap / min(costed)) + 1)

    if not ref.fast_keys:
        raise ConfigError(f"{ref.path}: no measured fast cell")
    trials = {label: trials_for(label) for label in labels}
    print(f"reference: {ref.path} ({ref.meta.get('command')}; commit {str(ref.meta.get('commit'))[:12]}"
          f"{', dirty' if ref.meta.get('dirty') else ''}; complete: {ref.meta.get('complete')})")  # fmt: skip
    print(f"space: {space.describe()}; {len(ref.fast_keys)} of {n_cells} cells measured at fast")
    print(f"rank agreement of the rungs: {ref.meta.get('rank_agreement')}")
    print(f"exhaustive: log HV {hv_all:.4f}; build cost {full_cost:,.0f} CPU s at fast (cells + prunings); "
          f"budget {a.budget_fraction:.0%} = {cap:,.0f} CPU s; distinct variants per run (cut at the budget): "
          + ", ".join(f"{k} {v}" for k, v in trials.items()))  # fmt: skip
    served = sum(t is not None for t in base.latency_s)
    print(f"regret: {len(envs)} edge environments (seed 0), {served} served by the exhaustive table")
    print()
    results: dict[str, dict] = {}
    for label in labels:
        t0 = time.perf_counter()
        hv_rows, reg_rows, spent = [], [], []
        for seed in range(a.seeds):
            order = run_one(space, ref.table, label, seed, trials[label], ref.specs, ref, cap)
            cum = ref.costs(order)
            spent.append(cum[-1] if cum else 0.0)
            hv_row, reg_row = [], []
            for j, c in enumerate(grid):
                keys = top_rung([k for k, x in zip(order, cum, strict=True) if x <= c], ref)
                recs = records(keys, ref.table, ref.specs)
                hv_row.append(hv(recs, DEFAULT_BOUNDS.reference, True) / hv_all)
                if (j + 1) % a.regret_every == 0 or j == len(grid) - 1:
                    reg_row.append(regret_against(recs, base).median)  # type: ignore[arg-type]
            hv_rows.append(hv_row)
            reg_rows.append(reg_row)
        results[label] = {"hv": hv_rows, "regret": reg_rows, "spent": spent, "s": time.perf_counter() - t0}
        print(f"{label}: done in {results[label]['s']:.0f} s", flush=True)
    reg_grid = [c for j, c in enumerate(grid) if (j + 1) % a.regret_every == 0 or j == len(grid) - 1]

    def first(xs: np.ndarray, ok: Callable[[float], bool], at: list[float]) -> str:
        hit = next((c for c, v in zip(at, xs, strict=True) if ok(v)), None)
        return "—" if hit is None else f"{hit:,.0f} ({hit / full_cost:.1%})"

    print()
    print(f"at the budget ({cap:,.0f} CPU s = {a.budget_fraction:.0%} of the exhaustive build), {a.seeds} seeds: "
          "median [interquartile range]; first cost where the seeds' median reaches the goal")  # fmt: skip
    print()
    print("| searcher | log HV / exhaustive | median regret | first cost: HV ≥ 95 % | first cost: regret ≤ 5 % | "
          "first cost: both | s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for label, r in results.items():
        h, g = np.array(r["hv"]), np.array(r["regret"])
        hm, gm = np.median(h, 0), np.median(g, 0)

        def q(x: np.ndarray) -> str:
            return f"{np.median(x):.3f} [{np.quantile(x, 0.25):.3f}, {np.quantile(x, 0.75):.3f}]"

        both_hv = {c for c, v in zip(grid, hm, strict=True) if v >= 0.95}
        both = next((c for c, v in zip(reg_grid, gm, strict=True) if v <= 0.05 and c in both_hv), None)
        print(f"| {label} | {q(h[:, -1])} | {q(g[:, -1])} | {first(hm, lambda v: v >= 0.95, list(grid))} | "
              f"{first(gm, lambda v: v <= 0.05, reg_grid)} | "
              f"{'—' if both is None else f'{both:,.0f} ({both / full_cost:.1%})'} | {r['s']:.0f} |")  # fmt: skip
        summary[label] = {"hv_at_budget_median": float(np.median(h[:, -1])), "regret_at_budget_median":
                          float(np.median(g[:, -1])), "first_cost_both": both}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"reference": str(ref.path), "meta": ref.meta, "exhaustive_log_hv": hv_all, "exhaustive_cost_cpu_s":
           full_cost, "budget_cpu_s": cap, "grid_cpu_s": grid.tolist(), "regret_grid_cpu_s": reg_grid,
           "trials": trials, "seeds": a.seeds, "envs": a.envs, "results": results, "summary": summary}  # fmt: skip
    (a.out / "search_reference.json").write_text(json.dumps(doc, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, r in results.items():
        for ax, key, xs in ((axes[0], "hv", grid), (axes[1], "regret", np.array(reg_grid))):
            m = np.array(r[key])
            line = ax.plot(xs, np.median(m, 0), label=label)[0]
            ax.fill_between(xs, np.quantile(m, 0.25, 0), np.quantile(m, 0.75, 0), alpha=0.15, color=line.get_color())
    axes[0].axhline(0.95, color="k", ls=":", lw=1, label="95 % of exhaustive")
    axes[1].axhline(0.05, color="k", ls=":", lw=1, label="5 % regret")
    axes[0].set_ylabel("log-normalised hypervolume / exhaustive")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylabel("median deployment regret")
    axes[1].set_yscale("symlog", linthresh=0.01)
    for ax in axes:
        ax.set_xlabel(f"CPU seconds of building (exhaustive: {full_cost:,.0f})")
        ax.legend(fontsize=8)
    fig.suptitle(f"searchers on the reference table {ref.path.name}: median and interquartile band, {a.seeds} seeds",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    path = a.out / "search_reference.png"
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}\njson: {a.out / 'search_reference.json'}")


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class _Rec:
    """What storage's metrics and query read of a VariantRecord: status, measurement, key and spec."""

    status: str
    measurement: Measurement | None
    key: str = ""
    spec: VariantSpec | None = None


def records(keys: list[str], table: dict[str, Measurement], specs: dict[str, VariantSpec] | None = None) -> list[_Rec]:
    return [_Rec("ok", table[k], k, (specs or {}).get(k)) for k in keys if k in table]


class BudgetSpent(BaseException):
    """Raised out of a replayed search once its builds have cost the budget (a BaseException, as Ctrl-C is: no
    searcher or evaluator records it as a failed variant)."""


def run_one(
    space: SearchSpace, table: dict[str, Measurement], label: str, seed: int, budget: int,
    specs: dict[str, VariantSpec] | None = None, cost: Reference | None = None, cap: float | None = None,
) -> list[str]:  # fmt: skip
    """Keys of newly evaluated specs, in evaluation order; with ``cost`` and ``cap``, the search stops at the first
    evaluation asked for once the evaluations so far cost ``cap`` CPU seconds (what a cost-bounded run builds)."""
    name, opts = SEARCHERS_BENCHED[label]

    def evaluate(spec: VariantSpec) -> Measurement:
        if cost is not None and cap is not None and order and cost.costs(order)[-1] >= cap:
            raise BudgetSpent
        if spec.key not in table:
            raise ConfigError(f"variant {spec.key[:12]} is not in the measured table")
        return table[spec.key]

    ladder = LADDERS.get(label)
    order: list[str] = []
    store = open_table("sqlite://", name=f"bench-{seed}")
    ev = CachedEvaluator(
        store, evaluate, run="bench", on_outcome=lambda o: None if o.cached else order.append(o.spec.key)
    )
    if name == "ppo":  # repeated choices cost no evaluation: bound the training steps too
        opts = {**opts, "ppo_timesteps": 20 * budget}
    options = SearchOptions(**opts)  # type: ignore[arg-type]
    if ladder is None:
        ctx = SearchContext(space, ev, budget, None, False, seed, None, options)
    else:
        from search.searchers.asha import LadderContext

        first = replace(space, fidelity=ladder[0])
        ctx = LadderContext(first, ev, budget, None, False, seed, None, options, ladder=ladder, eta=DEFAULT_ETA)
    try:
        SEARCHERS.get(name)().run(ctx)
    except BudgetSpent:
        pass
    finally:
        store.close()
    return order


def hv(recs: list[_Rec], ref: tuple, log: bool) -> float:
    if not recs:
        return 0.0
    return log_hypervolume(recs) if log else hypervolume(recs, ref)  # type: ignore[arg-type]


def hv_curve(order: list[str], table: dict[str, Measurement], ref, hv_all: float, step: int, log: bool) -> list[float]:
    return [hv(records(order[:n], table), ref, log) / hv_all for n in range(step, len(order) + 1, step)]


def _padded(curves: list[list[float]], n: int) -> np.ndarray:
    return np.array([x + [x[-1]] * (n - len(x)) for x in curves])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", help="measured variants: lookup DB URL or JSON list of {spec, measurement}")
    src.add_argument("--synthetic-from-profile", action="store_true", help="derive the table from the profile")
    src.add_argument(
        "--reference", type=Path, help="a bench/build_reference.py fixture: curves against CPU seconds of building"
    )
    ap.add_argument("--points", type=int, default=40, help="cost points of the reference curves")
    ap.add_argument("--candidate", help="with --reference: a real search's table (DB URL) to compare, then stop")
    ap.add_argument("--regret-every", type=int, default=4, help="regret at every N-th cost point (reference mode)")
    ap.add_argument("--model", default="resnet-digits")
    ap.add_argument("--fidelity", default="fast")
    ap.add_argument("--weights", type=Path, default=None, help="base checkpoint the table's specs were built on")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget-fraction", type=float, default=0.10)
    ap.add_argument(
        "--searchers", default=None,
        help=f"comma-separated, of: {', '.join(SEARCHERS_BENCHED)} (default: all with --reference, else "
        f"{', '.join(SYNTHETIC_DEFAULT)})",
    )  # fmt: skip
    ap.add_argument("--envs", type=int, default=200, help="edge environments of the deployment regret")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/search"))
    a = ap.parse_args()
    default = list(SEARCHERS_BENCHED) if a.reference is not None else list(SYNTHETIC_DEFAULT)
    labels = a.searchers.split(",") if a.searchers else default
    if unknown := [x for x in labels if x not in SEARCHERS_BENCHED]:
        ap.error(f"unknown searchers {unknown}; valid: {', '.join(SEARCHERS_BENCHED)}")
    if a.reference is None and (climbing := [x for x in labels if x in LADDERS]):
        ap.error(f"{', '.join(climbing)} climb a fidelity ladder: only with --reference (a table of every rung)")
    if a.seeds < 1 or a.envs < 1:
        ap.error(f"--seeds {a.seeds} and --envs {a.envs}: need at least 1")
    if a.reference is not None:
        if not a.reference.is_file():
            ap.error(f"--reference {a.reference} is not a file")
        if not 0 < a.budget_fraction <= 1 or a.points < 1 or a.regret_every < 1:
            ap.error(f"--budget-fraction {a.budget_fraction} must be in (0, 1], --points and --regret-every ≥ 1")
        if a.candidate:
            compare_candidate(a)
        else:
            bench_reference(a, labels)
        return

    sha = file_sha256(a.weights) if a.weights is not None else None
    space = SearchSpace.for_model(a.model, fidelity=a.fidelity, weights_sha256=sha)
    mode = "synthetic-from-profile" if a.synthetic_from_profile else f"measured table {a.table}"
    table = synthetic_table(space) if a.synthetic_from_profile else load_table(a.table)
    specs = {s.key: s for _, s in space.grid()}
    grid_keys = list(specs)
    covered = [k for k in grid_keys if k in table]
    print(f"space: {space.describe()}")
    print(f"table: {mode}: {len(covered)} of {len(grid_keys)} distinct variants measured")
    if len(covered) < 1000:
        print("warning: fewer than 1,000 measured cells; the efficiency goal is defined on ≥ 1,000")
    all_recs = records(covered, table, specs)
    refs = {"log": DEFAULT_BOUNDS.reference, "linear": reference_point(all_recs)}  # type: ignore[arg-type]
    hv_all = {k: hv(all_recs, r, k == "log") for k, r in refs.items()}
    one = {k: max(hv([r], ref, k == "log") for r in all_recs) / hv_all[k] for k, ref in refs.items()}
    envs = edge_environments(a.envs)
    base = exhaustive_baseline(all_recs, envs)  # type: ignore[arg-type]
    served = sum(t is not None for t in base.latency_s)
    budget = max(10, int(a.budget_fraction * len(grid_keys)))
    step = max(1, budget // 40)
    print(f"log HV: {DEFAULT_BOUNDS.describe()}")
    print(
        f"linear HV: raw error × MACs × bits, reference ({', '.join(f'{x:.4g}' for x in refs['linear'])}) = 1.1 × worst"
    )
    print(f"exhaustive hypervolume: log {hv_all['log']:.4g}, linear {hv_all['linear']:.4g}")
    print(f"best single variant alone: log HV {one['log']:.3f}, linear HV {one['linear']:.3f} of the exhaustive")
    print(
        f"regret: {len(envs)} environments (seed 0; bandwidth log-uniform {fmt_rate(ENV_BANDWIDTH[0])}–"
        f"{fmt_rate(ENV_BANDWIDTH[1])}, device {'/'.join(ENV_DEVICES)}, accuracy margin U{ENV_MARGIN} below the "
        f"exhaustive best on the device, no RTT); the exhaustive table serves {served}; "
        f"infeasible = penalty {INFEASIBLE_PENALTY:g}"
    )
    print(f"budget {budget} evaluations ({budget / len(grid_keys):.1%} of cells), {a.seeds} seeds per searcher")
    print()

    curves: dict[str, dict[str, list[list[float]]]] = {"log": {}, "linear": {}}
    regrets: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    rows = []
    for label in labels:
        t0 = time.perf_counter()
        for kind in curves:
            curves[kind][label] = []
        regrets[label] = []
        for seed in range(a.seeds):
            order = run_one(space, table, label, seed, budget)
            for kind in curves:
                curves[kind][label].append(hv_curve(order, table, refs[kind], hv_all[kind], step, kind == "log"))
            r = regret_against(records(order, table, specs), base)  # type: ignore[arg-type]
            regrets[label].append({"median": r.median, "p90": r.p90, "infeasible": r.infeasible})
        seconds[label] = time.perf_counter() - t0
        log_c, lin_c = (_padded(curves[k][label], budget // step) for k in ("log", "linear"))
        reach = [next((step * (i + 1) for i, v in enumerate(row) if v >= 0.95), None) for row in log_c]
        got = [x for x in reach if x is not None]
        med = np.array([x["median"] for x in regrets[label]])
        p90 = np.array([x["p90"] for x in regrets[label]])
        inf = np.array([x["infeasible"] for x in regrets[label]])
        rows.append(
            f"| {label} | {log_c[:, -1].mean():.3f} ± {log_c[:, -1].std():.3f} | {len(got)} / {a.seeds}"
            + (f", {int(np.median(got))}" if got else "")
            + f" | {lin_c[:, -1].mean():.3f} ± {lin_c[:, -1].std():.3f} | {med.mean():.3f} ± {med.std():.3f} | "
            f"{p90.mean():.3f} ± {p90.std():.3f} | {inf.mean():.1f} | {seconds[label]:.0f} |"
        )
        print(f"{label}: done in {seconds[label]:.0f} s", flush=True)

    print()
    print(f"at {budget} evaluations, mean ± sd over {a.seeds} seeds (regret: per-seed median / p90 over environments)")
    print()
    print(
        "| searcher | log HV / exhaustive | seeds ≥ 95 % log HV, median evals | linear HV / exhaustive | "
        "regret median | regret p90 | infeasible envs | s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)

    a.out.mkdir(parents=True, exist_ok=True)
    tag = "synthetic" if a.synthetic_from_profile else "measured"
    (a.out / f"hv_{tag}.json").write_text(
        json.dumps(
            {
                "mode": mode,
                "space": space.describe(),
                "budget": budget,
                "step": step,
                "log_bounds": DEFAULT_BOUNDS.describe(),
                "curves": curves,
                "regret": regrets,
            }
        )
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("log", "linear"), strict=True):
        for label, cs in curves[kind].items():
            c = _padded(cs, budget // step)
            xs = step * np.arange(1, c.shape[1] + 1)
            ax.plot(xs, c.mean(0), label=label)
            ax.fill_between(xs, c.min(0), c.max(0), alpha=0.15)
        ax.axhline(0.95, color="k", ls=":", lw=1, label="95% of exhaustive")
        ax.set_xlabel(f"evaluations (of {len(grid_keys)} distinct variants)")
        ax.set_ylabel(f"{'log-normalised' if kind == 'log' else 'linear'} hypervolume / exhaustive")
        ax.set_title(f"{kind} HV — {a.model}: {mode}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = a.out / f"hv_{tag}.png"
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
