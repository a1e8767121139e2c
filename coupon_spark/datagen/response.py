"""The hidden response model: what a user would do on a day with each coupon, or with none.

This is the oracle of the synthetic shop. The generator draws every purchase and redemption from it, and the
evaluation uses the same functions to know the true value of any policy. The pipeline stages never call it.

For a user ``u`` with intent logit ``alpha``, price sensitivity ``s``, typical basket ``b`` (EUR), margin rate
``g``, category tastes ``taste`` (summing to 1 over ``K`` categories) and a response ``r[kind]`` to each kind
of coupon, on a day with seasonality shift ``season``, and a coupon ``c`` of kind ``k``, face value ``f``,
minimum spend ``m``, cost ``cost`` and category scope (``all`` or one category ``j``)::

    match    = 1 for a site-wide coupon, else min(2, K * taste[j])       (how much the scope suits the user)
    value    = min(3, (f / max(b, m)) / 0.25) * (0.5 + s)                 (how much the coupon is worth to them)
    tau      = r[k] * value * match                                       (logit shift; < 0 for sleeping dogs)
    p_none   = sigmoid(alpha + season)                                    p(purchase | no coupon)
    p        = sigmoid(alpha + season + tau)                              p(purchase | c)
    use      = 0.9 * min(1, K * taste[j] or 1) * min(1, b / m)            p(uses c | purchases with c)
    p_redeem = p * use
    top_up   = E[max(A, m + 0.5)] - b,  A ~ b * lognormal(sd 0.5, mean 1)  what a redeemer adds to reach m
    profit   = p * g * b + p_redeem * (g * top_up - cost)                 expected profit (EUR) of the day

A coupon acts on the day it is issued only (it expires at the end of that UTC day).

The profit is the shop's: the margin ``g`` on what the user buys at list price (the basket ``A``, log-normal
around ``b`` with log-sd :data:`BASKET_LOG_SD`, topped up by a redeemer to :data:`TOP_UP_EUR` above the
minimum spend, as the generator draws it), less what the coupon costs the shop when redeemed. A price-off
coupon's discount *is* its cost: counted once, not also as revenue lost (see ``training_examples.revenue_eur``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from coupon_spark.basket import log_normal_top_up
from coupon_spark.datagen.world import CATEGORIES, COUPON_KINDS

NO_COUPON = -1
K = len(CATEGORIES)
BASKET_LOG_SD = 0.5
"""Log-sd of an order's amount around the user's typical basket (its mean): ``b * exp(0.5 z - 0.125)``."""
TOP_UP_EUR = 0.5
"""A redeemer below the minimum spend tops the basket up to this much above it."""
UPLIFT_TYPES: tuple[str, ...] = ("persuadable", "sure_thing", "lost_cause", "sleeping_dog")


@dataclass(frozen=True)
class UserTraits:
    """Hidden traits of ``n`` users as numpy arrays (see :data:`coupon_spark.datagen.world.USER_TRUTH`)."""

    alpha: np.ndarray  # (n,)
    price_sensitivity: np.ndarray  # (n,)
    basket_eur: np.ndarray  # (n,)
    margin_rate: np.ndarray  # (n,)
    taste: np.ndarray  # (n, K)
    kind_response: np.ndarray  # (n, len(COUPON_KINDS))

    @classmethod
    def from_pandas(cls, pdf: pd.DataFrame) -> UserTraits:
        """From a frame with the trait columns (``taste``/``kind_response`` as lists or arrays)."""
        n = len(pdf)
        return cls(
            alpha=pdf["alpha"].to_numpy(np.float64),
            price_sensitivity=pdf["price_sensitivity"].to_numpy(np.float64),
            basket_eur=pdf["basket_eur"].to_numpy(np.float64),
            margin_rate=pdf["margin_rate"].to_numpy(np.float64),
            taste=np.stack(list(pdf["taste"])).astype(np.float64) if n else np.zeros((0, K)),
            kind_response=(
                np.stack(list(pdf["kind_response"])).astype(np.float64) if n else np.zeros((0, len(COUPON_KINDS)))
            ),
        )


@dataclass(frozen=True)
class CouponParams:
    """Parameters of ``m`` coupons as numpy arrays (see :data:`coupon_spark.datagen.world.COUPON_TRUTH`)."""

    coupon_id: np.ndarray  # (m,) str
    kind_index: np.ndarray  # (m,) int, into COUPON_KINDS
    category_index: np.ndarray  # (m,) int, into CATEGORIES; -1 = site-wide
    face_value_eur: np.ndarray
    min_spend_eur: np.ndarray
    cost_eur: np.ndarray

    @classmethod
    def from_pandas(cls, pdf: pd.DataFrame) -> CouponParams:
        """From a frame with :data:`coupon_spark.datagen.world.COUPON_TRUTH` columns."""
        cat = {c: i for i, c in enumerate(CATEGORIES)}
        kind = {k: i for i, k in enumerate(COUPON_KINDS)}
        return cls(
            coupon_id=pdf["coupon_id"].to_numpy(str),
            kind_index=np.array([kind[k] for k in pdf["kind"]], dtype=np.int64),
            category_index=np.array([cat.get(c, -1) for c in pdf["category"]], dtype=np.int64),
            face_value_eur=pdf["face_value_eur"].to_numpy(np.float64),
            min_spend_eur=pdf["min_spend_eur"].to_numpy(np.float64),
            cost_eur=pdf["cost_eur"].to_numpy(np.float64),
        )

    def index_of(self, coupon_ids: np.ndarray | pd.Series) -> np.ndarray:
        """Position of each coupon id (``None``/unknown -> :data:`NO_COUPON`)."""
        pos = {c: i for i, c in enumerate(self.coupon_id)}
        return np.array([pos.get(c, NO_COUPON) if isinstance(c, str) else NO_COUPON for c in coupon_ids], np.int64)


@dataclass(frozen=True)
class Response:
    """True outcome probabilities and expected profit; arrays of one shape (pairs, or users x treatments)."""

    p_purchase: np.ndarray
    p_redeem: np.ndarray
    expected_profit: np.ndarray


def expected_top_up(basket: np.ndarray, min_spend: np.ndarray) -> np.ndarray:
    """``E[max(A, s)] - b`` for the generator's amount ``A`` (log-normal with mean ``b`` = ``basket`` and log-sd
    :data:`BASKET_LOG_SD`), ``s = min_spend +`` :data:`TOP_UP_EUR` (:func:`coupon_spark.basket.log_normal_top_up`).
    The generator's amount cap (5,000 EUR) is left out: it binds on no basket near a minimum spend."""
    return log_normal_top_up(basket, BASKET_LOG_SD, np.asarray(min_spend, np.float64) + TOP_UP_EUR)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


