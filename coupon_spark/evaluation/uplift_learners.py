"""Off-the-shelf uplift learners and logged-choice baselines that the model is measured against (numpy, pandas,
LightGBM; no Spark, no TensorFlow). ``bench/model_quality.py`` fits them on the rows the model trained on.

Every learner predicts the incremental reward of a coupon against no coupon, in EUR (the logged reward
``revenue * margin - coupon cost``), from the same transformed features the model sees: the user matrix
(``uf_*``/``uc_*``), the coupon matrix (``cf_*``/``cc_*``; the control arm's row for "no coupon") and, where
the model has them, the pair features of the user and the coupon (:mod:`coupon_spark.model.pair`; 0 for none).

- :class:`SLearner`: one regressor of the reward on ``[user, coupon, treated]``; effect ``f(x, c) - f(x, none)``.
- :class:`TLearner`: a regressor on the control rows and one per coupon kind on ``[user, coupon]``.
- :class:`DRLearner`: the doubly robust pseudo-outcome of every (logged row, coupon of a kind live that day)
  pair (Kennedy 2023, "Towards optimal doubly robust estimation of heterogeneous causal effects"; known
  propensities, T-learner nuisances cross-fitted over two folds), regressed per coupon kind on
  ``[user, coupon]``. It is unbiased for the effect however poor the nuisances are, since the propensities
  are known; they only lower its variance.
- :func:`ips_arm_values`: the self-normalised IPS value of each coupon against no coupon (optionally per
  group, e.g. segment): "the best single coupon for everyone", "the best coupon per segment".

LightGBM is a development dependency (``pip install -e .[dev]``); it is imported when a learner is fitted.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MIN_ROWS = 50
"""A kind (or the control arm) with fewer logged rows than this gets no model: its effect is NaN."""


def lgbm_params(seed: int = 0, n_jobs: int = 1, **overrides: Any) -> dict[str, Any]:
    """Small, fast LightGBM regression settings (``lightgbm.train`` names: 200 trees of 31 leaves),
    deterministic for a seed; ``overrides`` replace or add settings.

    One thread by default: on a shared 2-core machine two OpenMP threads were measured 5-100 times slower than
    one whenever other processes took a core (each barrier waits for the other thread's time slice)."""
    params: dict[str, Any] = {
        "objective": "regression",
        "num_iterations": 200,
        "num_leaves": 31,
        "learning_rate": 0.05,
        "min_data_in_leaf": 100,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "feature_fraction": 0.8,
        "num_threads": n_jobs,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    params.update(overrides)
    return params


def _regressor(x: np.ndarray, y: np.ndarray, params: Mapping[str, Any]) -> Any:
    """A LightGBM booster fitted to ``y`` (the native API: no scikit-learn needed)."""
    import lightgbm

    p = dict(params)
    rounds = int(p.pop("num_iterations", 100))
    data = lightgbm.Dataset(np.asarray(x, np.float32), np.asarray(y, np.float64), params={"verbosity": -1})
    return lightgbm.train(p, data, num_boost_round=rounds)


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(np.asarray(x, np.float32)), np.float64)


@dataclass(frozen=True)
class LoggedRows:
    """Logged decisions as learner inputs.

    Attributes:
        user_x: ``[n, du]`` transformed user features as of the issue date.
        coupon_x: ``[n, dc]`` transformed features of the logged coupon (the control arm's row for none).
        kind: ``[n]`` coupon kind of the logged arm; None for no coupon.
        reward: ``[n]`` EUR, ``revenue * margin - coupon cost``.
        propensity: ``[n]`` the logging policy's probability of the logged arm.
        pair_x: ``[n, p]`` pair features of the user and the logged coupon (0 for none); None: no pair features.
    """

    user_x: np.ndarray
    coupon_x: np.ndarray
    kind: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    pair_x: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.reward)
        sizes = {k: len(v) for k, v in self.__dict__.items() if v is not None}
        if any(s != n for s in sizes.values()):
            raise ValueError(f"LoggedRows: every array needs one entry per row; got lengths {sizes}")

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def control(self) -> np.ndarray:
        """True where the logged arm is no coupon."""
        return pd.isna(self.kind)

    def take(self, idx: np.ndarray) -> LoggedRows:
        return LoggedRows(**{k: None if v is None else v[idx] for k, v in self.__dict__.items()})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Arms:
    """The coupons to score (each user against each): transformed features, kinds, and the control arm.

    Attributes:
        coupon_x: ``[m, dc]`` transformed coupon features.
        kind: ``[m]`` coupon kinds.
        none_x: ``[dc]`` the control arm's transformed coupon features.
        pair_x: ``[n, m, p]`` pair features of each scored user and each coupon; None: no pair features.
    """

    coupon_x: np.ndarray
    kind: np.ndarray
    none_x: np.ndarray
    pair_x: np.ndarray | None = None

    def pair(self, j: int) -> np.ndarray | None:
        """``[n, p]`` pair features of coupon ``j``; None without."""
        return None if self.pair_x is None else self.pair_x[:, j, :]

    def none_pair(self, n: int) -> np.ndarray | None:
        """``[n, p]`` the control arm's pair features (0); None without."""
        return None if self.pair_x is None else np.zeros((n, self.pair_x.shape[-1]), np.float32)


