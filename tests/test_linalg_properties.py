"""Property tests (hypothesis) for the linear-algebra kernels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bandit_core import linalg
from bandit_core.linalg import (
    inv_chol_rank1_update,
    inverse_cholesky,
    quad_form_rows,
    sufficient_statistics,
)

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def spd_and_vector(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    d = draw(st.integers(1, 8))
    m = draw(arrays(np.float64, (d + 2, d), elements=finite))
    lam = draw(st.floats(0.05, 5.0))
    x = draw(arrays(np.float64, (d,), elements=finite))
    return lam * np.eye(d) + m.T @ m, x


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


@settings(max_examples=150)
@given(spd_and_vector())
def test_rank_one_update_equals_refactorisation(case: tuple[np.ndarray, np.ndarray]) -> None:
    a, x = case
    u = inverse_cholesky(a)
    updated = inv_chol_rank1_update(u, x, +1.0)
    assert _rel(updated.T @ updated, np.linalg.inv(a + np.outer(x, x))) < 1e-8
    assert np.allclose(np.triu(updated, 1), 0.0)  # stays lower triangular


@settings(max_examples=150)
@given(spd_and_vector())
def test_downdate_undoes_update(case: tuple[np.ndarray, np.ndarray]) -> None:
    a, x = case
    u = inverse_cholesky(a)
    back = inv_chol_rank1_update(inv_chol_rank1_update(u, x, +1.0), x, -1.0)
    assert _rel(back.T @ back, np.linalg.inv(a)) < 1e-6


@settings(max_examples=60)
@given(spd_and_vector(), st.integers(1, 5))
def test_batched_update_equals_one_by_one(case: tuple[np.ndarray, np.ndarray], m: int) -> None:
    a, x = case
    stack_u = np.stack([inverse_cholesky(a + k * np.eye(len(x))) for k in range(m)])
    xs = np.stack([x * (k + 1) / m for k in range(m)])
    batched = inv_chol_rank1_update(stack_u, xs, +1.0)
    for k in range(m):
        np.testing.assert_allclose(
            batched[k], inv_chol_rank1_update(stack_u[k], xs[k]), rtol=1e-12, atol=1e-14
        )


@settings(max_examples=100)
@given(spd_and_vector(), st.integers(1, 6))
def test_quadratic_form_matches_inverse(case: tuple[np.ndarray, np.ndarray], n: int) -> None:
    a, x = case
    rows = np.stack([x * (k - 2) for k in range(n)])
    expected = np.einsum("ij,jk,ik->i", rows, np.linalg.inv(a), rows)
    got = quad_form_rows(inverse_cholesky(a), rows)
    assert np.all(got >= -1e-12)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9)


@settings(max_examples=100)
@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            arrays(np.float64, (n, 3), elements=finite),
            arrays(np.float64, (n,), elements=finite),
            arrays(np.float64, (n,), elements=st.floats(0, 2)),
            st.integers(1, 70),
        )
    )
)
def test_chunked_statistics_equal_the_direct_sums(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, int],
) -> None:
    phi, r, w, chunk = case
    gram, xty, yty, count = sufficient_statistics(phi, r, w, chunk_size=chunk)
    np.testing.assert_allclose(gram, (phi * w[:, None]).T @ phi, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(xty, phi.T @ (w * r), rtol=1e-10, atol=1e-9)
    assert np.isclose(yty, float(w @ (r * r)), rtol=1e-10, atol=1e-9)
    assert np.isclose(count, float(w.sum()))


@pytest.mark.parametrize("name", ["linucb", "lints", "linucb_arm_features"])
def test_per_arm_terms_copy_no_more_than_a_block_of_factors(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-arm scores read the candidates' factors a block at a time
    (:func:`bandit_core.linalg.gathered_product`): K candidates with d = 500 were one
    K × 2 MB copy (1,000 unseen arms: 2 GB and a second, on the event loop). Blocks of a
    single factor give the same terms and decisions, to the bit, as one product."""
    from bandit_core import make_policy
    from bandit_core.types import Candidates

    dims = {"dim_user": 6, **({"dim_arm": 2} if name.endswith("features") else {})}
    rng = np.random.default_rng(3)
    n = 40
    contexts = rng.standard_normal((n, 6))
    feats = rng.standard_normal((n, dims.get("dim_arm", 0)))
    policy = make_policy(name, **dims)
    policy.update_batch(contexts, [f"a{i % 7}" for i in range(n)], rng.random(n), feats)
    ids = [f"a{i}" for i in (6, 2, 9, 0, 11, 5)]  # unseen 9 and 11 (prior twice): not a slice
    cands = Candidates.from_any(ids, rng.standard_normal((len(ids), feats.shape[1])))
    x = rng.standard_normal(6)

    def outputs() -> list[np.ndarray]:
        one, batch = policy.model.terms_one(x, cands), policy.model.terms(contexts[:3], cands)
        decision = policy.select(x, cands, np.random.default_rng(1))
        return [
            *one,
            *batch,
            np.asarray(decision.probabilities),
            np.asarray(decision.scores),
            np.asarray(decision.arm),
        ]

    whole = outputs()
    monkeypatch.setattr(linalg, "GATHER_BYTES", 1)  # one factor per block
    for a, b in zip(whole, outputs(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_gathered_product_computes_each_distinct_row_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thousand unseen arms share the prior's head: with ``same_rows_same_result`` it
    is one product, not a thousand copies of one factor."""
    stack = np.random.default_rng(0).standard_normal((4, 3, 3))
    rows = np.array([0] * 1000 + [2, 0], dtype=np.intp)
    seen: list[int] = []

    def product(block: np.ndarray, _: slice) -> np.ndarray:
        seen.append(block.shape[0])
        return block @ np.ones(3)

    monkeypatch.setattr(linalg, "GATHER_BYTES", 1)
    out = linalg.gathered_product(stack, rows, product, 0, same_rows_same_result=True)
    np.testing.assert_array_equal(out, stack[rows] @ np.ones(3))
    assert sum(seen) == 2
