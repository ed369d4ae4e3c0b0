"""A fidelity ladder: the rungs a multi-fidelity search climbs, cheapest first, and the checks on it.

Light on purpose (no numpy, no searcher): the CLI checks ``--fidelities`` and ``--eta`` with it before any heavy
import. The search that climbs the ladder is :class:`search.searchers.asha.LadderContext`.
"""

from __future__ import annotations

from collections.abc import Sequence

from coinference.errors import ConfigError, UnknownNameError
from coinference.variant import FIDELITIES

DEFAULT_ETA = 3
"""Promotion rate: the best 1/η of a rung's measured cells climb to the next rung."""
LADDER_SEARCHERS = ("grid", "optuna", "random")
"""Searchers that climb a ladder: they propose cells one at a time and measure each through
``SearchContext.evaluate`` in this process. ``ray`` measures in workers and ``ppo`` learns a policy over edge
environments from the rewards it sees; both stay single-fidelity."""


def check_ladder(
    ladder: Sequence[str], searcher: str | None = None, eta: int = DEFAULT_ETA, option: str = "--fidelities"
) -> tuple[str, ...]:
    """``ladder`` as a tuple when it is a ladder: two or more known fidelities, none twice, strictly cheapest first
    (the order of :data:`coinference.variant.FIDELITIES`); ``searcher`` one that climbs ladders; ``eta`` ≥ 2.

    Raises:
        UnknownNameError: an unknown fidelity (the message lists the valid ones).
        ConfigError: one rung, a repeat, a rung dearer than the next, a searcher that cannot climb, η < 2.
    """
    rungs = tuple(ladder)
    text = ",".join(rungs)
    for f in rungs:
        if f not in FIDELITIES:
            raise UnknownNameError(f"{option}: unknown fidelity {f!r} in {text!r}; valid: {', '.join(FIDELITIES)}")
    for f in rungs:
        if rungs.count(f) > 1:
            raise ConfigError(f"{option} lists {f!r} twice, got {text!r}")
    if len(rungs) < 2:
        raise ConfigError(
            f"{option} {text!r} has one rung: a ladder climbs from a cheaper fidelity to a dearer one "
            f"(for one fidelity use --fidelity {text or 'NAME'})"
        )
    order = sorted(rungs, key=FIDELITIES.index)
    if list(rungs) != order:
        raise ConfigError(
            f"{option} {text!r} is not ordered by cost: give the rungs cheapest first, {','.join(order)} "
            f"(fidelities from cheapest: {', '.join(FIDELITIES)})"
        )
    if searcher is not None and searcher not in LADDER_SEARCHERS:
        raise ConfigError(
            f"{option} {text!r} works with the {', '.join(LADDER_SEARCHERS)} searchers, not {searcher!r} "
            "(it stays single-fidelity: use --fidelity)"
        )
    if isinstance(eta, bool) or eta < 2:
        raise ConfigError(f"--eta must be an integer ≥ 2 (the best 1/η of a rung climbs), got {eta!r}")
    return rungs


def ladder_label(ladder: Sequence[str], eta: int) -> str:
    """The ladder as run identities and reports write it: ``screen,fast (η 3)``."""
    return f"{','.join(ladder)} (η {eta})"