def _with_coupon(user_x: np.ndarray, coupon_x: np.ndarray, pair_x: np.ndarray | None = None) -> np.ndarray:
    """``[user_x, coupon_x(, pair_x)]`` with one coupon row broadcast to every user, or row by row."""
    c = np.broadcast_to(coupon_x, (len(user_x), coupon_x.shape[-1]))
    return np.concatenate([user_x, c] if pair_x is None else [user_x, c, pair_x], axis=1)


class SLearner:
    """One regressor of the reward on ``[user, coupon, treated]``; effect ``f(x, c, 1) - f(x, none, 0)``."""

    def __init__(self, params: Mapping[str, Any] | None = None):
        self.params = dict(params or lgbm_params())
        self.model: Any = None

    def fit(self, rows: LoggedRows) -> SLearner:
        treated = (~rows.control).astype(np.float32)[:, None]
        x = np.concatenate([_with_coupon(rows.user_x, rows.coupon_x, rows.pair_x), treated], 1)
        self.model = _regressor(x, rows.reward, self.params)
        return self

    def effect(self, user_x: np.ndarray, arms: Arms) -> np.ndarray:
        """``[n, m]`` predicted incremental reward of each coupon against none."""
        n = len(user_x)
        none = _with_coupon(user_x, arms.none_x, arms.none_pair(n))
        base = _predict(self.model, np.concatenate([none, np.zeros((n, 1))], 1))
        out = np.empty((n, len(arms.kind)))
        for j, cx in enumerate(arms.coupon_x):
            x = np.concatenate([_with_coupon(user_x, cx, arms.pair(j)), np.ones((n, 1))], 1)
            out[:, j] = _predict(self.model, x) - base
        return out