def _respond(
    alpha: np.ndarray,
    sens: np.ndarray,
    basket: np.ndarray,
    margin: np.ndarray,
    scope_taste: np.ndarray,
    sitewide: np.ndarray,
    response: np.ndarray,
    face: np.ndarray,
    min_spend: np.ndarray,
    cost: np.ndarray,
    has_coupon: np.ndarray,
    season: np.ndarray | float,
) -> Response:
    """The model on broadcastable arrays (see the module docstring); the only place it is written down."""
    match = np.where(sitewide, 1.0, np.minimum(2.0, K * scope_taste))
    value = np.minimum(3.0, (face / np.maximum(basket, min_spend)) / 0.25) * (0.5 + sens)
    tau = np.where(has_coupon, response * value * match, 0.0)
    p = _sigmoid(alpha + season + tau)
    use = (
        0.9
        * np.where(sitewide, 1.0, np.minimum(1.0, K * scope_taste))
        * np.minimum(1.0, basket / np.maximum(min_spend, 1e-9))
    )
    p_redeem = np.where(has_coupon, p * use, 0.0)
    per_redemption = np.where(has_coupon, margin * expected_top_up(basket, min_spend) - cost, 0.0)
    profit = p * margin * basket + p_redeem * per_redemption
    return Response(p_purchase=p, p_redeem=p_redeem, expected_profit=profit)


def response_pairs(
    users: UserTraits, coupons: CouponParams, coupon_index: np.ndarray, season: np.ndarray | float = 0.0
) -> Response:
    """True response of user ``i`` to coupon ``coupon_index[i]`` (:data:`NO_COUPON` = none); shape (n,).

    Args:
        users: ``n`` users.
        coupons: The catalogue.
        coupon_index: (n,) positions into ``coupons``, or :data:`NO_COUPON`.
        season: Purchase-logit shift of the day (:func:`coupon_spark.datagen.world.season_logit`), scalar or (n,).
    """
    n = len(users.alpha)
    has = coupon_index >= 0
    ci = np.where(has, coupon_index, 0)
    if len(coupons.coupon_id) == 0:  # no catalogue: everyone is untreated
        zeros = np.zeros(n)
        face = min_spend = cost = response = zeros
        cat = np.full(n, -1)
    else:
        face, min_spend, cost = coupons.face_value_eur[ci], coupons.min_spend_eur[ci], coupons.cost_eur[ci]
        cat = coupons.category_index[ci]
        response = users.kind_response[np.arange(n), coupons.kind_index[ci]]
    scope_taste = users.taste[np.arange(n), np.maximum(cat, 0)] if n else np.zeros(0)
    return _respond(
        users.alpha, users.price_sensitivity, users.basket_eur, users.margin_rate, scope_taste, cat < 0,
        response, face, min_spend, cost, has, season,
    )  # fmt: skip


