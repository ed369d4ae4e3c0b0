"""The CIFAR-10 / ResNet-20 reference table: an exhaustive grid of variants built at two fidelities, the ground
truth every search benchmark replays (issue 23).

Every cell of a fixed grid (split × device sparsity × compression ratio × quantizer bits; :data:`LEVELS`) is built
at the cheap rung (``screen``) and at ``fast`` with the real builder, into an ordinary lookup table under
``--run`` (artifacts included, so its variants can be exported and served), by ``--workers`` processes of one
thread each. Cells that share a pruned device part (same split and sparsity) go to the same worker, so no pruning
is done twice. Each build's cost is measured as CPU seconds of its process (``time.process_time``; one thread, so
the figure does not depend on how loaded the machine is) and kept apart as pruning (paid once per split ×
sparsity × fidelity) and codec + evaluation (paid per cell), so that a replayed searcher can be charged what its
own choices would have cost.

The measurements (no model artifacts) go to ``--out`` as a JSON fixture with the command, the commit it was built
at, the machine, and the rank agreement (Spearman ρ of validation accuracy) between the rungs::

    .venv/bin/python bench/build_reference.py --weights runs/base/resnet20-cifar10.pt \\
        --data-dir ../shared/data/cifar10 --run runs/reference-resnet20 --workers 2 \\
        --out bench/fixtures/reference-resnet20-cifar10.json

Re-running resumes: cells in the run's table are not rebuilt, and with ``--resume-from FIXTURE`` cells already in
a fixture (same spec key: same base weights, fidelity, seed, split) are copied rather than rebuilt, so a build
interrupted by a lost machine continues from the committed fixture. ``--dump`` only writes the fixture from what
the run holds now. Nothing here reads test labels to choose anything: test accuracy is stored beside each cell
for reporting only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
FORMAT = "coinference.reference/1"
MODEL = "resnet20"
FIDELITY_LADDER = ("screen", "fast")
"""Cheap rung first."""
LEVELS: dict[str, tuple[Any, ...]] = {
    # two splits per stage at the spatial features (after its first block and the full-resolution one), the
    # deepest spatial split, and the pooled feature: from a 0.5 M-MAC device part to nearly the whole model
    "splits": ("layer1.0", "layer1.2", "layer2.1", "layer3.0", "layer3.2"),
    "sparsities": (0.0, 0.2, 0.4, 0.6),
    "ratios": (16.0, 64.0, 256.0),
    "bits": (2, 4),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="base checkpoint (coinfer base)")
    p.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10 python batches")
    p.add_argument("--run", type=Path, default=Path("runs/reference-resnet20"), help="run folder (table + cache)")
    p.add_argument("--out", type=Path, default=Path("bench/fixtures/reference-resnet20-cifar10.json"))
    p.add_argument("--workers", type=int, default=2, help="build processes, one thread each")
    p.add_argument("--resume-from", type=Path, default=None, help="a fixture whose cells are copied, not rebuilt")
    p.add_argument("--dump", action="store_true", help="only write the fixture from what the run holds")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be ≥ 1, got {args.workers}")
    for what, path in (("--weights", args.weights), ("--data-dir", args.data_dir)):
        if not path.exists():
            p.error(f"{what} {path} does not exist")
    if args.resume_from is not None and not args.resume_from.is_file():
        p.error(f"--resume-from {args.resume_from} is not a file")
    return args


def spaces(weights: Path) -> dict[str, Any]:
    from coinference.zoo import file_sha256
    from search.space import SearchSpace

    sha = file_sha256(weights)
    return {
        f: SearchSpace.for_model(
            MODEL,
            splits=LEVELS["splits"],
            sparsities=LEVELS["sparsities"],
            ratios=LEVELS["ratios"],
            bits=LEVELS["bits"],
            fidelity=f,
            weights_sha256=sha,
        )
        for f in FIDELITY_LADDER
    }


def plan(weights: Path) -> list[dict[str, Any]]:
    """One entry per distinct fast-rung spec: its cell, and its spec at every rung."""
    by_fid = spaces(weights)
    rows = []
    fast = by_fid["fast"]
    for index, _spec in fast.grid():
        params = fast.params(index)
        rows.append(
            {
                "cell": {k: (float(v) if isinstance(v, float) else v) for k, v in params.items()},
                "specs": {f: by_fid[f].spec(index) for f in FIDELITY_LADDER},
            }
        )
    return rows


def groups_for(rows: list[dict[str, Any]], workers: int) -> list[list[int]]:
    """Row indices per worker: a (split, sparsity) group stays whole; groups are dealt largest first to the
    least-loaded worker (cost ∝ rows, the deep splits a little dearer but the same for every group size)."""
    groups: dict[tuple[str, float], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["cell"]["split"], r["cell"]["sparsity"]), []).append(i)
    out: list[list[int]] = [[] for _ in range(workers)]
    for members in sorted(groups.values(), key=len, reverse=True):
        min(out, key=len).extend(members)
    return [w for w in out if w]


def open_run(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from coinference.build import Builder
    from search.evaluator import CachedEvaluator
    from search.runs import sqlite_url
    from storage import open_table

    args.run.mkdir(parents=True, exist_ok=True)
    table = open_table(sqlite_url((args.run / "lookup.db").resolve()), name=args.run.name)
    builder = Builder(args.weights, args.data_dir, (args.run / "cache").resolve())
    return table, builder, CachedEvaluator(table, builder.measure, args.run.name, artifacts=builder.artifacts)


def worker(args: argparse.Namespace) -> None:
    """Build this worker's rows, top rung first, appending one cost line per build."""
    import torch

    from coinference.fidelity import FIDELITIES

    torch.set_num_threads(1)
    rows = plan(args.weights)
    mine = json.loads((args.run / "plan.json").read_text())["workers"][args.worker]
    table, builder, ev = open_run(args)
    log = args.run / f"costs-{args.worker}.jsonl"
    done = {json.loads(line)["key"] for line in log.read_text().splitlines()} if log.exists() else set()
    try:
        # the top rung of every cell first (the ground truth), then the cheap rung: a build cut short still leaves
        # a whole exhaustive table; a group's cells stay together, so its pruning is done once per rung
        for f, i in [(f, i) for f in reversed(FIDELITY_LADDER) for i in mine]:
            spec = rows[i]["specs"][f]
            if spec.key in done or ev.lookup(spec) is not None:
                continue
            c0, w0 = time.process_time(), time.perf_counter()
            builder.prune(spec, FIDELITIES.get(f))  # paid by the first cell of its group, free after
            c1 = time.process_time()
            out = ev(spec)
            c2, w2 = time.process_time(), time.perf_counter()
            line = {
                "key": spec.key,
                "fidelity": f,
                "status": out.status,
                "prune_cpu_s": round(c1 - c0, 3),
                "cell_cpu_s": round(c2 - c1, 3),
                "wall_s": round(w2 - w0, 3),
            }
            with log.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            print(
                f"[w{args.worker}] {f} {rows[i]['cell']} {out.status} "
                f"{line['prune_cpu_s'] + line['cell_cpu_s']:.1f} CPU s",
                flush=True,
            )
    finally:
        table.close()


