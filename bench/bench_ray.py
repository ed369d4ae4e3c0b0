"""Ray Tune throughput: the same search with 1 worker and with 2 workers, side by side.

The evaluator burns a fixed amount of single-threaded CPU per variant (``--kind burn``: a stand-in for a build,
so the figure measures Ray's parallelism, not a builder's variance; it needs 2 free cores to show it) or sleeps
(``--kind sleep``: Ray's scheduling and overhead alone, independent of other load on the machine), and returns a
toy measurement. Throughput = variants / wall-clock of ``Tuner.fit`` (Ray start-up excluded; all runs share one
local Ray started with 2 CPUs). The machine's load average is printed next to every figure.

    .venv/bin/python bench/bench_ray.py --trials 12 --work 1.5 --kind burn
    .venv/bin/python bench/bench_ray.py --trials 12 --work 2 --kind sleep
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coinference.variant import Measurement, VariantSpec
from search.evaluator import CachedEvaluator
from search.searchers import SEARCHERS, SearchContext, SearchOptions
from search.space import SearchSpace
from storage import open_table


class Burn:
    """Spin one core for ``seconds`` of process CPU time, then return a toy measurement."""

    def __init__(self, seconds: float, sleep: bool = False) -> None:
        self.seconds = seconds
        self.sleep = sleep

    def __call__(self, spec: VariantSpec) -> Measurement:
        import numpy as np

        if self.sleep:
            time.sleep(self.seconds)
        t0 = time.process_time()
        x = np.random.default_rng(0).standard_normal((96, 96))
        while not self.sleep and time.process_time() - t0 < self.seconds:
            x = np.tanh(x @ x.T / 96)
        return Measurement(
            accuracy=0.9 - 0.2 * spec.sparsity,
            device_macs=int(1e6 * (1 - spec.sparsity)),
            server_macs=1000,
            bits_mean=float((spec.codec.channels or 1) * (spec.codec.dim or 64) * spec.codec.bits),
            bits_max=1,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--work", type=float, default=1.5, help="seconds per variant (CPU time, or sleep)")
    ap.add_argument("--kind", choices=("burn", "sleep"), default="burn")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["OMP_NUM_THREADS"] = "1"
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - t0:.1f} s; cores here: {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    space = SearchSpace.for_model("resnet-digits")
    rates = {}
    for workers in (1, 2, 1, 2):
        table = open_table("sqlite://", name="ray-bench")
        ev = CachedEvaluator(table, Burn(a.work, a.kind == "sleep"), run=f"w{workers}")
        opts = SearchOptions(max_concurrent=workers, cpus_per_trial=1, sampler="tpe")
        ctx = SearchContext(space, ev, a.trials, None, False, workers, None, opts)
        t = time.perf_counter()
        SEARCHERS.get("ray")().run(ctx)
        dt = time.perf_counter() - t
        n = len(ctx.ledger.done)
        rates.setdefault(workers, []).append(n / dt)
        print(
            f"{workers} worker(s): {n} variants in {dt:.1f} s = {n / dt:.3f} variants/s (load {os.getloadavg()[0]:.1f})"
        )
        table.close()
    r1, r2 = max(rates[1]), max(rates[2])
    print(f"[{a.kind}] throughput ratio 2 workers / 1 worker: {r2 / r1:.2f}× (best of 2 runs each; ideal 2.0×)")
    ray.shutdown()


if __name__ == "__main__":
    main()
