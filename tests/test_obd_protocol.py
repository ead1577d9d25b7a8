"""The Open Bandit protocol's pieces on a small synthetic campaign laid out like the real one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.model_selection import KFold

from benchmarks import obd

N_ITEMS = 5
N_ROWS = 600


def write_campaign(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "toy"
    folder.mkdir(parents=True)
    items = pd.DataFrame(
        {
            "item_id": np.arange(N_ITEMS),
            "item_feature_0": rng.standard_normal(N_ITEMS),
            "item_feature_1": rng.choice(["h1", "h0", "h2"], N_ITEMS),
            "item_feature_2": rng.choice(["zz", "aa"], N_ITEMS),
        }
    )
    for policy in ("random", "bts"):
        items.to_csv(folder / f"item_context_{policy}.csv")
        stamps = pd.Timestamp("2019-11-24", tz="UTC") + pd.to_timedelta(
            rng.permutation(N_ROWS), unit="s"
        )
        log = pd.DataFrame(
            {
                "timestamp": stamps.astype(str),
                "item_id": rng.integers(0, N_ITEMS, N_ROWS),
                "position": rng.integers(1, 4, N_ROWS),
                "click": (rng.random(N_ROWS) < (0.3 if policy == "random" else 0.4)).astype(int),
                "propensity_score": np.full(N_ROWS, 1 / N_ITEMS),
                "user_feature_0": rng.choice(["u_b", "u_a"], N_ROWS),
                "user_feature_1": rng.choice(["v_c", "v_b", "v_a"], N_ROWS),
            }
        )
        log.to_csv(folder / f"{policy}.csv")
    prior = {"toy": {"alpha": [2.0, 5.0, 3.0, 1.0, 4.0], "beta": [20.0, 30.0, 25.0, 10.0, 40.0]}}
    (folder / "bts_prior.yaml").write_text(yaml.safe_dump(prior))
    return folder


def test_load_log_sorts_by_time_and_indexes_positions_and_features(tmp_path: Path) -> None:
    folder = write_campaign(tmp_path)
    log = obd.load_log(folder / "random.csv", folder / "item_context_random.csv")
    raw = pd.read_csv(folder / "random.csv", index_col=0)
    order = np.argsort(raw["timestamp"].to_numpy(), kind="stable")
    np.testing.assert_array_equal(log.action, raw["item_id"].to_numpy()[order])
    np.testing.assert_array_equal(log.position, raw["position"].to_numpy()[order] - 1)
    # one-hot, first level of each user feature dropped: u_b; v_b, v_c
    expected = np.column_stack(
        [
            raw["user_feature_0"].to_numpy()[order] == "u_b",
            raw["user_feature_1"].to_numpy()[order] == "v_b",
            raw["user_feature_1"].to_numpy()[order] == "v_c",
        ]
    ).astype(float)
    np.testing.assert_array_equal(log.context, expected)
    items = pd.read_csv(folder / "item_context_random.csv", index_col=0)
    for col, name in enumerate(["item_feature_1", "item_feature_2"]):
        codes = {v: i for i, v in enumerate(sorted(set(items[name])))}  # label encoding
        np.testing.assert_array_equal(log.action_context[:, col], [codes[v] for v in items[name]])
    np.testing.assert_array_equal(log.action_context[:, 2], items["item_feature_0"])


def test_bts_action_dist_is_the_per_simulation_definition() -> None:
    # oracle: one Beta row per simulation from the legacy stream, ranked by decreasing draw
    alpha, beta = np.array([2.0, 5.0, 3.0, 1.0, 4.0]), np.array([20.0, 30.0, 25.0, 10.0, 40.0])
    stream = np.random.RandomState(12345)
    counts = np.zeros((5, 3))
    for _ in range(400):
        ranked = stream.beta(alpha, beta).argsort()[::-1][:3]
        counts[ranked, np.arange(3)] += 1
    for block in (1, 7, 400, 10_000):
        np.testing.assert_array_equal(
            obd.bts_action_dist(alpha, beta, 3, 400, block=block), counts / 400
        )


def test_bootstrap_rows_and_folds_follow_the_reference_seeds() -> None:
    np.testing.assert_array_equal(
        obd.bootstrap_rows(50, 3),
        np.random.RandomState(3).choice(np.arange(50), size=50, replace=True),
    )
    folds = obd.kfold_ids(30, 3)
    for j, (_, test) in enumerate(
        KFold(3, shuffle=True, random_state=12345).split(np.zeros((30, 1)))
    ):
        assert set(np.flatnonzero(folds == j)) == set(test)


def test_prior_errors_name_the_campaign(tmp_path: Path) -> None:
    folder = write_campaign(tmp_path)
    with pytest.raises(ValueError, match="has no prior for campaign 'men'"):
        obd.load_prior(folder / "bts_prior.yaml", "men")


def test_benchmark_end_to_end_writes_the_documented_json(tmp_path: Path) -> None:
    folder = write_campaign(tmp_path)
    out = tmp_path / "obd.json"
    obd.main(
        [
            "--data-dir",
            str(tmp_path),
            "--campaign",
            "toy",
            "--n-boot",
            "3",
            "--n-sim",
            "2000",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    bts = pd.read_csv(folder / "bts.csv", index_col=0)
    assert result["campaign"] == "toy"
    assert result["ground_truth"] == bts["click"].mean()
    assert result["n_rounds"] == N_ROWS
    assert set(result["estimators"]) == {"ipw", "snipw", "dm", "dr", "sndr", "switch_dr", "dros"}
    for key, e in result["estimators"].items():
        assert {"estimate", "relative_ee_mean", "relative_ee_std"} <= set(e)
        boots = np.asarray(e["bootstrap_estimates"])
        rel = np.abs(boots - result["ground_truth"]) / result["ground_truth"]
        assert e["relative_ee_mean"] == pytest.approx(rel.mean(), rel=1e-12), key
        assert e["relative_ee_std"] == pytest.approx(rel.std(ddof=1), rel=1e-12), key
    assert result["estimators"]["switch_dr"]["lambda_tuned"] is True
    assert len(result["estimators"]["dros"]["bootstrap_lambdas"]) == 3


def test_fixed_lambdas_are_used(tmp_path: Path) -> None:
    write_campaign(tmp_path)
    result = obd.run(
        tmp_path,
        "toy",
        n_boot=2,
        n_sim=500,
        options={"switch_dr": {"lambda_": np.inf}, "dros": {"lambda_": np.inf}},
    )
    est = result["estimators"]
    # λ = ∞ is plain DR for both
    assert est["switch_dr"]["bootstrap_estimates"] == est["dr"]["bootstrap_estimates"]
    assert est["dros"]["estimate"] == est["dr"]["estimate"]
    assert est["dros"]["lambda_tuned"] is False