def git_state() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {
        "commit": run("git", "rev-parse", "HEAD"),
        "dirty": bool(run("git", "status", "--porcelain", "--", "coinference", "search", "storage", "bench")),
    }


def setup(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, float]:
    """In this process, before the workers: base model, teacher logits (disk-cached, shared by every build) and
    the whole-model candidates at every rung. Returns their CPU seconds."""
    import torch

    from search.run import whole_model_specs

    torch.set_num_threads(1)
    table, builder, ev = open_run(args)
    try:
        c0 = time.process_time()
        first = rows[0]["specs"]["fast"]
        builder.teacher_logits(first)
        c1 = time.process_time()
        for space in spaces(args.weights).values():
            for spec in whole_model_specs(space):
                ev(spec)
        c2 = time.process_time()
    finally:
        table.close()
    return {"base_and_teacher_cpu_s": round(c1 - c0, 3), "whole_model_cpu_s": round(c2 - c1, 3)}


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def dump(args: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Write the fixture from the run's table and cost logs (and --resume-from's cells)."""
    from search.run import whole_model_specs
    from search.runs import sqlite_url
    from storage import open_table

    costs: dict[str, dict[str, Any]] = {}
    for log in sorted(args.run.glob("costs-*.jsonl")):
        for line in log.read_text().splitlines():
            c = json.loads(line)
            costs[c["key"]] = c
    prior = {}
    if args.resume_from is not None:
        old = json.loads(args.resume_from.read_text())
        for cell in old["cells"]:
            for entry in cell["rungs"].values():
                prior[entry["key"]] = entry
    table = open_table(sqlite_url((args.run / "lookup.db").resolve()), name=args.run.name)
    try:
        cells, missing = [], 0
        for r in rows:
            rungs = {}
            for f, spec in r["specs"].items():
                rec = table.get(spec.key)
                if spec.key in prior and spec.key not in costs:
                    rungs[f] = prior[spec.key]  # copied from --resume-from with the cost measured when it was built
                elif rec is not None and rec.status == "ok":
                    c = costs.get(spec.key, {})
                    rungs[f] = {
                        "key": spec.key,
                        "spec": json.loads(spec.to_json()),
                        "measurement": rec.measurement.to_dict(),
                        "prune_cpu_s": c.get("prune_cpu_s"),
                        "cell_cpu_s": c.get("cell_cpu_s"),
                        "wall_s": c.get("wall_s"),
                    }
                elif rec is not None and rec.status == "failed":
                    c = costs.get(spec.key, {})
                    rungs[f] = {
                        "key": spec.key,
                        "spec": json.loads(spec.to_json()),
                        "failed": rec.error,
                        "prune_cpu_s": c.get("prune_cpu_s"),
                        "cell_cpu_s": c.get("cell_cpu_s"),
                        "wall_s": c.get("wall_s"),
                    }
                else:
                    missing += 1
            cells.append({"cell": r["cell"], "rungs": rungs})
        whole = []
        for f, space in spaces(args.weights).items():
            for spec in whole_model_specs(space):
                rec = table.get(spec.key)
                if rec is not None and rec.status == "ok":
                    whole.append(
                        {
                            "fidelity": f,
                            "key": spec.key,
                            "spec": json.loads(spec.to_json()),
                            "measurement": rec.measurement.to_dict(),
                        }
                    )
    finally:
        table.close()
    both = [c for c in cells if all("measurement" in c["rungs"].get(f, {}) for f in FIDELITY_LADDER)]
    acc = {f: [c["rungs"][f]["measurement"]["val_accuracy"] for c in both] for f in FIDELITY_LADDER}

    def total(f: str, part: str) -> float:
        return round(sum(c["rungs"][f].get(part) or 0.0 for c in cells if f in c["rungs"]), 1)

    doc = {
        "format": FORMAT,
        "model": MODEL,
        "dataset": "cifar10",
        "levels": LEVELS,
        "fidelities": list(FIDELITY_LADDER),
        **meta,
        "complete": missing == 0,
        "cells_total": len(rows),
        "builds_missing": missing,
        "build_cpu_s": {
            f: {"prune": total(f, "prune_cpu_s"), "cells": total(f, "cell_cpu_s")} for f in FIDELITY_LADDER
        },
        "rank_agreement": {
            "metric": "Spearman rho of validation accuracy, cells measured at both rungs",
            "n": len(both),
            "rho": round(spearman(acc["screen"], acc["fast"]), 4) if len(both) >= 3 else None,
        },
        "whole_model": whole,
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=None, separators=(",", ":")).replace('{"cell":', '\n{"cell":') + "\n")
    tmp.replace(args.out)
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return 0
    rows = plan(args.weights)
    meta_path = args.run / "meta.json"
    if args.dump:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        doc = dump(args, rows, meta)
        print(
            f"{args.out}: {sum(len(c['rungs']) for c in doc['cells'])} builds, missing {doc['builds_missing']}, "
            f"rho {doc['rank_agreement']}"
        )
        return 0
    args.run.mkdir(parents=True, exist_ok=True)
    if args.resume_from is not None:
        # copied cells are recorded in the run's table as they were measured, so nothing rebuilds them
        from coinference.variant import Measurement, VariantSpec

        table, _, ev = open_run(args)
        try:
            old = json.loads(args.resume_from.read_text())
            for cell in old["cells"]:
                for entry in cell["rungs"].values():
                    if "measurement" in entry and ev.lookup(VariantSpec.from_dict(entry["spec"])) is None:
                        ev.record(VariantSpec.from_dict(entry["spec"]), Measurement.from_dict(entry["measurement"]))
        finally:
            table.close()
    work = groups_for(rows, args.workers)
    (args.run / "plan.json").write_text(json.dumps({"workers": work}))
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    shared = setup(args, rows)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker", str(k)], env=env
        )
        for k in range(len(work))
    ]
    rcs = [p.wait() for p in procs]
    import torch

    meta = {
        "command": "python bench/build_reference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        **git_state(),
        "started": started,
        "wall_s": round(time.perf_counter() - t0, 1),
        "workers": len(work),
        "threads_per_worker": 1,
        "machine": {
            "host": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "shared_cpu_s": shared,
        "worker_exit_codes": rcs,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    doc = dump(args, rows, meta)
    print(
        f"{args.out}: {len(doc['cells'])} cells, missing {doc['builds_missing']}, wall {meta['wall_s']} s, "
        f"CPU {doc['build_cpu_s']}, rho {doc['rank_agreement']}"
    )
    return 0 if all(rc == 0 for rc in rcs) else 1


if __name__ == "__main__":
    sys.exit(main())