class TLearner:
    """A reward regressor on the control rows (user features) and one per coupon kind (user and coupon
    features); effect ``f_kind(x, c) - f_none(x)``. A kind with fewer than :data:`MIN_ROWS` rows gets NaN."""

    def __init__(self, params: Mapping[str, Any] | None = None):
        self.params = dict(params or lgbm_params())
        self.none: Any = None
        self.kinds: dict[Hashable, Any] = {}

    def fit(self, rows: LoggedRows) -> TLearner:
        control = rows.control
        if control.sum() >= MIN_ROWS:
            self.none = _regressor(rows.user_x[control], rows.reward[control], self.params)
        for k in pd.unique(rows.kind[~control]):
            sel = rows.kind == k
            if sel.sum() >= MIN_ROWS:
                pair = None if rows.pair_x is None else rows.pair_x[sel]
                self.kinds[k] = _regressor(
                    _with_coupon(rows.user_x[sel], rows.coupon_x[sel], pair), rows.reward[sel], self.params
                )
        return self

    def predict_none(self, user_x: np.ndarray) -> np.ndarray:
        """``[n]`` predicted reward without a coupon (NaN without a control model)."""
        return np.full(len(user_x), np.nan) if self.none is None else _predict(self.none, user_x)

    def predict_rows(
        self, user_x: np.ndarray, coupon_x: np.ndarray, kind: np.ndarray, pair_x: np.ndarray | None = None
    ) -> np.ndarray:
        """``[n]`` predicted reward of row i's coupon (``coupon_x[i]``, ``kind[i]``, ``pair_x[i]``); NaN for
        unknown kinds."""
        out = np.full(len(user_x), np.nan)
        for k, model in self.kinds.items():
            sel = kind == k
            if sel.any():
                pair = None if pair_x is None else pair_x[sel]
                out[sel] = _predict(model, _with_coupon(user_x[sel], coupon_x[sel], pair))
        return out

    def effect(self, user_x: np.ndarray, arms: Arms) -> np.ndarray:
        """``[n, m]`` predicted incremental reward of each coupon against none."""
        base = self.predict_none(user_x)
        out = np.full((len(user_x), len(arms.kind)), np.nan)
        for j, (cx, k) in enumerate(zip(arms.coupon_x, arms.kind, strict=True)):
            if k in self.kinds:
                out[:, j] = _predict(self.kinds[k], _with_coupon(user_x, cx, arms.pair(j))) - base
        return out


def dr_pseudo_outcomes(
    reward: np.ndarray,
    propensity: np.ndarray,
    is_arm: np.ndarray,
    is_control: np.ndarray,
    mu_arm: np.ndarray,
    mu_none: np.ndarray,
) -> np.ndarray:
    """Doubly robust pseudo-outcomes of the effect of an arm against no coupon, one per (row, arm) pair::

        phi = mu_arm - mu_none + 1[logged arm = arm] (r - mu_arm) / p - 1[logged none] (r - mu_none) / p

    with ``p`` the propensity of the logged arm. Its mean given the user's features is the true effect
    whenever the logging policy could have drawn the arm and no coupon (whatever ``mu``).

    Args:
        reward: Logged reward of the pair's row.
        propensity: Propensity of the row's logged arm, in (0, 1].
        is_arm: The row's logged arm is the pair's arm.
        is_control: The row's logged arm is no coupon.
        mu_arm: Predicted reward of the pair's arm for the row's user (not fitted on the row).
        mu_none: Predicted reward of no coupon for the row's user (not fitted on the row).
    """
    r = np.asarray(reward, np.float64)
    p = np.asarray(propensity, np.float64)
    a, c = np.asarray(is_arm, bool), np.asarray(is_control, bool)
    return mu_arm - mu_none + np.where(a, (r - mu_arm) / p, 0.0) - np.where(c, (r - mu_none) / p, 0.0)


@dataclass(frozen=True)
class DRPairs:
    """(logged row, arm) pairs for :class:`DRLearner`: the arms the row's logging policy could have drawn.

    Attributes:
        row: ``[k]`` index into the logged rows.
        coupon_x: ``[k, dc]`` the arm's transformed coupon features (as of the row's issue date).
        kind: ``[k]`` the arm's coupon kind.
        is_arm: ``[k]`` the row's logged arm is this arm.
        pair_x: ``[k, p]`` pair features of the row's user and the arm; None: no pair features.
    """

    row: np.ndarray
    coupon_x: np.ndarray
    kind: np.ndarray
    is_arm: np.ndarray
    pair_x: np.ndarray | None = None


