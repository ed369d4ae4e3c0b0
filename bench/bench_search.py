"""Search efficiency: hypervolume vs number of evaluations for random, grid order, Optuna TPE, Optuna NSGA-II
and PPO on a ≥ 1,000-cell space whose evaluator is a *table* of measured variants (a lookup, so every searcher
sees the same numbers and the bench runs in minutes).

Two sources for the table, and every figure says which one produced it:

* ``--table PATH``: measured variants, either a lookup DB URL (``sqlite:///runs/x/lookup.db``) or a JSON list
  of ``{"spec": {...}, "measurement": {...}}``. Cells missing from the table are evaluated as failures.
* ``--synthetic-from-profile``: a table derived from the model's real split-point profile: device MACs and
  feature sizes are exact (coinference.profile, codec_for_ratio), while pruning's MAC saving, the entropy
  coder's gain and the accuracy are a documented model (:func:`synthetic_measurement`), not measurements.

Two hypervolumes, both over storage.pareto's objective vectors (error, device MACs, bits; minimised) and both as
a fraction of the exhaustive table's, against one reference point for the whole table:

* ``linear``: storage.pareto.hypervolume as the project defines it (raw units, reference 1.1 × worst). MACs
  and bits span orders of magnitude, so a handful of cheap variants already cover nearly all of this volume.
* ``log``: the same vectors with log10 MACs and log10 bits (reference: worst + 10 % of the range), so each
  factor of 10 counts alike. This one separates the searchers and is the headline figure.

    .venv/bin/python bench/bench_search.py --synthetic-from-profile
    .venv/bin/python bench/bench_search.py --table sqlite:///runs/grid/lookup.db [--fidelity F --weights W]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coinference.errors import ConfigError
from coinference.variant import Measurement, VariantSpec
from coinference.zoo import file_sha256
from search.evaluator import CachedEvaluator
from search.searchers import SEARCHERS, SearchContext, SearchOptions
from search.space import SearchSpace
from storage import open_table
from storage.pareto import hypervolume, measured, objective_matrix, reference_point

SEARCHERS_BENCHED = {
    "random": ("random", {}),
    "grid order": ("grid", {}),
    "optuna TPE": ("optuna", {"sampler": "tpe"}),
    "optuna NSGA-II": ("optuna", {"sampler": "nsga2"}),
    "PPO": ("ppo", {"ppo_n_steps": 32}),
}


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
        accuracy=acc,
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


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class _Rec:
    status: str
    measurement: Measurement | None
    key: str = ""


def run_one(space: SearchSpace, table: dict[str, Measurement], label: str, seed: int, budget: int) -> list[str]:
    """Keys of newly evaluated specs, in evaluation order."""
    name, opts = SEARCHERS_BENCHED[label]

    def evaluate(spec: VariantSpec) -> Measurement:
        if spec.key not in table:
            raise ConfigError(f"variant {spec.key[:12]} is not in the measured table")
        return table[spec.key]

    order: list[str] = []
    store = open_table("sqlite://", name=f"bench-{seed}")
    ev = CachedEvaluator(
        store, evaluate, run="bench", on_outcome=lambda o: None if o.cached else order.append(o.spec.key)
    )
    if name == "ppo":  # repeated choices cost no evaluation: bound the training steps too
        opts = {**opts, "ppo_timesteps": 20 * budget}
    options = SearchOptions(**opts)  # type: ignore[arg-type]
    ctx = SearchContext(space, ev, budget, None, False, seed, None, options)
    SEARCHERS.get(name)().run(ctx)
    store.close()
    return order


def _log_matrix(recs: list[_Rec]) -> np.ndarray:
    f = objective_matrix(measured(recs))  # type: ignore[arg-type]
    f[:, 1:] = np.log10(np.maximum(f[:, 1:], 1.0))
    return f


def log_reference(recs: list[_Rec]) -> np.ndarray:
    f = _log_matrix(recs)
    hi, lo = f.max(0), f.min(0)
    return np.array([1.0, *(hi[1:] + 0.1 * (hi[1:] - lo[1:]))])


def hv(recs: list[_Rec], ref: np.ndarray | tuple, log: bool) -> float:
    import moocore

    if not recs:
        return 0.0
    if not log:
        return hypervolume(recs, ref)  # type: ignore[arg-type]
    return float(moocore.hypervolume(_log_matrix(recs), ref=np.asarray(ref)))


def hv_curve(order: list[str], table: dict[str, Measurement], ref, hv_all: float, step: int, log: bool) -> list[float]:
    out = []
    for n in range(step, len(order) + 1, step):
        recs = [_Rec("ok", table[k]) for k in order[:n] if k in table]
        out.append(hv(recs, ref, log) / hv_all)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", help="measured variants: lookup DB URL or JSON list of {spec, measurement}")
    src.add_argument("--synthetic-from-profile", action="store_true", help="derive the table from the profile")
    ap.add_argument("--model", default="resnet-digits")
    ap.add_argument("--fidelity", default="fast")
    ap.add_argument("--weights", type=Path, default=None, help="base checkpoint the table's specs were built on")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget-fraction", type=float, default=0.10)
    ap.add_argument("--searchers", default=",".join(SEARCHERS_BENCHED))
    ap.add_argument("--out", type=Path, default=Path("runs/bench/search"))
    a = ap.parse_args()

    sha = file_sha256(a.weights) if a.weights is not None else None
    space = SearchSpace.for_model(a.model, fidelity=a.fidelity, weights_sha256=sha)
    mode = "synthetic-from-profile" if a.synthetic_from_profile else f"measured table {a.table}"
    table = synthetic_table(space) if a.synthetic_from_profile else load_table(a.table)
    grid_keys = [s.key for _, s in space.grid()]
    covered = [k for k in grid_keys if k in table]
    print(f"space: {space.describe()}")
    print(f"table: {mode}: {len(covered)} of {len(grid_keys)} distinct variants measured")
    if len(covered) < 1000:
        print("warning: fewer than 1,000 measured cells; the efficiency goal is defined on ≥ 1,000")
    all_recs = [_Rec("ok", table[k]) for k in covered]
    refs = {"linear": reference_point(all_recs), "log": log_reference(all_recs)}  # type: ignore[arg-type]
    hv_all = {k: hv(all_recs, r, k == "log") for k, r in refs.items()}
    budget = max(10, int(a.budget_fraction * len(grid_keys)))
    step = max(1, budget // 40)
    print(f"exhaustive hypervolume: linear {hv_all['linear']:.4g}, log {hv_all['log']:.4g}")
    print(f"budget {budget} evaluations ({budget / len(grid_keys):.1%} of cells), {a.seeds} seeds per searcher")

    curves: dict[str, dict[str, list[list[float]]]] = {"linear": {}, "log": {}}
    seconds: dict[str, float] = {}
    for label in a.searchers.split(","):
        t0 = time.perf_counter()
        for kind in curves:
            curves[kind][label] = []
        for seed in range(a.seeds):
            order = run_one(space, table, label, seed, budget)
            for kind in curves:
                curves[kind][label].append(hv_curve(order, table, refs[kind], hv_all[kind], step, kind == "log"))
        seconds[label] = time.perf_counter() - t0
        for kind in ("log", "linear"):
            c = np.array([x + [x[-1]] * (budget // step - len(x)) for x in curves[kind][label]])
            reach = [next((step * (i + 1) for i, v in enumerate(row) if v >= 0.95), None) for row in c]
            got = [r for r in reach if r is not None]
            print(
                f"{label:>15} [{kind:>6} HV]: at {budget} evals {c[:, -1].mean():.3f} ± {c[:, -1].std():.3f} "
                f"(min {c[:, -1].min():.3f}); ≥95% by {len(got)}/{a.seeds} seeds"
                + (f", median {int(np.median(got))} evals ({np.median(got) / len(grid_keys):.1%})" if got else "")
                + (f"  [{seconds[label]:.0f} s]" if kind == "linear" else "")
            )

    a.out.mkdir(parents=True, exist_ok=True)
    tag = "synthetic" if a.synthetic_from_profile else "measured"
    (a.out / f"hv_{tag}.json").write_text(
        json.dumps({"mode": mode, "space": space.describe(), "budget": budget, "step": step, "curves": curves})
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("log", "linear"), strict=True):
        for label, cs in curves[kind].items():
            c = np.array([x + [x[-1]] * (budget // step - len(x)) for x in cs])
            xs = step * np.arange(1, c.shape[1] + 1)
            ax.plot(xs, c.mean(0), label=label)
            ax.fill_between(xs, c.min(0), c.max(0), alpha=0.15)
        ax.axhline(0.95, color="k", ls=":", lw=1, label="95% of exhaustive")
        ax.set_xlabel(f"evaluations (of {len(grid_keys)} distinct variants)")
        ax.set_ylabel(f"{kind} hypervolume / exhaustive")
        ax.set_title(f"{kind} HV — {a.model}: {mode}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = a.out / f"hv_{tag}.png"
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
