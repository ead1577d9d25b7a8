"""What one decision costs, in work units: about one multiply-add each.

A decision among ``n`` candidates is dominated by a few dense products whose sizes the
policy's own configuration fixes, not the request: the per-candidate quadratic form
``‖U x‖`` of a linear head of dimension ``d`` (``n·d²``, the term a count of features
alone misses: a per-arm head of ``d = 2,048`` costs ~800 ms for 60 candidates), the
posterior draws of Monte-Carlo Thompson sampling (``S·n·d``: ``S`` draws, each scoring
every candidate), the quadrature of exact per-arm Thompson propensities, a network's
forward passes. Each policy class states its decision's work in ``decision_work(n)``
from these terms; :func:`decision_work` finds the policy inside any wrappers (their own
work is per candidate and small).

``benchmarks.work_units`` times every policy at several widths against these counts: a
unit costs about 0.04 ns on the reference machine (one core) for the decisions that
take a millisecond or more, so a budget in units is a budget in time to within the
spread the table shows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from bandit_core.montecarlo import draw_pairs

#: Work per candidate and choice beyond the products: building its row, its
#: probability, the argmax (~0.1 µs).
PER_CANDIDATE = 2_000
#: Weight of a multiply-add of a per-arm head's quadratic form: each candidate's product
#: streams its own arm's ``d × d`` factor (a matrix-vector product), about 16× the time
#: of one in the matrix products of a shared head or of the posterior draws.
PER_ARM = 16
#: Work per candidate of the exact per-arm Thompson propensities (the densities and
#: distribution functions of :mod:`bandit_core.argmax_quadrature` at its panels' nodes,
#: ~3.5 µs a candidate).
QUADRATURE = 80_000
#: Work of one standard normal variate (~2 ns: a hundred multiply-adds of a product).
NORMAL = 50


def linear_work(n: int, d: int, per_arm: bool = False) -> int:
    """A linear head's scores of ``n`` candidates: the mean ``n·d``, ``U x`` ``n·d²``
    (weighted by :data:`PER_ARM` for a head per arm)."""
    square = d * d * (PER_ARM if per_arm else 1)
    return n * (square + 2 * d + PER_CANDIDATE)


def draws_work(n: int, d: int, draws: int, normals: int) -> int:
    """``draws`` joint posterior draws of dimension ``d`` scoring ``n`` candidates, each
    draw taking ``normals`` standard normal variates (:data:`NORMAL` each), and the win
    counts of each candidate."""
    return draws * (n * (d + 2) + NORMAL * normals)


def monte_carlo_draws(config: Any) -> int:
    """The most posterior draws one Monte-Carlo decision makes: ``S = 2·⌈(n_sim + 1)/2⌉``
    (:func:`bandit_core.montecarlo.draw_pairs`); with ``target_rel_error``, a pilot of S
    and then up to ``max_sim`` (:func:`bandit_core.montecarlo.thompson_draws`)."""
    half = draw_pairs(int(config.n_sim))
    cap = max(half, int(getattr(config, "max_sim", 2 * half)) // 2)
    if getattr(config, "target_rel_error", None) is not None and cap > half:
        return 2 * (half + cap)
    return 2 * half


def mlp_work(dim_in: int, hidden: Sequence[int]) -> int:
    """One forward pass of one row through ``dim_in → hidden… → 1``."""
    widths = [dim_in, *hidden, 1]
    return sum(a * b for a, b in itertools.pairwise(widths))


def decision_work(policy: Any, n_candidates: int) -> int:
    """Work units of one choice of ``policy`` among ``n_candidates`` (at least 1).

    The policy inside any wrappers states it (``decision_work``); a policy that does not
    counts :data:`PER_CANDIDATE` per candidate."""
    n = max(int(n_candidates), 1)
    while policy is not None:
        own = getattr(type(policy), "decision_work", None)
        if callable(own):
            return max(1, int(own(policy, n)))
        policy = getattr(policy, "inner", None)
    return n * PER_CANDIDATE