def dr_pairs(
    day: np.ndarray,
    coupon_id: np.ndarray,
    coupon_x: np.ndarray,
    kind: np.ndarray,
    use: np.ndarray,
    allowed: Sequence[frozenset[str] | None] | None = None,
    max_pairs: int = 0,
    seed: int = 0,
    pair_of: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> DRPairs:
    """Pair every ``use`` row with every coupon logged on its day (its features taken from a row that logged
    it), or with those of ``allowed[i]`` where given.

    Args:
        day: ``[n]`` issue dates.
        coupon_id: ``[n]`` logged coupon (None: no coupon).
        coupon_x: ``[n, dc]`` transformed features of the logged coupon.
        kind: ``[n]`` kind of the logged coupon.
        use: ``[n]`` rows to pair (randomised logging: known propensities).
        allowed: Per row, the coupons its logging policy could draw (None: any coupon of the day).
        max_pairs: Keep a uniform random sample of at most about this many pairs (0: all); independent of
            the logged arms, so the pseudo-outcomes stay unbiased.
        seed: Of that sample.
        pair_of: ``(rows, arm_rows) -> [k, p]``: pair features of row ``rows[i]``'s user and the coupon
            logged by row ``arm_rows[i]`` (None: no pair features).
    """
    ids = pd.Series(coupon_id, dtype=object)
    id_arr = ids.to_numpy()
    logged = ids.notna().to_numpy()
    arms = pd.DataFrame({"day": day, "coupon_id": ids, "i": np.arange(len(ids))})[logged]
    arms = arms.drop_duplicates(["day", "coupon_id"]).sort_values(["day", "coupon_id"])
    by_day = {d: g for d, g in arms.groupby("day", sort=False)}
    rows_out, arm_rows = [], []
    restricted = np.array([a is not None for a in allowed], bool) if allowed is not None else None
    users = pd.DataFrame({"day": day, "i": np.arange(len(ids))})[np.asarray(use, bool)]
    for d, g in users.groupby("day", sort=False):
        a = by_day.get(d)
        if a is None:
            continue
        r, c = np.repeat(g["i"].to_numpy(), len(a)), np.tile(a["i"].to_numpy(), len(g))
        if allowed is not None and restricted is not None:
            ok = np.ones(len(r), bool)
            for k in np.flatnonzero(restricted[r]):
                ok[k] = id_arr[c[k]] in allowed[r[k]]  # type: ignore[operator]
            r, c = r[ok], c[ok]
        rows_out.append(r)
        arm_rows.append(c)
    row = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
    arm = np.concatenate(arm_rows) if arm_rows else np.zeros(0, np.int64)
    if max_pairs and len(row) > max_pairs:
        keep = np.random.default_rng(seed).random(len(row)) < max_pairs / len(row)
        row, arm = row[keep], arm[keep]
    return DRPairs(
        row=row,
        coupon_x=np.asarray(coupon_x)[arm],
        kind=np.asarray(kind, object)[arm],
        is_arm=id_arr[row] == id_arr[arm],
        pair_x=None if pair_of is None else pair_of(row, arm),
    )


class DRLearner:
    """Per coupon kind, a regressor of the doubly robust pseudo-outcomes (:func:`dr_pseudo_outcomes`) of
    :class:`DRPairs` on ``[user, coupon]``; nuisances from two-fold cross-fitted :class:`TLearner` models.

    Args:
        params: The nuisance regressors' settings.
        final_params: The pseudo-outcome regressors' (their targets are noisy: larger leaves by default).
        seed: Of the folds.
    """

    def __init__(
        self, params: Mapping[str, Any] | None = None, final_params: Mapping[str, Any] | None = None, seed: int = 0
    ):
        self.params = dict(params or lgbm_params(seed))
        self.final_params = dict(final_params or lgbm_params(seed, min_data_in_leaf=1000))
        self.seed = seed
        self.kinds: dict[Hashable, Any] = {}

    def fit(self, rows: LoggedRows, pairs: DRPairs, propensity_clip: float = 0.01) -> DRLearner:
        """Fit on ``pairs`` of ``rows`` (the nuisances on all of ``rows``, cross-fitted)."""
        fold = np.random.default_rng(self.seed).integers(0, 2, len(rows))
        mu_arm = np.zeros(len(pairs.row))
        mu_none = np.zeros(len(pairs.row))
        for f in (0, 1):
            t = TLearner(self.params).fit(rows.take(np.flatnonzero(fold != f)))
            sel = fold[pairs.row] == f
            ux = rows.user_x[pairs.row[sel]]
            pair = None if pairs.pair_x is None else pairs.pair_x[sel]
            mu_arm[sel] = t.predict_rows(ux, pairs.coupon_x[sel], pairs.kind[sel], pair)
            mu_none[sel] = t.predict_none(ux)
        # an arm without a nuisance model: 0 (the pseudo-outcome stays unbiased, only noisier)
        mu_arm, mu_none = np.nan_to_num(mu_arm), np.nan_to_num(mu_none)
        p = np.clip(rows.propensity[pairs.row], propensity_clip, 1.0)
        phi = dr_pseudo_outcomes(rows.reward[pairs.row], p, pairs.is_arm, rows.control[pairs.row], mu_arm, mu_none)
        for k in pd.unique(pairs.kind):
            sel = pairs.kind == k
            if sel.sum() >= MIN_ROWS:
                pair = None if pairs.pair_x is None else pairs.pair_x[sel]
                x = _with_coupon(rows.user_x[pairs.row[sel]], pairs.coupon_x[sel], pair)
                self.kinds[k] = _regressor(x, phi[sel], self.final_params)
        return self

    def effect(self, user_x: np.ndarray, arms: Arms) -> np.ndarray:
        """``[n, m]`` predicted incremental reward of each coupon against none (NaN for unknown kinds)."""
        out = np.full((len(user_x), len(arms.kind)), np.nan)
        for j, (cx, k) in enumerate(zip(arms.coupon_x, arms.kind, strict=True)):
            if k in self.kinds:
                out[:, j] = _predict(self.kinds[k], _with_coupon(user_x, cx, arms.pair(j)))
        return out


def ips_arm_values(
    coupon_id: np.ndarray,
    day: np.ndarray,
    reward: np.ndarray,
    propensity: np.ndarray,
    group: np.ndarray | None = None,
) -> pd.DataFrame:
    """Self-normalised IPS value of giving each coupon against giving nothing, per group.

    For coupon ``c`` (and group ``g``): the IPS-weighted mean reward of the rows that logged ``c`` minus that of
    the rows that logged no coupon on the days ``c`` was logged (so both arms see the same days)::

        value = sum_{a=c} r / p / sum_{a=c} 1 / p - sum_{a=none, day in D_c} r / p / sum_{a=none, day in D_c} 1 / p

    Args:
        coupon_id: Logged coupon per row (None: no coupon). Rows of randomised logging policies only.
        day: Issue date per row.
        reward: Logged reward per row.
        propensity: Propensity of the logged arm per row, in (0, 1].
        group: Optional group per row (e.g. segment); one value per coupon and group.

    Returns:
        Columns ``group`` (None without groups), ``coupon_id``, ``value`` (EUR per decision), ``n_coupon`` and
        ``n_control`` (rows behind each mean).
    """
    w = 1.0 / np.asarray(propensity, np.float64)
    df = pd.DataFrame(
        {
            "group": np.full(len(w), None, object) if group is None else np.asarray(group, object),
            "coupon_id": pd.Series(coupon_id, dtype=object),
            "day": day,
            "w": w,
            "wr": w * np.asarray(reward, np.float64),
        }
    )
    df["group"] = df["group"].fillna("\x00")  # one key for "no group", restored below
    control = df["coupon_id"].isna()
    ctl = df[control].groupby(["group", "day"])[["w", "wr"]].sum()
    ctl["n"] = df[control].groupby(["group", "day"]).size()
    arm = df[~control]
    days = arm[["coupon_id", "day"]].drop_duplicates()
    out = []
    for (g, c), part in arm.groupby(["group", "coupon_id"], sort=True):
        d = days.loc[days["coupon_id"] == c, "day"]
        keys = [(g, x) for x in d if (g, x) in ctl.index]
        cw = ctl.loc[keys] if keys else ctl.iloc[:0]
        mean_c = part["wr"].sum() / part["w"].sum()
        mean_0 = cw["wr"].sum() / cw["w"].sum() if len(cw) and cw["w"].sum() > 0 else np.nan
        out.append((None if g == "\x00" else g, c, mean_c - mean_0, len(part), int(cw["n"].sum()) if len(cw) else 0))
    return pd.DataFrame(out, columns=["group", "coupon_id", "value", "n_coupon", "n_control"])
