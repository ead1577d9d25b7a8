"""The artwork-personalisation scenario: the simulator's contract and a short seeded regret
run (the full run is ``python -m benchmarks.artwork``, table in docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.artwork import ArtworkWorld, main, make_stream, run


def test_the_world_has_titles_with_3_to_10_artworks_and_taste_dependent_clicks() -> None:
    world = ArtworkWorld.make(np.random.default_rng(0), steps=1000, n_titles=30, new_titles=10)
    assert world.n_titles == 40
    sizes = [v.shape[0] for v in world.variants]
    assert min(sizes) >= 3 and max(sizes) <= 10
    assert all(v.shape[1] == world.dim_arm for v in world.variants)
    assert np.all(world.launch[:30] == 0) and np.all(world.launch[30:] == 500)
    rng = np.random.default_rng(1)
    best = set()
    for _ in range(200):
        taste = world.user(rng)
        assert taste.sum() == pytest.approx(1.0)
        p = world.click_probabilities(taste, 0)
        assert p.shape == (sizes[0],) and np.all((p > 0.0) & (p < 1.0))
        best.add(int(np.argmax(p)))
    assert len(best) > 1  # the best artwork depends on the user


def test_new_titles_appear_only_after_their_launch() -> None:
    world = ArtworkWorld.make(np.random.default_rng(0), steps=400, n_titles=20, new_titles=5)
    stream = make_stream(world, 400, np.random.default_rng(1), titles_per_step=3)
    for t, titles in enumerate(stream.titles):
        assert len(set(titles)) == 3
        assert all(world.launch[title] <= t for title in titles)
    late = sum(any(world.launch[x] > 0 for x in titles) for titles in stream.titles[200:])
    assert late >= 100  # about half the steps after launch show a new title


def test_shared_neural_linear_beats_per_title_lints_and_the_default_artwork() -> None:
    """600 seeded steps × 3 titles: regret of the shared neural-linear policy is below
    per-title LinTS's and the fixed default's, overall and on the titles launched mid-run."""
    results = {r.policy: r for r in run(["neural_linear", "per_title_lints", "default"], 600, [0])}
    neural = results["neural_linear"]
    for other in ("per_title_lints", "default"):
        assert neural.regret < results[other].regret
        assert neural.new_regret < results[other].new_regret
    assert neural.new_impressions > 0
    assert neural.impressions == 1800


def test_the_command_writes_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "artwork.json"
    main(["--policies", "default,uniform", "--steps", "50", "--seeds", "0,1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "artwork" and data["seeds"] == [0, 1]
    summary = {s["policy"]: s for s in data["summary"]}
    assert summary["uniform"]["seeds"] == 2
    assert len(data["runs"]) == 4
    with pytest.raises(SystemExit):
        main(["--policies", "nope", "--steps", "50"])
