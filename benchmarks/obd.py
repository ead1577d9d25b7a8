"""The Open Bandit Pipeline's evaluation of OPE on real data, reproduced with ``validation.ope``.

    python -m benchmarks.obd --data-dir DIR --campaign men --n-boot 30 --n-sim 1000000 \\
        --json OUT.json

``DIR/<campaign>/`` holds ``random.csv`` and ``bts.csv`` (ZOZOTOWN impressions logged by a
uniform-random and a Bernoulli-Thompson-sampling policy), ``item_context_random.csv`` and
``bts_prior.yaml`` (the BTS Beta prior, keyed by campaign). Protocol (Saito, Aihara,
Matsutani & Narita, NeurIPS 2021 Datasets & Benchmarks, §4; the Open Bandit Pipeline's
``OpenBanditDataset``, ``BernoulliTS`` and ``examples/obd``):

1. each log is sorted by ``timestamp`` (stable); ``position`` becomes its dense rank − 1
   (slots 0, 1, 2); ``context`` is the one-hot of the user features with the first level
   of each dropped; an item's features are its hashed categoricals label-encoded (sorted
   codes) followed by the numeric ``item_feature_0``;
2. the evaluation policy is BTS with the campaign's prior and no updates: its action
   distribution is the frequency of each item at each of the top ``len_list`` slots over
   ``n_sim`` simulations, one row of ``numpy.random.RandomState(12345).beta(alpha, beta)``
   per simulation, in order, items ranked by decreasing draw;
3. ground truth V = mean ``click`` of the BTS log (on-policy estimate);
4. for b = 0 … n_boot − 1 the random log's rows are resampled with
   ``numpy.random.RandomState(b).choice(n, size=n, replace=True)``; every estimator
   estimates V from the resample; relative estimation error ``|V̂ − V| / V``;
5. report the mean and the standard deviation (ddof = 1) of the relative error.

Reward model of DM/DR/SNDR/Switch-DR/DRos: scikit-learn ``LogisticRegression(C=100,
max_iter=10000, random_state=12345)`` (the Open Bandit Pipeline examples' setting) on
``[context ; item features]``, one model per slot, 3-fold cross-fitted with the folds of
``sklearn.model_selection.KFold(3, shuffle=True, random_state=12345)``. A training subset
with no click at all gets a constant-0 model (the reference implementation stops there
instead). Switch-DR and DRos take λ by estimated MSE on each resample unless
``--switch-lambda`` / ``--dros-lambda`` fix it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bandit_core._validation import FloatArray
from validation.obd import (
    OBDLog,
    bootstrap_rows,
    bts_action_dist,
    kfold_ids,
    load_log,
    load_prior,
    logistic_reward_model,
)
from validation.ope import SPECS, check_feedback, round_terms

#: Output key → (library estimator, options); keys follow the Open Bandit Pipeline's names.
ESTIMATORS: dict[str, str] = {
    "ipw": "ips",
    "snipw": "snips",
    "dm": "dm",
    "dr": "dr",
    "sndr": "sndr",
    "switch_dr": "switch_dr",
    "dros": "dros",
}


def estimate_all(
    log: OBDLog,
    action_dist: FloatArray,
    options: Mapping[str, Mapping[str, Any]],
    n_folds: int = 3,
) -> dict[str, tuple[float, dict[str, float]]]:
    """Every estimator's value (and its params) on ``log`` for a policy whose action
    distribution (n_items, len_list) is the same on every round."""
    len_list = action_dist.shape[1]
    q_hat = logistic_reward_model(n_folds).fit_predict(
        log.context,
        log.action,
        log.reward,
        log.action_context,
        log.position,
        len_list,
        folds=kfold_ids(log.n_rounds, n_folds),
    )
    dist = np.broadcast_to(action_dist, (log.n_rounds, *action_dist.shape))
    fb = check_feedback(log.reward, log.action, log.pscore, dist, log.position, q_hat)
    out = {}
    for key, name in ESTIMATORS.items():
        terms = round_terms(name, fb, None, **options.get(name, {}))
        out[key] = (terms.value(), terms.params)
    return out


def run(
    data_dir: Path,
    campaign: str,
    n_boot: int = 30,
    n_sim: int = 1_000_000,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole protocol; returns the JSON-able result. ``options``: estimator (library
    name) → its options, e.g. ``{"switch_dr": {"lambda_": 10.0}}``; a λ left out is
    tuned by estimated MSE."""
    options = {} if options is None else options
    folder = Path(data_dir) / campaign
    started = time.perf_counter()
    random_log = load_log(folder / "random.csv", folder / "item_context_random.csv")
    bts_log = load_log(folder / "bts.csv", folder / "item_context_bts.csv")
    alpha, beta = load_prior(folder / "bts_prior.yaml", campaign)
    if alpha.shape[0] != random_log.n_actions:
        raise ValueError(
            f"the prior has {alpha.shape[0]} items; the item file has {random_log.n_actions}."
        )
    len_list = int(random_log.position.max()) + 1
    t0 = time.perf_counter()
    action_dist = bts_action_dist(alpha, beta, len_list, n_sim)
    dist_seconds = time.perf_counter() - t0
    truth = float(bts_log.reward.mean())
    full = estimate_all(random_log, action_dist, options)
    boot_values = {key: np.empty(n_boot) for key in ESTIMATORS}
    boot_lambdas: dict[str, list[float]] = {
        key: [] for key, name in ESTIMATORS.items() if SPECS[name].tuned_weights is not None
    }
    for b in range(n_boot):
        sample = random_log.take(bootstrap_rows(random_log.n_rounds, b))
        for key, (value, params) in estimate_all(sample, action_dist, options).items():
            boot_values[key][b] = value
            if key in boot_lambdas:
                boot_lambdas[key].append(params["lambda_"])

    estimators: dict[str, Any] = {}
    for key in ESTIMATORS:
        rel = np.abs(boot_values[key] - truth) / truth
        entry: dict[str, Any] = {
            "estimate": full[key][0],
            "relative_ee_mean": float(rel.mean()),
            "relative_ee_std": float(rel.std(ddof=1)) if n_boot > 1 else 0.0,
            "bootstrap_estimates": boot_values[key].tolist(),
        }
        if key in boot_lambdas:
            entry["lambda"] = full[key][1]["lambda_"]
            entry["bootstrap_lambdas"] = boot_lambdas[key]
            entry["lambda_tuned"] = options.get(ESTIMATORS[key], {}).get("lambda_") is None
        estimators[key] = entry
    return {
        "benchmark": "obd",
        "campaign": campaign,
        "ground_truth": truth,
        "n_rounds": random_log.n_rounds,
        "n_actions": random_log.n_actions,
        "len_list": len_list,
        "n_boot": n_boot,
        "n_sim": n_sim,
        "reward_model": "LogisticRegression(C=100, max_iter=10000), per slot, 3-fold cross-fitted",
        "action_dist_seconds": dist_seconds,
        "total_seconds": time.perf_counter() - started,
        "estimators": estimators,
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"Open Bandit {result['campaign']}: BTS estimated from the random log, "
            f"V = {result['ground_truth']:.6f}, n = {result['n_rounds']}, "
            f"{result['n_boot']} bootstrap resamples, n_sim = {result['n_sim']}"
        )
    )
    for col in ("estimator", "estimate (full log)", "relative EE mean", "relative EE std", "λ"):
        table.add_column(col, justify="right")
    for key, e in result["estimators"].items():
        lam = e.get("lambda")
        lam_text = (
            "" if lam is None else (f"{lam:g}" + (" (tuned)" if e.get("lambda_tuned") else ""))
        )
        table.add_row(
            key,
            f"{e['estimate']:.6f}",
            f"{e['relative_ee_mean']:.6f}",
            f"{e['relative_ee_std']:.6f}",
            lam_text,
        )
    Console().print(table)


def _lambda(text: str) -> float:
    value = float(text)
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"λ must be in [0, inf]; got {text}.")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding <campaign>/")
    parser.add_argument("--campaign", required=True)
    parser.add_argument("--n-boot", type=int, default=30)
    parser.add_argument("--n-sim", type=int, default=1_000_000)
    parser.add_argument("--switch-lambda", type=_lambda, default=None, help="fix λ of Switch-DR")
    parser.add_argument("--dros-lambda", type=_lambda, default=None, help="fix λ of DRos")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.n_boot < 1 or args.n_sim < 1:
        parser.error("--n-boot and --n-sim must be positive integers")
    fixed = {"switch_dr": args.switch_lambda, "dros": args.dros_lambda}
    options = {name: {"lambda_": lam} for name, lam in fixed.items() if lam is not None}
    result = run(args.data_dir, args.campaign, args.n_boot, args.n_sim, options)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
