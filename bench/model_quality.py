"""Model quality against the synthetic shop's hidden truth, on a lake the loop has run on (after `make demo`).

Reads the Delta tables with delta-rs (no Spark) and the registry's model of the run date, then prints:

- ``uplift_corr``: correlation of the model's uplift with the true uplift over every eligible (user, live
  coupon) pair of the run date (and the same for the expected incremental profit).
- ``ungated``: what the model would issue without its decision gate (each user's best coupon if its expected
  incremental profit is positive): the sum of its own estimates against the true sum, and the oracle's.
- ``feature_oracle_vs_oracle``: a network fitted to the TRUE incremental profit of half of the users from the
  same run-date features; its policy's true value on the other half over the oracle's on that half. The
  ceiling these features allow, whatever the model.
- ``treatment_drift``: the model's mean logit shift (coupon against none) on its training rows, by issue date.

    python bench/model_quality.py --lake ./lakehouse --run-date 2026-11-14
"""

from __future__ import annotations

import argparse
import datetime as dt
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pandas as pd
from deltalake import DeltaTable

from coupon_spark.config import Config
from coupon_spark.datagen.response import CouponParams, UserTraits, response_matrix
from coupon_spark.datagen.world import season_logit
from coupon_spark.model.data import make_examples
from coupon_spark.model.gate import live_on
from coupon_spark.model.registry import Registry
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.scoring import mask_ineligible, prepare_coupons, user_basket


