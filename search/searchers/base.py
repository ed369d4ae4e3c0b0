"""The searcher plug-in point: one interface, a registry, and the context every searcher runs in.

A searcher proposes cells of a :class:`~search.space.SearchSpace` and measures them only through
:meth:`SearchContext.evaluate` (the cached evaluator), so every searcher writes the same lookup table the same
way. The budget is ``trials`` distinct specs *finished by this run* (built, or answered from the table); a
proposal the run already has costs nothing, so samplers that repeat themselves still get ``trials`` distinct
variants. The run's ledger (``runs/<name>/evaluations.jsonl``) remembers which specs those are, so a search
killed at any point resumes where it stopped: a result the table has but the ledger missed counts, and the spec
that was in flight is built first (:meth:`SearchContext.finish_interrupted`).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from coinference.registry import Registry
from coinference.variant import VariantSpec
from search.evaluator import CachedEvaluator, Outcome
from search.space import SearchSpace


@dataclass(frozen=True)
class SearchOptions:
    """Searcher-specific settings (each searcher reads the ones it knows)."""

    sampler: str = "tpe"
    """Optuna / Ray Tune sampler: tpe, nsga2 or gp."""
    population_size: int = 20
    """NSGA-II population."""
    n_startup_trials: int = 10
    """TPE / GP random start-up trials."""
    address: str | None = None
    """Ray cluster address (default: $RAY_ADDRESS, else a local Ray)."""
    num_cpus: int | None = None
    """CPUs of a local Ray (default: all)."""
    cpus_per_trial: float = 1.0
    """CPUs reserved per Ray trial (tune.with_resources)."""
    max_concurrent: int | None = None
    """Ray trials in flight at once (default: as many as the CPUs allow)."""
    max_failures: int = 2
    """Ray FailureConfig retries of a trial whose worker died (a failed build is data, not a retry)."""
    ppo_timesteps: int = 512
    """PPO training steps (each step measures one variant through the cache)."""
    ppo_n_steps: int = 32
    """PPO rollout length."""
    maskable: bool = True
    """Use sb3-contrib MaskablePPO (action masks) instead of plain PPO."""
    sweep_bandwidths: tuple[float, ...] = (1e3, 1e4, 1e5, 1e6)
    """Bandwidths (bytes/s) whose policy choices the PPO searcher measures after training."""
    max_proposals_factor: int = 20
    """Give up after trials × this many proposals (a tiny space or a sampler stuck on repeats)."""


class Ledger:
    """The run's finished specs: key → outcome summary, appended to a JSONL file as they finish."""

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path = path
        self.done: dict[str, dict] = {}
        self.order: list[str] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume and path.exists():
                for line in path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    if row["key"] not in self.done:
                        self.done[row["key"]] = row
                        self.order.append(row["key"])
            else:
                path.write_text("")

    def add(self, out: Outcome, cell: Sequence[int] | None) -> bool:
        """Record a finished spec; False when the run already had it."""
        key = out.spec.key
        if key in self.done:
            return False
        row = {"key": key, "status": out.status, "cached": out.cached, "cell": list(cell) if cell else None}
        self.done[key] = row
        self.order.append(key)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return True


@dataclass
class SearchContext:
    """Everything a searcher needs; the searcher touches the table only through :meth:`evaluate`."""

    space: SearchSpace
    evaluator: CachedEvaluator
    trials: int
    """Budget: distinct specs this run finishes."""
    run_dir: Path | None = None
    """runs/<name>/ (study, checkpoints); None keeps everything in memory (benchmarks)."""
    resume: bool = False
    seed: int = 0
    accuracy_floor: float | None = None
    """Variants below it are infeasible (Optuna constraint, env floor); None: no constraint."""
    options: SearchOptions = field(default_factory=SearchOptions)
    ledger: Ledger = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.run_dir / "evaluations.jsonl" if self.run_dir else None, self.resume)
        if self.resume:
            self._adopt_unledgered()

    def _adopt_unledgered(self) -> None:
        """Add to the ledger the specs this run finished in the table but not in the ledger.

        The table commits a result before the ledger line is written; a kill between the two would otherwise
        leave a built variant outside the budget, and the resumed run would build one spec too many. The
        whole-model candidates a finished run measured are no part of the budget, and stay out.
        """
        for rec in self.evaluator.table.variants(run=self.name):
            if rec.status in ("ok", "failed") and rec.key not in self.ledger.done and not rec.spec.whole_model:
                out = Outcome(rec.spec, rec.status, rec.measurement, rec.error, False, rec.run)
                self.ledger.add(out, None)

    @property
    def name(self) -> str:
        return self.evaluator.run

    def remaining(self) -> int:
        """Budget left: trials − specs this run has finished."""
        return max(0, self.trials - len(self.ledger.done))

    def rung_counts(self) -> dict[str, int]:
        """Fidelity → specs this run finished at it: one entry, the space's (a ladder has one per rung)."""
        return {self.space.fidelity: len(self.ledger.done)}

    def seen(self, spec: VariantSpec) -> bool:
        """True when this run already finished ``spec``."""
        return spec.key in self.ledger.done

    def finish_interrupted(self) -> list[Outcome]:
        """Build first the specs this run left ``running`` (in flight when it was killed), within the budget.

        A resumed searcher need not propose them again (a sampler's state moved on), so without this step a
        variant would stay ``running`` in the table for good.
        """
        outs = []
        for rec in self.evaluator.table.variants(status="running", run=self.name):
            if self.remaining() <= 0:
                break
            outs.append(self.evaluate(rec.spec))
        return outs

    def evaluate(self, spec: VariantSpec, cell: Sequence[int] | None = None) -> Outcome:
        """Measure ``spec`` through the cache and add it to the run's ledger."""
        out = self.evaluator(spec)
        self.ledger.add(out, cell)
        return out

    def record(self, spec: VariantSpec, cell: Sequence[int] | None, **result: object) -> Outcome:
        """Store a result measured elsewhere (a Ray worker) and add it to the ledger."""
        out = self.evaluator.record(spec, **result)  # type: ignore[arg-type]
        self.ledger.add(out, cell)
        return out

    def max_proposals(self) -> int:
        return max(self.trials * self.options.max_proposals_factor, 50)


class Searcher(ABC):
    """A way to search the space. Implementations register with ``@SEARCHERS.register(name)``."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, ctx: SearchContext) -> None:
        """Propose and evaluate cells until ``ctx.remaining()`` is 0 (or the space is exhausted)."""


SEARCHERS: Registry[type[Searcher]] = Registry("searcher")