def response_matrix(users: UserTraits, coupons: CouponParams, season: float = 0.0) -> Response:
    """True response of every user to every coupon; arrays of shape (n, m + 1), column 0 = no coupon."""
    col = lambda a: a[:, None]  # noqa: E731
    cat = coupons.category_index[None, :]
    scope_taste = users.taste[:, np.maximum(coupons.category_index, 0)]
    treated = _respond(
        col(users.alpha), col(users.price_sensitivity), col(users.basket_eur), col(users.margin_rate), scope_taste,
        cat < 0, users.kind_response[:, coupons.kind_index], coupons.face_value_eur[None, :],
        coupons.min_spend_eur[None, :], coupons.cost_eur[None, :], np.ones_like(cat, dtype=bool), season,
    )  # fmt: skip
    none = response_pairs(users, coupons, np.full(len(users.alpha), NO_COUPON), season)
    stack = lambda a, b: np.concatenate([a[:, None], b], axis=1)  # noqa: E731
    return Response(
        p_purchase=stack(none.p_purchase, treated.p_purchase),
        p_redeem=stack(none.p_redeem, treated.p_redeem),
        expected_profit=stack(none.expected_profit, treated.expected_profit),
    )


def logit_shift_and_use(users: UserTraits, coupons: CouponParams) -> tuple[np.ndarray, np.ndarray]:
    """Each coupon's shift of each user's purchase logit and its p(uses it | buys); both (n, m).

    Read off :func:`response_matrix` (season 0): ``tau = logit p(c) - logit p(none)`` and
    ``use = p_redeem(c) / p(c)``. Neither depends on the day, so on a day with shift ``season``
    ``p(c) = sigmoid(alpha + season + tau)``: what the back-fill needs to draw a year of user-days in Spark
    without restating the model.
    """
    r = response_matrix(users, coupons, 0.0)
    p = np.clip(r.p_purchase, 1e-300, 1.0 - 1e-16)
    lg = np.log(p) - np.log1p(-p)
    tau = lg[:, 1:] - lg[:, :1]
    use = np.divide(r.p_redeem[:, 1:], r.p_purchase[:, 1:], out=np.zeros_like(tau), where=r.p_purchase[:, 1:] > 0)
    return tau, use


def uplift_type(p_none: np.ndarray, p_coupon: np.ndarray, eps: float = 0.01, buy_threshold: float = 0.2) -> np.ndarray:
    """The uplift type of each (user, treatment) from its two purchase probabilities.

    ``persuadable``: the coupon raises p(purchase) by at least ``eps``; ``sleeping_dog``: lowers it by at least
    ``eps``; otherwise ``sure_thing`` when p(purchase | none) >= ``buy_threshold``, else ``lost_cause``.
    """
    d = np.asarray(p_coupon) - np.asarray(p_none)
    flat = np.where(np.asarray(p_none) >= buy_threshold, "sure_thing", "lost_cause")
    return np.where(d >= eps, "persuadable", np.where(d <= -eps, "sleeping_dog", flat))


def user_uplift_types(matrix: Response, eps: float = 0.01, buy_threshold: float = 0.2) -> np.ndarray:
    """One type per user: :func:`uplift_type` of its mean purchase probability over all coupons."""
    p = matrix.p_purchase
    return uplift_type(p[:, 0], p[:, 1:].mean(axis=1), eps, buy_threshold)


RESPONSE_SCHEMA = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("coupon_id", StringType(), True),
        StructField("p_purchase", DoubleType(), False),
        StructField("p_redeem", DoubleType(), False),
        StructField("expected_profit", DoubleType(), False),
        StructField("uplift", DoubleType(), False),
        StructField("incremental_profit", DoubleType(), False),
    ]
)
"""Long form of the oracle: one row per user and treatment (``coupon_id`` null = no coupon); ``uplift`` and
``incremental_profit`` are against no coupon."""


def response_frame(users: DataFrame, coupons: pd.DataFrame, season: float = 0.0) -> DataFrame:
    """The oracle over a Spark DataFrame of users (with the trait columns), as :data:`RESPONSE_SCHEMA` rows.

    Vectorised per Arrow batch with :func:`response_matrix`; the catalogue travels with the function.
    """
    params = CouponParams.from_pandas(coupons)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ids = np.concatenate([[None], params.coupon_id.astype(object)])
        for pdf in batches:
            r = response_matrix(UserTraits.from_pandas(pdf), params, season)
            n, t = r.p_purchase.shape
            yield pd.DataFrame(
                {
                    "user_id": np.repeat(pdf["user_id"].to_numpy(object), t),
                    "coupon_id": np.tile(ids, n),
                    "p_purchase": r.p_purchase.ravel(),
                    "p_redeem": r.p_redeem.ravel(),
                    "expected_profit": r.expected_profit.ravel(),
                    "uplift": (r.p_purchase - r.p_purchase[:, :1]).ravel(),
                    "incremental_profit": (r.expected_profit - r.expected_profit[:, :1]).ravel(),
                }
            )

    cols = ["user_id", "alpha", "price_sensitivity", "basket_eur", "margin_rate", "taste", "kind_response"]
    return (
        users.select(*cols).mapInPandas(score, RESPONSE_SCHEMA).select(*[F.col(f.name) for f in RESPONSE_SCHEMA.fields])
    )
