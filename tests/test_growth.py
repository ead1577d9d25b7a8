"""Per-arm stacks grow in amortised O(1): ``bandit_core._growth.append_rows``."""

from __future__ import annotations

import numpy as np

from bandit_core import make_policy
from bandit_core._growth import GROWTH, append_rows


class Owner:
    def __init__(self) -> None:
        self.stack = np.zeros((1, 2, 2))
        self.count = np.zeros(1, dtype=np.intp)


def test_appends_equal_concatenation_and_copy_the_stack_a_logarithmic_number_of_times() -> None:
    owner, reference = Owner(), Owner()
    rng = np.random.default_rng(0)
    buffers = set()
    for i in range(2000):
        block = rng.standard_normal((1, 2, 2))
        append_rows(owner, {"stack": block, "count": np.array([i])})
        reference.stack = np.concatenate([reference.stack, block])
        reference.count = np.concatenate([reference.count, [i]])
        buffers.add(id(owner.stack.base))
    np.testing.assert_array_equal(owner.stack, reference.stack)
    np.testing.assert_array_equal(owner.count, reference.count)
    assert owner.stack.shape == (2001, 2, 2) and owner.stack.flags.c_contiguous
    assert len(buffers) <= np.log(2001) / np.log(GROWTH) + 2  # 20 buffers, not 2,000


def test_a_replaced_or_shrunk_array_is_copied_once_and_never_overwritten() -> None:
    owner = Owner()
    append_rows(owner, {"stack": np.ones((3, 2, 2))})
    kept = owner.stack[:2].copy()
    owner.stack = owner.stack[:2]  # a view of the leading rows (an undo): must not be
    earlier = owner.stack  # written into behind a reader's back
    append_rows(owner, {"stack": np.full((1, 2, 2), 7.0)})
    np.testing.assert_array_equal(earlier, kept)
    owner.stack = owner.stack.copy()  # a restored copy has no spare rows
    append_rows(owner, {"stack": np.full((1, 2, 2), 8.0)})
    assert owner.stack.shape == (4, 2, 2) and owner.stack[-1, 0, 0] == 8.0


def test_per_arm_policies_learn_new_arms_one_at_a_time_as_in_one_batch() -> None:
    """Growing arm by arm gives the state one batch over all arms gives."""
    rng = np.random.default_rng(1)
    n = 300
    x, feats, rewards = rng.standard_normal((n, 3)), rng.standard_normal((n, 2)), rng.random(n)
    ids = [f"arm-{i}" for i in range(n)]
    for name, options in (("linucb", {}), ("hybrid_linucb", {"dim_arm": 2})):
        one, batch = (
            make_policy(name, dim_user=3, **options),
            make_policy(name, dim_user=3, **options),
        )
        for i in range(n):
            one.update(x[i], ids[i], float(rewards[i]), feats[i])
        batch.update_batch(x, ids, rewards, feats)
        a, b = one.to_state().arrays, batch.to_state().arrays
        for key, value in b.items():
            if key.endswith("pending"):  # rank-one bookkeeping a batch resets
                continue
            if key == "hybrid.scalars":  # Σr², n and the same bookkeeping
                a[key], value = a[key][:2], value[:2]
            if np.issubdtype(value.dtype, np.floating):
                np.testing.assert_allclose(a[key], value, rtol=1e-7, atol=1e-9, err_msg=key)
            else:
                np.testing.assert_array_equal(a[key], value, err_msg=key)
