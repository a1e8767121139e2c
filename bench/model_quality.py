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
- Baselines in the same run, fitted on exactly the rows the model trained on (its manifest's snapshot and
  dates) with the same transformed features, and valued against the truth on the same users and coupons
  (:mod:`coupon_spark.evaluation.uplift_learners`): LightGBM S-, T- (per coupon kind) and DR-learners (known
  propensities), the best single coupon for everyone and the best coupon per segment (both chosen by IPS on
  the randomised logs), the feature oracle and the oracle. Each policy gives every user its best eligible
  coupon if the predicted incremental profit is positive (no budgets); the table says what it is truly
  worth, its share of the oracle, how many coupons it gives, what it believes they are worth, and how its
  per-pair estimate correlates with the true incremental profit.
- Qini coefficient and AUUC (:mod:`coupon_spark.evaluation.uplift_metrics`) of each learner's ranking on
  held-out randomised logs: the randomised rows of the last ``--qini-dates`` issue dates, with learners
  fitted anew on the rows before them; the model on those of them it did not train on (its validation split).
- Summary lines: ``model_vs_oracle`` (what the run's allocation truly earned, the published model with its
  gate and threshold at the run's budgets, over the oracle's at the same budgets: ``evaluation_metrics`` of
  the run date; where the run was not evaluated, the no-budget figure), ``model_vs_oracle_no_budgets`` (the
  published model's policy, its gate applied, over the oracle, same users and coupons, no budgets),
  ``model_vs_best_baseline`` (no budgets, over the best LightGBM learner) and ``feature_oracle_vs_oracle``.

    python bench/model_quality.py --lake ./lakehouse --run-date 2026-11-14
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pandas as pd
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from coupon_spark.allocation import POLICY_EXPLORATION
from coupon_spark.config import Config, ScoreConfig
from coupon_spark.datagen.response import CouponParams, UserTraits, response_matrix
from coupon_spark.datagen.world import season_logit
from coupon_spark.evaluation.uplift_learners import (
    MIN_ROWS,
    Arms,
    DRLearner,
    LoggedRows,
    SLearner,
    TLearner,
    dr_pairs,
    ips_arm_values,
    lgbm_params,
)
from coupon_spark.evaluation.uplift_metrics import UpliftCurves, uplift_curves
from coupon_spark.model.data import make_examples, validation_mask
from coupon_spark.model.pair import pair_matrix, pair_rows
from coupon_spark.model.registry import Registry
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.model.transform import FeatureTransform
from coupon_spark.policy import (
    SEGMENT_COLUMN,
    LiveCoupons,
    effect,
    live_on,
    logged_reward,
    mask_ineligible,
    prepare_coupons,
    purchase_value,
    redemption_cost,
)

KIND_COLUMN = "cc_kind"
LEARNERS = ("LightGBM S-learner", "LightGBM T-learner per kind", "LightGBM DR-learner per kind")


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


# ---- the training rows and the learners ------------------------------------------------------------------------

Effect = Callable[[pd.DataFrame, np.ndarray, pd.DataFrame], np.ndarray]
"""(users with their raw features, their transformed user matrix, coupon rows sorted by coupon_id) -> [n, m]
predicted incremental profit, EUR (NaN: no estimate)."""


def issue_dates(ex: pd.DataFrame) -> np.ndarray:
    return pd.to_datetime(ex["issue_date"]).dt.date.to_numpy()


def kinds_of(frame: pd.DataFrame) -> np.ndarray:
    """The coupon kind of each row (``cc_kind``; the coupon id where the column is missing), None for none."""
    col = KIND_COLUMN if KIND_COLUMN in frame else "coupon_id"
    kinds = frame[col].to_numpy(object).copy()
    kinds[frame["coupon_id"].isna().to_numpy()] = None
    return kinds


def logged_rows(
    ex: pd.DataFrame, transform: FeatureTransform, margin: float, pair_basket: float | None = None
) -> LoggedRows:
    """Training examples as learner inputs, with the model's own feature transformation and, when the model has
    them (``pair_basket``: its default basket; None: none), its pair features."""
    return LoggedRows(
        user_x=transform.user_matrix(ex),
        coupon_x=transform.coupon_matrix(ex),
        kind=kinds_of(ex),
        reward=(ex["revenue_eur"] * margin - ex["coupon_cost_eur"]).to_numpy(np.float64),
        propensity=ex["propensity"].to_numpy(np.float64),
        pair_x=None if pair_basket is None else pair_rows(ex, pair_basket),
    )


def pair_basket_of(scorer: NumpyScorer) -> float | None:
    """The model's default basket when it has pair features (the learners then get them too), else None."""
    return scorer.spec.default_basket_eur if scorer.spec.pair_dim else None


def dr_pair_features(ex: pd.DataFrame, pair_basket: float | None) -> Any:
    """``(rows, arm_rows) -> [k, p]`` for :func:`dr_pairs`: the user of ``rows`` with the coupon of ``arm_rows``."""
    if pair_basket is None:
        return None
    user_cols = [c for c in ex.columns if c.startswith("uf_")]
    coupon_cols = ["coupon_id", "cf_face_value", "cf_min_spend", "cc_category"]

    def pair_of(rows: np.ndarray, arms: np.ndarray) -> np.ndarray:
        frame = pd.concat(
            [
                ex[user_cols].iloc[rows].reset_index(drop=True),
                ex[coupon_cols].iloc[arms].reset_index(drop=True),
            ],
            axis=1,
        )
        return pair_rows(frame, pair_basket)

    return pair_of


def none_coupon_x(ex: pd.DataFrame, transform: FeatureTransform) -> np.ndarray:
    """The control arm's transformed coupon features (as the training rows carry them: 0.0 / "none")."""
    control = ex[ex["coupon_id"].isna()]
    if len(control):
        return transform.coupon_matrix(control.head(1))[0]
    frame = pd.DataFrame({c: [0.0 if c.startswith("cf_") else "none"] for c in transform.coupon_columns})
    return transform.coupon_matrix(frame)[0]


def randomised(ex: pd.DataFrame, cfg: Config) -> np.ndarray:
    """Rows whose logging policy is randomised (``evaluate.ope_policies``): known, positive propensities."""
    return (ex["policy"].isin(list(cfg.evaluate.ope_policies)) & (ex["propensity"] > 0)).to_numpy()


def exploration_options(cfg: Config, ex: pd.DataFrame) -> list[frozenset[str] | None]:
    """Per row: the coupons coupon-spark's exploration arm could draw for the user that day (the user's
    ``candidates`` of that run date), as the training job's gate reads them; None for other policies."""
    explored = (ex["policy"].astype(str).str.rsplit("/", n=1).str[-1] == POLICY_EXPLORATION).to_numpy()
    out: list[frozenset[str] | None] = [None] * len(ex)
    if not explored.any():
        return out
    days, users = issue_dates(ex), ex["user_id"].to_numpy(object)
    try:
        cand = DeltaTable(table(cfg, "candidates")).to_pandas(
            columns=["run_date", "user_id", "coupon_id"], filters=[("run_date", "in", sorted(set(days[explored])))]
        )
    except TableNotFoundError:
        cand = pd.DataFrame(columns=["run_date", "user_id", "coupon_id"])
    cand["run_date"] = pd.to_datetime(cand["run_date"]).dt.date
    sets = {k: frozenset(g) for k, g in cand.groupby(["run_date", "user_id"])["coupon_id"]}
    for i in np.flatnonzero(explored):
        out[i] = sets.get((days[i], users[i]), frozenset())
    return out


def fit_learners(
    ex: pd.DataFrame,
    transform: FeatureTransform,
    cfg: Config,
    seed: int,
    max_pairs: int,
    threads: int,
    pair_basket: float | None = None,
) -> dict[str, Any]:
    """The LightGBM S-, T- and DR-learners fitted on ``ex`` (the DR pseudo-outcomes on its randomised rows);
    with the model's pair features when ``pair_basket`` is given."""
    rows = logged_rows(ex, transform, cfg.score.margin_rate, pair_basket)
    use = randomised(ex, cfg)
    pairs = dr_pairs(
        issue_dates(ex),
        ex["coupon_id"].to_numpy(object),
        rows.coupon_x,
        rows.kind,
        use,
        exploration_options(cfg, ex),
        max_pairs,
        seed,
        dr_pair_features(ex, pair_basket),
    )
    params = lgbm_params(seed, n_jobs=threads)
    learners: dict[str, Any] = {}
    for name, fit in (
        (LEARNERS[0], lambda: SLearner(params).fit(rows)),
        (LEARNERS[1], lambda: TLearner(params).fit(rows)),
        (
            LEARNERS[2],
            lambda: DRLearner(params, lgbm_params(seed, n_jobs=threads, min_data_in_leaf=1000), seed).fit(
                rows, pairs, cfg.train.propensity_clip
            ),
        ),
    ):
        t0 = time.perf_counter()
        learners[name] = fit()
        print(f"  {name}: fitted in {time.perf_counter() - t0:.1f}s", flush=True)
    print(f"  ({len(rows)} rows, {int(use.sum())} randomised; {len(pairs.row)} DR pairs)")
    return learners


def learner_effect(
    learner: Any, transform: FeatureTransform, none_x: np.ndarray, pair_basket: float | None = None
) -> Effect:
    def effect(users: pd.DataFrame, user_x: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        pair = None if pair_basket is None else pair_matrix(users, frame, pair_basket)
        arms = Arms(transform.coupon_matrix(frame), kinds_of(frame), none_x, pair)
        return np.asarray(learner.effect(user_x, arms), np.float64)

    return effect


def ips_effects(ex: pd.DataFrame, cfg: Config) -> tuple[dict[str, Effect], str]:
    """The best single coupon for everyone and the best coupon per segment, as per-pair scores: each coupon's
    IPS value against no coupon on the randomised rows (per segment); and a note on the overall choice."""
    use = randomised(ex, cfg)
    r = ex[use]
    args = (
        r["coupon_id"].to_numpy(object),
        issue_dates(r),
        logged_reward(r["revenue_eur"], r["coupon_cost_eur"], cfg.score.margin_rate),
        r["propensity"].to_numpy(np.float64),
    )
    single = ips_arm_values(*args).set_index("coupon_id")["value"]

    def everyone(users: pd.DataFrame, user_x: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        v = frame["coupon_id"].map(single).to_numpy(np.float64)
        return np.broadcast_to(v, (len(users), len(v))).copy()

    out: dict[str, Effect] = {"best single coupon (IPS)": everyone}
    best = single.idxmax() if single.notna().any() else None
    note = f"IPS best coupon {best} ({single.max():+.3f} EUR/decision)" if best is not None else "no IPS value"
    if SEGMENT_COLUMN in r:
        seg = ips_arm_values(*args, group=r[SEGMENT_COLUMN].to_numpy(object))
        table_ = seg.pivot_table(index="group", columns="coupon_id", values="value", aggfunc="first")

        def per_segment(users: pd.DataFrame, user_x: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
            t = table_.reindex(index=users[SEGMENT_COLUMN].astype(object), columns=frame["coupon_id"])
            return t.to_numpy(np.float64)

        out["best coupon per segment (IPS)"] = per_segment
    return out, note


def model_effect(scorer: NumpyScorer, score_cfg: ScoreConfig) -> Effect:
    """The model's expected incremental profit, as the score job computes it (ungated)."""

    def model(users: pd.DataFrame, user_x: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        return effect(scorer, users, frame, score_cfg)

    return model


# ---- policies valued against the truth ------------------------------------------------------------------------


def policy_value(score: np.ndarray, eligible: np.ndarray, true: np.ndarray) -> tuple[float, float, int]:
    """Each user's best eligible coupon by ``score`` if its score is > 0: (the score's own sum over the coupons
    given, their true sum, coupons given)."""
    s = np.where(eligible & np.isfinite(score), score, -np.inf)
    j = s.argmax(1)
    rows = np.arange(len(s))
    give = s[rows, j] > 0
    return float(s[rows, j][give].sum()), float(true[rows, j][give].sum()), int(give.sum())


def pair_corr(score: np.ndarray, true: np.ndarray, eligible: np.ndarray) -> float:
    ok = eligible & np.isfinite(score)
    if ok.sum() < 3 or np.std(score[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(score[ok], true[ok])[0, 1])


# ---- Qini / AUUC on held-out randomised logs ----------------------------------------------------------------


def qini_inputs(
    rows: pd.DataFrame,
    coupons_by_date: Mapping[Any, pd.DataFrame],
    transform: FeatureTransform,
    scorer: NumpyScorer,
    score_cfg: ScoreConfig,
    effects: Mapping[str, Effect],
    allowed: list[frozenset[str] | None],
) -> dict[str, dict[str, np.ndarray]]:
    """Per method, what :func:`uplift_curves` needs for the logged ``rows``: each user's best eligible coupon
    among those live on its issue date, its score, and whether the logged arm is that coupon or none. Rows
    without an eligible coupon, or whose logging policy could not draw the chosen coupon (the exploration
    arm draws among the user's candidates), are left out; ``row`` indexes ``rows``."""
    got: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in effects}
    days = issue_dates(rows)
    for day in sorted(set(days)):
        frame = coupons_by_date.get(day)
        if frame is None or frame.empty:
            continue
        idx = np.flatnonzero(days == day)
        part = rows.iloc[idx].reset_index(drop=True)
        live: LiveCoupons = prepare_coupons(frame, scorer, score_cfg)
        eligible = np.isfinite(mask_ineligible(np.zeros((len(part), len(frame))), part, live, score_cfg))
        ux = transform.user_matrix(part)
        ids = frame["coupon_id"].to_numpy(object)
        logged = part["coupon_id"].to_numpy(object)
        n = np.arange(len(part))
        for name, fn in effects.items():
            eff = fn(part, ux, frame)
            s = np.where(eligible & np.isfinite(eff), eff, -np.inf)
            j = s.argmax(1)
            chosen = ids[j]
            ok = np.isfinite(s[n, j]) & np.array(
                [allowed[i] is None or c in allowed[i] for i, c in zip(idx, chosen, strict=True)], bool
            )
            got[name].append(
                {
                    "row": idx[ok],
                    "score": s[n, j][ok],
                    "treated": (logged == chosen)[ok],
                    "control": pd.isna(logged)[ok],
                }
            )
    out = {}
    for name, parts in got.items():
        out[name] = {
            k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)
            for k in ("row", "score", "treated", "control")
        }
    return out


def curves_of(
    q: dict[str, np.ndarray], rows: pd.DataFrame, margin: float, keep: np.ndarray | None = None
) -> UpliftCurves | None:
    r = q["row"].astype(np.int64)
    sel = np.ones(len(r), bool) if keep is None else keep[r]
    reward = (rows["revenue_eur"] * margin - rows["coupon_cost_eur"]).to_numpy(np.float64)[r[sel]]
    propensity = rows["propensity"].to_numpy(np.float64)[r[sel]]
    try:
        return uplift_curves(q["score"][sel], q["treated"][sel], q["control"][sel], propensity, reward)
    except ValueError:
        return None


def fmt_curves(c: UpliftCurves | None) -> str:
    if c is None:
        return f"{'-':>9} {'-':>9} {'-':>11}"
    return f"{c.qini_coefficient:+9.4f} {c.auuc:+9.4f} {c.n_treated:>5}/{c.n_control:<5}"


def plot_qini(curves: Mapping[str, UpliftCurves | None], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for label, c in curves.items():
        if c is not None:
            ax.plot(c.fraction, c.qini, label=label)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="share of users targeted", ylabel="incremental profit, EUR per user (Qini)", title=title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def qini_section(
    ex: pd.DataFrame,
    cfg: Config,
    scorer: NumpyScorer,
    none_x: np.ndarray,
    split: tuple[float, int] | None,
    until: dt.date,
    a: argparse.Namespace,
) -> None:
    """Qini coefficient and AUUC of every ranking on the randomised rows of the last ``a.qini_dates`` issue
    dates of ``ex``, the learners fitted anew on the rows before them; the model (trained on those dates) on
    the rows of its validation split (``split``: its share and seed; None: unknown, no row)."""
    all_days = issue_dates(ex)
    held_days = sorted(set(all_days))[-a.qini_dates :]
    held = np.isin(all_days, held_days) & randomised(ex, cfg)
    before = ex[all_days < held_days[0]].reset_index(drop=True) if held_days else ex.iloc[:0]
    rows = ex[held].reset_index(drop=True)
    if rows.empty or len(before) < 10 * MIN_ROWS:
        print(f"\nQini / AUUC: skipped ({len(rows)} randomised rows in the last {a.qini_dates} issue dates, "
              f"{len(before)} rows before them)")  # fmt: skip
        return
    print(
        f"\nQini / AUUC on held-out randomised logs: {len(rows)} rows of {held_days[0]} .. {held_days[-1]}; "
        f"learners refitted on the {len(before)} rows before {held_days[0]}:"
    )
    pb = pair_basket_of(scorer)
    learners = fit_learners(before, scorer.transform, cfg, a.seed, a.max_dr_pairs, a.threads, pb)
    ips, _ = ips_effects(before, cfg)
    effects: dict[str, Effect] = {k: learner_effect(v, scorer.transform, none_x, pb) for k, v in learners.items()}
    effects |= ips
    effects["the model"] = model_effect(scorer, cfg.score)
    cfd = DeltaTable(table(cfg, "coupon_features")).to_pandas(filters=[("as_of_date", "in", held_days)])
    cfd["as_of_date"] = pd.to_datetime(cfd["as_of_date"]).dt.date
    by_date = {d: g.sort_values("coupon_id").reset_index(drop=True) for d, g in cfd[live_on(cfd)].groupby("as_of_date")}
    score_cfg = dataclasses.replace(cfg.score, frequency_cap=10**9)  # the logged decisions were made anyway
    q = qini_inputs(rows, by_date, scorer.transform, scorer, score_cfg, effects, exploration_options(cfg, rows))
    # the model trained on these dates: only its validation split is held out from it
    unseen = issue_dates(rows) >= until
    if split is not None:
        unseen |= validation_mask(rows["issuance_id"], *split)
    n_unseen = int(unseen.sum())
    print(
        f"  {'ranking':<34} {'qini':>9} {'auuc':>9} {'trt/ctl':>11}   on the {n_unseen} rows the model did not "
        "train on: qini, auuc, trt/ctl"
    )
    curves = {}
    for label, qi in q.items():
        full = curves_of(qi, rows, cfg.score.margin_rate) if label != "the model" else None
        sub = curves_of(qi, rows, cfg.score.margin_rate, unseen)
        curves[label if full else f"{label} (the {n_unseen} rows it did not train on)"] = full or sub
        print(f"  {label:<34} {fmt_curves(full)}   {fmt_curves(sub)}".rstrip())
    print("  (EUR per user; qini: area between the Qini curve and random targeting; auuc: area under the uplift curve)")
    if a.qini_plot:
        plot_qini(curves, a.qini_plot, f"Qini curves, held-out randomised logs {held_days[0]} .. {held_days[-1]}")
        print(f"  Qini curves: {a.qini_plot}")


def budget_values(cfg: Config, run_date: dt.date) -> tuple[float, float] | None:
    """(model, oracle) true incremental profit at the run's budgets, from ``evaluation_metrics`` (None when the
    run date was not evaluated on the synthetic shop)."""
    try:
        m = DeltaTable(table(cfg, "evaluation_metrics")).to_pandas(filters=[("run_date", "=", run_date)])
    except TableNotFoundError:
        return None
    m = m[(m["section"] == "policy_truth") & (m["metric"] == "true_incremental_profit") & (m["dimension"] == "policy")]
    if m.empty:
        return None
    m = m[m["evaluated_at"] == m["evaluated_at"].max()].set_index("dimension_value")["value"]
    if "model" not in m or "oracle" not in m or pd.isna(m["model"]) or pd.isna(m["oracle"]):
        return None
    return float(m["model"]), float(m["oracle"])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b > 0 else "nan"


# ---- main -----------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--lake", default="./lakehouse")
    ap.add_argument("--run-date", required=True, type=dt.date.fromisoformat)
    ap.add_argument("--conf", default="conf/local.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qini-dates", type=int, default=3, help="held-out issue dates of the Qini/AUUC evaluation")
    ap.add_argument(
        "--max-dr-pairs",
        type=int,
        default=1_000_000,
        help="DR-learner: sample at most this many (row, coupon) pairs (0: all)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="LightGBM threads. On a busy 2-core machine 2 OpenMP threads ran 5-100x slower than 1 (their "
        "barriers wait for each other's time slices); 1 only about 1.6x slower on an idle one",
    )
    ap.add_argument("--qini-plot", default="", help="write the Qini curves to this PNG file")
    a = ap.parse_args()
    cfg = Config.from_file(a.conf, overrides=[f"lake.root={a.lake}"])
    run_date = a.run_date
    started = time.perf_counter()

    registry, name = Registry.from_config(cfg), cfg.train.model_name
    version = max(v for v in registry.versions(name) if registry.manifest(name, v)["run_date"][:10] <= str(run_date))
    scorer = NumpyScorer.load(registry.local_dir(name, version), cfg.score.pool_fold_models)
    manifest = registry.manifest(name, version)
    threshold = scorer.decision_threshold
    print(f"model {name} v{version} (decision threshold {threshold})")

    users = DeltaTable(table(cfg, "user_features")).to_pandas(filters=[("as_of_date", "=", run_date)])
    cf = DeltaTable(table(cfg, "coupon_features")).to_pandas(filters=[("as_of_date", "=", run_date)])
    cf = cf[live_on(cf)].sort_values("coupon_id").reset_index(drop=True)
    coupons = prepare_coupons(cf, scorer, cfg.score)
    truth_root = f"{cfg.lake.root.rstrip('/')}/{cfg.shop.truth_dir}"
    traits = DeltaTable(f"{truth_root}/user_traits").to_pandas().set_index("user_id")
    params = DeltaTable(f"{truth_root}/coupons").to_pandas().set_index("coupon_id").loc[coupons.frame["coupon_id"]]
    users = users[users["user_id"].isin(traits.index)].reset_index(drop=True)

    value = purchase_value(users, cfg.score)
    z = cfg.score.uncertainty_z
    # what the score job decides on: the estimate less z sd of the model's ensemble (the same kernel)
    cost = redemption_cost(users, coupons, cfg.score)
    out, pred = scorer.score_profit(users, coupons.frame, coupons.embeddings, value, cost, z)
    if z > 0:
        spread_of = f"its {len(scorer.heads)} heads" if scorer.heads else f"{len(scorer.members)} fold models"
        print(f"decisions on the lower bound: estimate - {z:g} sd of {spread_of}")
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

    p_est, p_true, n_give = policy_value(pred, e, true)
    _, oracle, n_oracle = policy_value(true, e, true)
    print(
        f"ungated: {n_give} coupons, predicted {p_est:+,.0f} EUR, true {p_true:+,.0f} EUR; "
        f"oracle {oracle:+,.0f} EUR ({n_oracle} coupons); ungated_vs_oracle: {p_true / oracle:.3f}"
    )
    # the decision rule's settings, ungated: the lower bound's z (score.uncertainty_z), with and without the top-up
    sweep = []
    for top_up in (True, False):
        rule = dataclasses.replace(cfg.score, top_up=top_up)
        for zz in (0.0, 0.25, 0.5, 1.0):
            _, alt = scorer.score_profit(
                users, coupons.frame, coupons.embeddings, value, redemption_cost(users, coupons, rule), zz
            )
            sweep.append(f"{'top-up' if top_up else 'no top-up'} z {zz:g} {policy_value(alt, e, true)[1] / oracle:.1%}")
    print(f"decision rule, ungated, % of the oracle: {'; '.join(sweep)}")

    x = scorer.transform.user_matrix(users)
    fo, fo_oracle = feature_oracle(x, true, e, a.seed)

    # the rows the model trained on: its manifest's snapshot of training_examples, [since, until)
    tt = manifest.get("training_table", {})
    since = dt.date.fromisoformat(str(tt["since"])[:10]) if tt.get("since") else None
    until = dt.date.fromisoformat(str(tt["until"])[:10]) if tt.get("until") else run_date
    location = tt.get("location") or table(cfg, "training_examples")
    ex = DeltaTable(location, version=tt.get("version")).to_pandas()
    days = pd.to_datetime(ex["issue_date"]).dt.date
    ex = ex[(days < until) & ((days >= since) if since else True)].reset_index(drop=True)
    none_x = none_coupon_x(ex, scorer.transform)
    print(
        f"\nbaselines fitted on the model's {len(ex)} training rows (issued from {since or 'the start'} to "
        f"{until}, exclusive):"
    )
    pb = pair_basket_of(scorer)
    learners = fit_learners(ex, scorer.transform, cfg, a.seed, a.max_dr_pairs, a.threads, pb)
    ips, ips_note = ips_effects(ex, cfg)

    frame = coupons.frame
    gated = np.where(pred > threshold, pred, -np.inf)
    lines: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        (f"the model (gate at {threshold:g} EUR)", gated, None),
        ("the model, ungated", pred, pred),
    ]
    effects = {k: learner_effect(v, scorer.transform, none_x, pb)(users, x, frame) for k, v in learners.items()}
    lines += [(k, v, v) for k, v in effects.items()]
    lines += [(k, fn(users, x, frame), None) for k, fn in ips.items()]
    lines.append(("the oracle", true, true))
    print(f"\npolicies (same {len(users)} users, no budgets; {ips_note}):")
    print(f"  {'policy':<34} {'true EUR':>10} {'% oracle':>9} {'coupons':>8} {'own estimate':>13} {'uplift corr':>12}")
    values: dict[str, float] = {}
    for label, score, corr_of in lines:
        own, val, n = policy_value(score, e, true)
        values[label] = val
        corr = f"{pair_corr(corr_of, true, e):+12.3f}" if corr_of is not None else f"{'-':>12}"
        print(f"  {label:<34} {val:>+10,.0f} {val / oracle:>+9.1%} {n:>8} {own:>+13,.0f} {corr}")
    print(
        f"  {'feature oracle (held-out half)':<34} {fo:>+10,.0f} {fo / fo_oracle:>+9.1%} {'':>8} {'':>13} {'-':>12}"
        f"   (oracle on that half {fo_oracle:+,.0f})"
    )
    print("  (uplift corr: per eligible pair, of the predicted incremental profit with the true one, EUR)")

    try:
        tc = registry.read_json(name, version, "train_config.json")
        split: tuple[float, int] | None = (float(tc["validation_share"]), int(tc["seed"]))
    except (FileNotFoundError, OSError, KeyError, ValueError):
        split = None
    qini_section(ex, cfg, scorer, none_x, split, until, a)

    inputs_ = make_examples(ex, scorer.transform, scorer.spec, cfg.train.validation_share, cfg.train.seed)
    inputs = {"user_x": inputs_.user_x, "user_bucket": inputs_.user_bucket, "coupon_x": inputs_.coupon_x}
    treated = inputs_.coupon_index != 0
    p_arm = scorer.predict_rows(inputs | {"coupon_index": inputs_.coupon_index, "pair_x": inputs_.pair_x})
    shift = logit(p_arm["p_purchase"]) - logit(p_arm["p_purchase_none"])
    drift = pd.Series(shift[treated]).groupby(ex["issue_date"].astype(str).to_numpy()[treated]).mean()
    print("\ntreatment_drift (mean logit shift of the logged coupons, by issue date):")
    print("  " + ", ".join(f"{str(d)[5:]} {v:+.2f}" for d, v in drift.items()))

    model = values[lines[0][0]]
    best = max(LEARNERS, key=lambda k: values[k])
    at_budget = budget_values(cfg, run_date)
    if at_budget is not None:
        print(
            f"\nmodel_vs_oracle: {ratio(*at_budget)} (the run's allocation: model {at_budget[0]:+,.0f} EUR, oracle "
            f"{at_budget[1]:+,.0f} EUR at the run's budgets; evaluation_metrics of {run_date})"
        )
    else:
        print(f"\nmodel_vs_oracle: {ratio(model, oracle)} (no evaluation of {run_date}: the no-budget figure below)")
    print(
        f"model_vs_oracle_no_budgets: {ratio(model, oracle)} (model {model:+,.0f} EUR, oracle {oracle:+,.0f} EUR, "
        "every live coupon, no budgets)"
    )
    print(
        f"model_vs_best_baseline: {ratio(model, values[best])} (best: {best}, {values[best]:+,.0f} EUR"
        f"{'; not positive: no ratio' if values[best] <= 0 else ''})"
    )
    print(
        f"feature_oracle_vs_oracle: {fo / fo_oracle:.3f} (feature oracle {fo:+,.0f} EUR, oracle {fo_oracle:+,.0f} "
        "EUR on the held-out half)"
    )
    print(f"({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
