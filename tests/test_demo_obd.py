"""``banditops demo --data``: train on an Open Bandit log's early impressions, estimate on
the rest. A synthetic campaign laid out like the real ones, with known click rates, checks
the numbers; the men sample (when present) checks the split and the references."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from benchmarks import obd
from ops.cli import app
from ops.cli import demo as demo_command
from ops.demo_obd import run_obd_demo
from validation.ope import bootstrap

#: The OBD demo's algorithm: ``banditops demo``'s default.
ALGORITHM = inspect.signature(demo_command).parameters["algorithm"].default

CTR = np.array([0.04, 0.04, 0.35, 0.04, 0.12, 0.04])  # item 2 is by far the best
PRIOR = {"alpha": [1.0, 1.0, 1.0, 1.0, 30.0, 1.0], "beta": [40.0] * 6}  # BTS favours item 4
N_RANDOM, N_BTS = 3000, 3000
DATA = Path(
    os.environ.get(
        "BANDITOPS_OBD_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "obd"
    )
)


def _plain(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def write_campaign(root: Path, seed: int = 5) -> Path:
    """``toy/``: item features, a uniform-random log and a BTS log over the same days,
    clicks drawn from :data:`CTR`, and the BTS prior."""
    rng = np.random.default_rng(seed)
    folder = root / "toy"
    folder.mkdir(parents=True)
    k = CTR.size
    items = pd.DataFrame(
        {
            "item_id": np.arange(k),
            "item_feature_0": rng.standard_normal(k),
            "item_feature_1": rng.choice(["c1", "c0"], k),
        }
    )
    dist = obd.bts_action_dist(np.array(PRIOR["alpha"]), np.array(PRIOR["beta"]), 3, 20_000)
    start = pd.Timestamp("2019-11-24", tz="UTC")
    for policy, n in (("random", N_RANDOM), ("bts", N_BTS)):
        items.to_csv(folder / f"item_context_{policy}.csv")
        position = rng.integers(0, 3, n)
        if policy == "random":
            item = rng.integers(0, k, n)
            pscore = np.full(n, 1.0 / k)
        else:
            item = np.array([rng.choice(k, p=dist[:, slot]) for slot in position])
            pscore = dist[item, position]
        seconds = np.sort(rng.uniform(0, 7 * 86400, n))
        log = pd.DataFrame(
            {
                "timestamp": (start + pd.to_timedelta(seconds, unit="s")).astype(str),
                "item_id": item,
                "position": position + 1,
                "click": (rng.random(n) < CTR[item]).astype(int),
                "propensity_score": pscore,
                "user_feature_0": rng.choice(["u_a", "u_b", "u_c"], n),
                "user_feature_1": rng.choice(["v_a", "v_b"], n),
            }
        ).sample(frac=1.0, random_state=seed)  # the loader sorts by time
        log.to_csv(folder / f"{policy}.csv")
    (folder / "bts_prior.yaml").write_text(yaml.safe_dump({"toy": PRIOR}))
    return folder


def test_replay_trains_on_the_past_and_estimates_the_holdout(tmp_path: Path) -> None:
    folder = write_campaign(tmp_path)
    result = run_obd_demo(folder, ALGORITHM, n_resamples=300, seed=1)
    train, holdout = result["train"], result["holdout"]
    assert (train["rounds"], holdout["rounds"]) == (2100, 900)
    assert train["end"] <= holdout["start"]  # a split in time

    raw = pd.read_csv(folder / "random.csv", index_col=0).sort_values("timestamp", kind="stable")
    clicks = raw["click"].to_numpy()
    assert (train["clicks"], holdout["clicks"]) == (clicks[:2100].sum(), clicks[2100:].sum())

    logging, trained, bts = (result["policies"][k] for k in ("logging", "trained", "bts"))
    # the logging policy's weights are all 1: IPS is the holdout's click rate, on 900 rows
    assert logging["ips"]["value"] == pytest.approx(clicks[2100:].mean(), abs=1e-12)
    assert logging["on_policy_ctr"] == pytest.approx(clicks[2100:].mean())
    assert logging["ips"]["ess"] == pytest.approx(900)
    for row in (logging, trained, bts):
        for name in ("ips", "snips", "dr"):
            assert row[name]["ci_low"] <= row[name]["value"] <= row[name]["ci_high"]
            assert row[name]["n_rounds"] == 900 and row[name]["level"] == 0.95

    # the trained policy found item 2: better than uniform (whose value is mean(CTR))
    assert trained["dr"]["value"] > 0.25 and logging["dr"]["ci_low"] < CTR.mean()
    better = result["trained_minus"]["logging"]["dr"]
    assert better["ci_low"] > 0.1
    assert better["value"] == pytest.approx(trained["dr"]["value"] - logging["dr"]["value"])

    # BTS estimated off-policy: its interval covers its true click rate, which its own
    # log over the holdout's period measures on-policy
    dist = obd.bts_action_dist(np.array(PRIOR["alpha"]), np.array(PRIOR["beta"]), 3, 100_000)
    truth = float((dist * CTR[:, None]).sum(axis=0).mean())  # slots equally often
    assert bts["dr"]["ci_low"] <= truth <= bts["dr"]["ci_high"]
    bts_raw = pd.read_csv(folder / "bts.csv", index_col=0)
    period = pd.to_datetime(bts_raw["timestamp"]) >= pd.Timestamp(holdout["start"])
    assert bts["on_policy_rounds"] == int(period.sum())
    assert bts["on_policy_ctr"] == pytest.approx(bts_raw.loc[period, "click"].mean())
    assert result["trained_minus"]["bts"]["dr"]["ci_low"] > 0


def test_the_demo_s_intervals_are_the_gate_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every interval the demo reports, each policy's and each paired difference, is the
    library's default (:data:`validation.ope.bootstrap.INTERVAL`), the gate's. The
    differences were intervals the demo computed on its own, which could drift from the
    gate's."""
    asked: list[str] = []

    def spy(rng: np.random.Generator, n_resamples: int, interval: str) -> Any:
        asked.append(interval)
        return bootstrap.extra_draws(rng, n_resamples, interval)

    for module in ("validation.ope.estimate", "validation.ope.evaluate"):
        monkeypatch.setattr(importlib.import_module(module), "extra_draws", spy)
    result = run_obd_demo(write_campaign(tmp_path), ALGORITHM, n_resamples=50, seed=1)
    policies, estimators = len(result["policies"]), 3
    differences = sum(len(d) for d in result["trained_minus"].values())
    assert differences == 2 * estimators
    assert asked == [bootstrap.INTERVAL] * (policies * estimators + differences)


