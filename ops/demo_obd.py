"""``banditops demo --data DIR``: a policy trained on a real log and judged off-policy.

``DIR`` is one Open Bandit Dataset campaign (Saito et al., NeurIPS 2021 Datasets &
Benchmarks), e.g. ``../shared/data/obd/men``: ``random.csv`` (impressions logged by a
uniform-random policy), ``bts.csv`` (by Bernoulli Thompson sampling), their item features
and ``bts_prior.yaml``. The logs are read by :mod:`validation.obd` (time-sorted, one-hot
user features, label-encoded item features).

1. The uniform-random log is split in time: its first ``train_share`` of impressions
   train, the rest is the holdout.
2. ``algorithm`` learns from the training impressions: each one is a decision among the
   campaign's items (context: the user's one-hot features; arm features: the item's,
   standardised; positions pooled), with the click as reward.
3. On the holdout, IPS, SNIPS and DR (:mod:`validation.ope`; 95% bootstrap intervals,
   the library's default interval, the gate's; DR's reward model the benchmark's
   cross-fitted logistic regression, one per slot) estimate the click rate of the
   trained policy, of the logging policy (uniform) and of BTS with the campaign's prior
   and no updates (the Open Bandit protocol's evaluation policy), and the trained
   policy's difference to each of the two others with the gate's paired bootstrap
   interval (:func:`validation.ope.evaluate.paired_difference`: the same resampled rows
   for both policies).
4. On-policy references: the holdout's click rate for the logging policy, and the click
   rate of ``bts.csv`` over the holdout's period for BTS.

A trained policy is evaluated with the same distribution at every slot (the
position-independent case of :func:`validation.ope.policy_action_dist`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from bandit_core import Candidates, make_policy
from bandit_core._validation import FloatArray
from bandit_core.catalog import ALGORITHMS, CATALOG
from validation import obd
from validation.ope import (
    LoggedBatch,
    check_feedback,
    estimate,
    policy_action_dist,
)
from validation.ope.evaluate import paired_difference

ESTIMATORS = ("ips", "snips", "dr")
LEVEL = 0.95
POLICY_ROWS = ("trained", "logging", "bts")


def _timestamps(log_csv: Path) -> pd.Series:
    """The log's timestamps in :func:`validation.obd.load_log`'s row order."""
    raw = pd.read_csv(log_csv, usecols=["timestamp"]).sort_values("timestamp", kind="stable")
    return pd.to_datetime(raw["timestamp"], utc=True).reset_index(drop=True)


def standardize(features: FloatArray) -> FloatArray:
    """Columns centred and scaled to unit variance (constant columns only centred)."""
    scale = features.std(axis=0)
    standardized: FloatArray = (features - features.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return standardized


def policy_options(algorithm: str, dim_user: int, dim_arm: int, ids: list[str]) -> dict[str, Any]:
    """Options of ``algorithm`` for this campaign: the arm features and an arm one-hot
    where the policy takes them, user × item interactions, 200 Monte-Carlo draws."""
    if algorithm not in CATALOG:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}.")
    spec = CATALOG[algorithm]
    names = set(spec.option_names())
    options: dict[str, Any] = {"dim_user": dim_user}
    if spec.arm_features:
        options.update(dim_arm=dim_arm, interactions=True)
    if "arm_vocabulary" in names:
        options["arm_vocabulary"] = tuple(ids)
    if "n_sim" in names:
        options["n_sim"] = 200
    return options


def _estimates(feedback: Any, seed: int, n_resamples: int) -> dict[str, dict[str, Any]]:
    """Each estimator's result; estimator ``i`` resamples with seed ``(seed, i)``."""
    return {
        name: estimate(
            name, feedback, np.random.default_rng([seed, i]), n_resamples=n_resamples, level=LEVEL
        ).to_dict()
        for i, name in enumerate(ESTIMATORS)
    }


