"""Multi-fidelity search: a fidelity ladder climbed by asynchronous successive halving (ASHA) on three objectives.

:class:`LadderContext` is the :class:`~search.searchers.base.SearchContext` a sampler runs in when the search has
a ladder (``coinfer search --fidelities screen,fast``); the sampler itself (grid, random, Optuna TPE / NSGA-II /
any other Optuna sampler) is unchanged and never knows there is a ladder:

- **Rung 0.** Every cell the sampler proposes is built at the cheapest fidelity (the space's), and the sampler is
  told that rung's measurement: it learns from the cheap rung only, as multi-fidelity TPE (BOHB's model on the
  lowest budget) does. That keeps the sampler's picture of the space uniform — every cell it has seen measured at
  one budget — where mixing rungs would compare a cheap value against a dear one; the ``--accuracy-floor``
  constraint it is given is checked against those cheap accuracies.
- **Promotion.** After every finished measurement, rung k (below the top) with m measured cells may have
  ⌊m/η⌋ of them promoted to rung k + 1; while it has promoted fewer, the best of its top ⌊m/η⌋ not yet promoted is
  built at rung k + 1 (higher rungs first, until nothing is promotable). *Best* orders the rung's measured cells as
  a constrained NSGA-II does: variants that reach the accuracy floor (all of them without one) by non-dominated
  rank on (validation accuracy ↑, device MACs ↓, payload + header bits ↓) — the objectives of every searcher —
  then within a rank by hypervolume contribution in the log-normalised space of the search metric
  (:func:`storage.metrics.contribution_order`), then by spec key; below the floor, the smallest shortfall first.
  A failed build is never promoted and is not counted in m.
- **Why asynchronous.** A variant is built one at a time in this process, and a search may stop at any point
  (budget, Ctrl-C, a kill and ``--resume``): ASHA promotes as soon as a rung has enough results to promote one, so
  top-rung measurements arrive from early on and a stopped search holds some, where synchronous successive halving
  would build nothing at the top rung before the whole first rung is done. Per rung it promotes at most as many
  cells as synchronous halving would (⌊m/η⌋); the price is that an early promotion is decided on fewer results
  (the best of the first η cells climbs as soon as they are in), and a cell promoted early stays promoted even if
  later results push it out of the top 1/η.
- **Cost.** ``trials`` counts distinct cells, as in a single-fidelity search: each costs one build at rung 0.
  Promotions are built on top of the budget: at most ⌊trials/η⌋ at rung 1, ⌊trials/η²⌋ at rung 2, …, so a run of
  ``trials`` cells makes fewer top-rung builds than a single-fidelity run of the same budget at the top fidelity.
  Every rung's build is a row of the table, its ``train_seconds`` its cost; the report sums them per rung.
- **Deterministic.** The order of builds depends only on the sampler's seeded proposals and the measurements
  (ties broken by key), so the same seed and measurements give the same builds in the same order.
- **Resume.** The ladder's state is the run's ledger: which cells were measured at which rung is read back from it
  (and the table) on ``--resume``, a promotion the kill interrupted is built first, and every promotion the
  results allow is made before the sampler goes on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from coinference.errors import ConfigError
from coinference.variant import VariantSpec
from search.evaluator import Outcome
from search.ladder import DEFAULT_ETA, check_ladder
from search.searchers.base import SearchContext


@dataclass
class LadderContext(SearchContext):
    """A :class:`SearchContext` whose :meth:`evaluate` measures at the ladder's first rung and promotes by ASHA.

    ``space`` must be at the first rung's fidelity; ``trials`` counts cells measured at the first rung.
    """

    ladder: tuple[str, ...] = ()
    """Fidelities, cheapest first (:func:`search.ladder.check_ladder`)."""
    eta: int = DEFAULT_ETA
    """Promotion rate: at most ⌊m/η⌋ of a rung's m measured cells climb to the next rung."""
    _rungs: list[dict[str, Outcome]] = field(init=False, repr=False)
    """Per rung: cell key → the outcome this run finished at that rung, in finishing order."""
    _cells: dict[str, tuple[int, ...]] = field(init=False, repr=False)
    """Cell key → the space's cell index (for the ledger's rows of promoted specs)."""

    def __post_init__(self) -> None:
        self.ladder = check_ladder(self.ladder, eta=self.eta, option="fidelity ladder")
        if self.space.fidelity != self.ladder[0]:
            raise ConfigError(
                f"the search space is at fidelity {self.space.fidelity!r}, not the ladder's first rung "
                f"{self.ladder[0]!r}"
            )
        self._rungs = [{} for _ in self.ladder]
        self._cells = {}
        super().__post_init__()
        table = self.evaluator.table
        for key in self.ledger.order:  # a resumed run: its rungs as the ledger and the table have them
            rec = table.get(key)
            if rec is None or rec.status not in ("ok", "failed"):
                continue
            cell = self.ledger.done[key].get("cell")
            self._note(Outcome(rec.spec, rec.status, rec.measurement, rec.error, True, rec.run), cell)

    # ------------------------------------------------------------------------------------------ budget
    def remaining(self) -> int:
        """Budget left: trials − cells this run measured at the first rung (promotions cost no budget)."""
        return max(0, self.trials - len(self._rungs[0]))

    def rung_counts(self) -> dict[str, int]:
        """Fidelity → cells this run finished at that rung (built, failed, or found in the table)."""
        return {f: len(r) for f, r in zip(self.ladder, self._rungs, strict=True)}

    # ------------------------------------------------------------------------------------------ measuring
    def evaluate(self, spec: VariantSpec, cell: Sequence[int] | None = None) -> Outcome:
        """Measure ``spec`` (a cell at the first rung, as the sampler proposes it; or a rung's spec a killed run
        left running) and make every promotion the results then allow; returns ``spec``'s own outcome, which is
        what the sampler learns from."""
        out = self._measure(spec, cell)
        self.promote()
        return out

    def finish_interrupted(self) -> list[Outcome]:
        """Build first what this run left ``running``: a first-rung cell within the budget, a promotion always
        (it costs no budget); then every promotion the results allow."""
        outs = []
        for rec in self.evaluator.table.variants(status="running", run=self.name):
            rung = self._rung(rec.spec)
            if rung is None or (rung == 0 and self.remaining() <= 0):
                continue
            outs.append(self._measure(rec.spec, None))
        self.promote()
        return outs

    def promote(self) -> int:
        """Build every promotion the rungs' results allow, higher rungs first; returns how many were built."""
        n = 0
        while (nxt := self._next_promotion()) is not None:
            rung, out = nxt
            self._measure(out.spec.with_(fidelity=self.ladder[rung + 1]), self._cells.get(out.spec.cell_key))
            n += 1
        return n

    def _measure(self, spec: VariantSpec, cell: Sequence[int] | None) -> Outcome:
        out = super().evaluate(spec, cell)
        self._note(out, cell)
        return out

    def _rung(self, spec: VariantSpec) -> int | None:
        """The rung ``spec`` is at (None: a whole-model candidate, or a fidelity off the ladder)."""
        if spec.whole_model or spec.fidelity not in self.ladder:
            return None
        return self.ladder.index(spec.fidelity)

    def _note(self, out: Outcome, cell: Sequence[int] | None) -> None:
        rung = self._rung(out.spec)
        if rung is None:
            return
        known = self._rungs[rung].get(out.spec.cell_key)
        if known is None or (not known.ok and out.ok):  # a failure rebuilt on --retry-failed counts as measured
            self._rungs[rung][out.spec.cell_key] = out
        if cell is not None:
            self._cells.setdefault(out.spec.cell_key, tuple(int(i) for i in cell))

    # ------------------------------------------------------------------------------------------ promotion
    def _next_promotion(self) -> tuple[int, Outcome] | None:
        """(rung, outcome) of the next cell to promote, from the highest rung that has one; None: nothing."""
        for k in reversed(range(len(self.ladder) - 1)):
            ranked = self.ranked(k)
            quota = len(ranked) // self.eta
            upper = self._rungs[k + 1]
            promoted = sum(1 for c in self._rungs[k] if c in upper)
            if promoted >= quota:
                continue
            for out in ranked[:quota]:
                if out.spec.cell_key not in upper:
                    return k, out
        return None

    def ranked(self, rung: int) -> list[Outcome]:
        """The measured cells of ``rung``, best first (see the module docstring): those at or above the accuracy
        floor by non-dominated rank, then hypervolume contribution, then key; then those below it, the smallest
        shortfall first."""
        from storage.metrics import contribution_order

        outs = sorted(
            (o for o in self._rungs[rung].values() if o.ok and _finite(o)), key=lambda o: o.spec.key
        )  # key order first: ties in what follows keep it
        floor = self.accuracy_floor
        above = [o for o in outs if floor is None or _acc(o) >= floor]
        below = sorted((o for o in outs if floor is not None and _acc(o) < floor), key=lambda o: -_acc(o))
        order = contribution_order([o.measurement for o in above if o.measurement is not None])
        return [above[i] for i in order] + below


def _acc(out: Outcome) -> float:
    assert out.measurement is not None
    return float(out.measurement.val_accuracy)


def _finite(out: Outcome) -> bool:
    m = out.measurement
    return m is not None and all(
        math.isfinite(float(v)) for v in (m.val_accuracy, m.device_macs, m.bits_mean + m.header_bits)
    )