def test_demo_data_prints_the_tables_and_writes_json(tmp_path: Path) -> None:
    folder = write_campaign(tmp_path)
    out = tmp_path / "obd.json"
    runner = CliRunner()
    result = runner.invoke(
        app, ["demo", "--data", str(folder), "--json", str(out), "--algorithm", "shared_linucb"]
    )
    assert result.exit_code == 0, result.output
    assert "click rate off-policy on the holdout (95% bootstrap intervals)" in result.output
    assert "trained vs logging: better" in result.output
    saved = json.loads(out.read_text())
    assert saved["algorithm"] == "shared_linucb" and saved["campaign"] == "toy"
    assert set(saved["policies"]) == {"trained", "logging", "bts"}

    (tmp_path / "empty").mkdir()
    refused = runner.invoke(app, ["demo", "--data", str(tmp_path / "empty")])
    assert refused.exit_code == 2
    assert "is not an Open Bandit campaign folder" in _plain(refused.output)
    unknown = runner.invoke(app, ["demo", "--data", str(folder), "--algorithm", "nope"])
    assert unknown.exit_code == 2 and "algorithm must be one of" in _plain(unknown.output)


@pytest.mark.skipif(
    not (DATA / "men" / "random.csv").is_file(),
    reason=f"Open Bandit sample not found under {DATA} (set BANDITOPS_OBD_DIR)",
)
def test_replay_of_the_men_campaign_sample() -> None:
    result = run_obd_demo(DATA / "men", ALGORITHM, n_resamples=100, bts_simulations=20_000)
    assert (result["n_items"], result["len_list"]) == (34, 3)
    assert (result["train"]["rounds"], result["holdout"]["rounds"]) == (7000, 3000)
    assert result["train"]["end"] <= result["holdout"]["start"]
    logging, bts = result["policies"]["logging"], result["policies"]["bts"]
    assert logging["ips"]["value"] == pytest.approx(result["holdout"]["clicks"] / 3000)
    raw = pd.read_csv(DATA / "men" / "bts.csv", usecols=["timestamp", "click"])
    period = pd.to_datetime(raw["timestamp"]) >= pd.Timestamp(result["holdout"]["start"])
    assert bts["on_policy_ctr"] == pytest.approx(raw.loc[period, "click"].mean())
    assert 0 < bts["ips"]["ess"] < 3000