def run_obd_demo(
    folder: Path,
    algorithm: str,
    train_share: float = 0.7,
    n_resamples: int = 500,
    bts_simulations: int = 100_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Train on the early uniform-random log, estimate on the rest; the JSON-able result."""
    started = time.perf_counter()
    folder = Path(folder)
    if not 0.0 < train_share < 1.0:
        raise ValueError(f"train_share must be in (0, 1); got {train_share!r}.")
    missing = [
        name
        for name in ("random.csv", "bts.csv", "item_context_random.csv", "item_context_bts.csv")
        if not (folder / name).is_file()
    ] + ([] if (folder / "bts_prior.yaml").is_file() else ["bts_prior.yaml"])
    if missing:
        raise ValueError(
            f"{folder} is not an Open Bandit campaign folder: {', '.join(missing)} missing."
        )
    campaign = folder.name
    log = obd.load_log(folder / "random.csv", folder / "item_context_random.csv")
    bts_log = obd.load_log(folder / "bts.csv", folder / "item_context_bts.csv")
    alpha, beta = obd.load_prior(folder / "bts_prior.yaml", campaign)
    if alpha.shape[0] != log.n_actions:
        raise ValueError(f"the prior has {alpha.shape[0]} items; the log has {log.n_actions}.")
    stamps, bts_stamps = _timestamps(folder / "random.csv"), _timestamps(folder / "bts.csv")
    cut = round(train_share * log.n_rounds)
    if not 0 < cut < log.n_rounds:
        raise ValueError(f"train_share {train_share} leaves no training or holdout rows.")
    train, holdout = np.arange(cut), np.arange(cut, log.n_rounds)
    len_list = int(log.position.max()) + 1

    ids = [f"item-{a}" for a in range(log.n_actions)]
    features = standardize(log.action_context)
    options = policy_options(algorithm, log.context.shape[1], features.shape[1], ids)
    policy = make_policy(algorithm, **options)
    policy.update_batch(
        log.context[train],
        [ids[a] for a in log.action[train]],
        log.reward[train],
        features[log.action[train]] if "dim_arm" in options else None,
    )

    batch = LoggedBatch(
        contexts=log.context[holdout],
        candidates=Candidates.from_any(ids, features),
        actions=log.action[holdout],
        rewards=log.reward[holdout],
        pscore=log.pscore[holdout],
        positions=log.position[holdout],
        len_list=len_list,
    )
    q_hat = obd.logistic_reward_model().fit_predict(
        batch.contexts,
        batch.actions,
        batch.rewards,
        log.action_context,
        batch.positions,
        len_list,
        folds=obd.kfold_ids(batch.n_rounds),
    )
    n = batch.n_rounds
    dists = {
        "trained": policy_action_dist(policy, batch, np.random.default_rng([seed, 99])),
        "logging": np.full((n, log.n_actions, len_list), 1.0 / log.n_actions),
        "bts": np.broadcast_to(
            obd.bts_action_dist(alpha, beta, len_list, bts_simulations),
            (n, log.n_actions, len_list),
        ),
    }
    period_start = stamps[cut]
    in_period = (bts_stamps >= period_start).to_numpy()
    policies: dict[str, dict[str, Any]] = {}
    feedbacks: dict[str, Any] = {}
    for name, dist in dists.items():
        feedback = check_feedback(
            batch.rewards,
            batch.actions,
            batch.pscore,
            np.ascontiguousarray(dist),
            batch.positions,
            q_hat,
        )
        policies[name], feedbacks[name] = _estimates(feedback, seed, n_resamples), feedback
    policies["trained"]["label"] = f"{algorithm} trained on the first {cut} impressions"
    policies["logging"]["label"] = "uniform random (the logging policy)"
    policies["bts"]["label"] = f"Bernoulli TS, {campaign} prior, no updates"
    policies["trained"]["on_policy_ctr"] = None
    policies["logging"]["on_policy_ctr"] = float(batch.rewards.mean())
    policies["bts"]["on_policy_ctr"] = (
        float(bts_log.reward[in_period].mean()) if in_period.any() else None
    )
    policies["bts"]["on_policy_rounds"] = int(in_period.sum())
    differences: dict[str, dict[str, Any]] = {}
    for other in ("logging", "bts"):
        differences[other] = {}
        for i, name in enumerate(ESTIMATORS):
            rng = np.random.default_rng([seed, i])
            diff = paired_difference(
                feedbacks["trained"],
                feedbacks[other],
                name,
                rng,
                n_resamples=n_resamples,
                level=LEVEL,
            )
            differences[other][name] = {
                "value": diff.value,
                "ci_low": diff.ci_low,
                "ci_high": diff.ci_high,
            }
    return {
        "campaign": campaign,
        "data": str(folder.resolve()),
        "algorithm": algorithm,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "n_items": log.n_actions,
        "len_list": len_list,
        "train": _span(stamps, log.reward, train),
        "holdout": _span(stamps, log.reward, holdout),
        "level": LEVEL,
        "n_resamples": n_resamples,
        "reward_model": "LogisticRegression(C=100), per slot, 3-fold cross-fitted (DR)",
        "policies": {name: policies[name] for name in POLICY_ROWS},
        "trained_minus": differences,
        "seconds": time.perf_counter() - started,
    }


def _span(stamps: pd.Series, rewards: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    return {
        "rounds": int(rows.size),
        "clicks": int(rewards[rows].sum()),
        "start": stamps[int(rows[0])].isoformat(),
        "end": stamps[int(rows[-1])].isoformat(),
    }


def print_obd_result(result: dict[str, Any], console: Any) -> None:
    """The result as rich tables: estimates per policy, then the trained policy's
    differences."""
    train, holdout = result["train"], result["holdout"]
    console.print(
        f"Open Bandit campaign [bold]{result['campaign']}[/]: {result['n_items']} items, "
        f"{result['len_list']} slots; trained on {train['rounds']} uniform-random impressions "
        f"({train['clicks']} clicks, {train['start'][:19]} → {train['end'][:19]}), "
        f"evaluated on the next {holdout['rounds']} ({holdout['clicks']} clicks)"
    )
    level = f"{result['level']:.0%}"
    table = Table(title=f"click rate off-policy on the holdout ({level} bootstrap intervals)")
    table.add_column("policy")
    for name in ESTIMATORS:
        table.add_column(name.upper(), justify="right")
    table.add_column("ESS (IPS)", justify="right")
    table.add_column("on-policy CTR", justify="right")
    for key in POLICY_ROWS:
        row = result["policies"][key]
        cells = [
            f"{row[e]['value']:.4f} [{row[e]['ci_low']:.4f}, {row[e]['ci_high']:.4f}]"
            for e in ESTIMATORS
        ]
        ctr = row["on_policy_ctr"]
        table.add_row(
            row["label"], *cells, f"{row['ips']['ess']:.0f}", "-" if ctr is None else f"{ctr:.4f}"
        )
    console.print(table)
    diff = Table(title=f"trained policy minus … (paired bootstrap, {level})")
    diff.add_column("versus")
    for name in ESTIMATORS:
        diff.add_column(name.upper(), justify="right")
    for other in ("logging", "bts"):
        cells = [
            f"{d['value']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            for d in (result["trained_minus"][other][e] for e in ESTIMATORS)
        ]
        diff.add_row(result["policies"][other]["label"], *cells)
    console.print(diff)
    for other in ("logging", "bts"):
        dr = result["trained_minus"][other]["dr"]
        verdict = (
            "better"
            if dr["ci_low"] > 0
            else "worse"
            if dr["ci_high"] < 0
            else "not distinguishable (the DR interval of the difference contains 0)"
        )
        console.print(f"trained vs {other}: {verdict}")