def table(cfg: Config, name: str) -> str:
    return f"{cfg.lake.root.rstrip('/')}/{cfg.lake.tables.get(name, name)}"


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def feature_oracle(x: np.ndarray, true: np.ndarray, eligible: np.ndarray, seed: int) -> tuple[float, float]:
    """(true value of the fitted policy, oracle value) on the held-out half of the users."""
    import tf_keras

    n, m = true.shape
    rng = np.random.default_rng(seed)
    half = rng.random(n) < 0.5
    pairs = np.concatenate([np.repeat(x, m, 0), np.tile(np.eye(m, dtype=np.float32), (n, 1))], 1)
    fit_rows = np.repeat(half, m) & eligible.ravel()
    tf_keras.utils.set_random_seed(seed)
    net = tf_keras.Sequential(
        [
            tf_keras.layers.Dense(64, activation="relu"),
            tf_keras.layers.Dense(64, activation="relu"),
            tf_keras.layers.Dense(1),
        ]
    )
    net.compile(tf_keras.optimizers.Adam(1e-3), "mse")
    net.fit(pairs[fit_rows], true.ravel()[fit_rows], epochs=15, batch_size=1024, verbose=0)
    held = ~half
    pred = net.predict(pairs[np.repeat(held, m)], batch_size=8192, verbose=0).reshape(-1, m)
    pred = np.where(eligible[held], pred, -np.inf)
    t = true[held]
    j = pred.argmax(1)
    give = pred[np.arange(len(t)), j] > 0
    oracle = np.where(eligible[held], t, -np.inf).max(1).clip(0).sum()
    return float(t[np.arange(len(t)), j][give].sum()), float(oracle)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", default="./lakehouse")
    ap.add_argument("--run-date", required=True, type=dt.date.fromisoformat)
    ap.add_argument("--conf", default="conf/local.yaml")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = Config.from_file(a.conf, overrides=[f"lake.root={a.lake}"])
    run_date = a.run_date

    registry, name = Registry.from_config(cfg), cfg.train.model_name
    version = max(v for v in registry.versions(name) if registry.manifest(name, v)["run_date"][:10] <= str(run_date))
    scorer = NumpyScorer.load(registry.local_dir(name, version))
    print(f"model {name} v{version} (decision threshold {scorer.decision_threshold})")

    users = DeltaTable(table(cfg, "user_features")).to_pandas(filters=[("as_of_date", "=", run_date)])
    cf = DeltaTable(table(cfg, "coupon_features")).to_pandas(filters=[("as_of_date", "=", run_date)])
    cf = cf[live_on(cf)].reset_index(drop=True)
    coupons = prepare_coupons(cf, scorer, cfg.score)
    truth_root = f"{cfg.lake.root.rstrip('/')}/{cfg.shop.truth_dir}"
    traits = DeltaTable(f"{truth_root}/user_traits").to_pandas().set_index("user_id")
    params = DeltaTable(f"{truth_root}/coupons").to_pandas().set_index("coupon_id").loc[coupons.frame["coupon_id"]]
    users = users[users["user_id"].isin(traits.index)].reset_index(drop=True)

    out = scorer.predict(scorer.user_embed(users), coupons.embeddings)
    value = (cfg.score.margin_rate * user_basket(users, cfg.score))[:, None]
    pred = out["uplift"] * value - out["p_redeem"] * coupons.cost[None, :]
    eligible = np.isfinite(mask_ineligible(np.zeros_like(pred, dtype=np.float64), users, coupons, cfg.score))
    truth = response_matrix(
        UserTraits.from_pandas(traits.loc[users["user_id"]].reset_index()),
        CouponParams.from_pandas(params.reset_index()),
        season_logit(run_date),
    )
    true_uplift = truth.p_purchase[:, 1:] - truth.p_purchase[:, :1]
    true = truth.expected_profit[:, 1:] - truth.expected_profit[:, :1]
    e = eligible
    print(f"{len(users)} users x {len(coupons.cost)} live coupons, {int(e.sum())} eligible pairs")
    print(f"uplift_corr: {np.corrcoef(out['uplift'][e], true_uplift[e])[0, 1]:.3f} "
          f"(mean predicted {out['uplift'][e].mean():+.4f}, true {true_uplift[e].mean():+.4f})")  # fmt: skip
    print(f"profit_corr: {np.corrcoef(pred[e], true[e])[0, 1]:.3f}")

    def policy(score: np.ndarray) -> tuple[float, float, int]:
        s = np.where(e, score, -np.inf)
        j = s.argmax(1)
        rows = np.arange(len(s))
        give = s[rows, j] > 0
        return float(pred[rows, j][give].sum()), float(true[rows, j][give].sum()), int(give.sum())

    p_est, p_true, n_give = policy(pred)
    _, oracle, n_oracle = policy(true)
    print(
        f"ungated: {n_give} coupons, predicted {p_est:+,.0f} EUR, true {p_true:+,.0f} EUR; "
        f"oracle {oracle:+,.0f} EUR ({n_oracle} coupons); ungated_vs_oracle: {p_true / oracle:.3f}"
    )

    x = scorer.transform.user_matrix(users)
    fo, fo_oracle = feature_oracle(x, true, e, a.seed)
    print(
        f"feature_oracle_vs_oracle: {fo / fo_oracle:.3f} (feature oracle {fo:+,.0f} EUR, oracle {fo_oracle:+,.0f} "
        "EUR on the held-out half)"
    )

    ex = DeltaTable(table(cfg, "training_examples")).to_pandas()
    ex = ex[pd.to_datetime(ex["issue_date"]).dt.date < run_date].reset_index(drop=True)
    rows = make_examples(ex, scorer.transform, scorer.spec, cfg.train.validation_share, cfg.train.seed)
    inputs = {"user_x": rows.user_x, "user_bucket": rows.user_bucket, "coupon_x": rows.coupon_x}
    treated = rows.coupon_index != 0
    p_arm = scorer.predict_rows(inputs | {"coupon_index": rows.coupon_index})
    shift = logit(p_arm["p_purchase"]) - logit(p_arm["p_purchase_none"])
    drift = pd.Series(shift[treated]).groupby(ex["issue_date"].astype(str).to_numpy()[treated]).mean()
    print("treatment_drift (mean logit shift of the logged coupons, by issue date):")
    print("  " + ", ".join(f"{d[5:]} {v:+.2f}" for d, v in drift.items()))


if __name__ == "__main__":
    main()
