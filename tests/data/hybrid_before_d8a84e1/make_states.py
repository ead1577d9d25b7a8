"""Hybrid LinUCB/LinTS states in the layout banditops wrote before d8a84e1 (each arm's
inverse Cholesky factor and the Schur complement stored, no scoring blocks), and what
that code computed from them: the fixtures of ``tests/test_hybrid.py``'s older-layout test.

Run with the code of that layout, not this one::

    git worktree add /tmp/before-d8a84e1 d8a84e1^
    (cd /tmp/before-d8a84e1 && PYTHONPATH=. python \
        /path/to/tests/data/hybrid_before_d8a84e1/make_states.py /path/to/tests/data/hybrid_before_d8a84e1)
"""

import sys
from pathlib import Path

import numpy as np

from bandit_core import Candidates, make_policy
from bandit_core.state import save_state

out = Path(sys.argv[1])
DU, DA = 4, 3
IDS = ("a", "b", "c", "d", "e")
rng = np.random.default_rng(2024)
feats = rng.standard_normal((len(IDS), DA))
n = 240
x = rng.standard_normal((n, DU))
arms = rng.integers(0, len(IDS), size=n)
r = x[:, 0] * (arms - 2) + 0.1 * rng.standard_normal(n)
cands = Candidates((*IDS[:4], "new"), np.random.default_rng(5).standard_normal((5, DA)))
contexts = np.random.default_rng(6).standard_normal((12, DU))
expected = {
    "x": x,
    "arms": arms,
    "r": r,
    "feats": feats,
    "contexts": contexts,
    "cand_features": cands.features,
    "cand_ids": np.array(cands.ids),
}
for name in ("hybrid_linucb", "hybrid_lints"):
    p = make_policy(name, dim_user=DU, dim_arm=DA, interactions=True, refactor_every=50)
    p.update_batch(x[:150], [IDS[a] for a in arms[:150]], r[:150], feats[arms[:150]])
    for t in range(150, n):  # online steps, some since the last refactorisation
        p.update(x[t], IDS[arms[t]], r[t], feats[arms[t]])
    assert p.model.pending_ > 0, p.model.pending_
    save_state(p.to_state(), out / f"{name}.npz")
    mean, proj, _ = p.model.terms(contexts, cands)
    k = p.model.dim_shared
    shared, own = proj[..., :k], proj[..., k:]
    cov = np.einsum("nak,nbk->nab", shared, shared)
    cov += np.einsum("nak,nak->na", own, own)[:, :, None] * np.eye(len(cands))
    expected[f"{name}.mean"] = mean
    expected[f"{name}.cov"] = cov
    expected[f"{name}.noise"] = np.array(p.model.noise_posterior())
    if name == "hybrid_linucb":
        expected[f"{name}.scores"] = p.select_batch(
            contexts, cands, np.random.default_rng(0)
        ).scores
np.savez_compressed(out / "expected.npz", **expected)
print(sorted(expected), {f.name: f.stat().st_size for f in out.iterdir()})
