"""Schemas of the Delta tables coupon-spark writes, in one place.

Each stage's section lists its tables as Spark ``StructType`` constants; the stage ends its output with a
``select`` that produces exactly this schema, and the tests compare against it.
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# ---- silver tables and quarantine (cleanse) --------------------------------------------------------------
#
# Landing files (``<lake.landing>/<YYYY-MM-DD>/``) are the raw contract with the shop's exports: the columns
# of each CSV (header line, in this order) and the keys of each JSON line. Every value arrives as text and is
# typed by the cleansing job; timestamps are ISO 8601 with an offset (any time zone), money is a decimal
# number in the ``currency`` of the record.
LANDING_FIELDS: dict[str, tuple[str, ...]] = {
    "users": ("user_id", "signup_date", "region", "city", "device", "segment", "updated_at"),
    "coupons": (
        "coupon_id",
        "campaign_id",
        "kind",
        "category",
        "face_value",
        "min_spend",
        "cost",
        "currency",
        "valid_from",
        "valid_to",
        "campaign_budget",
        "updated_at",
    ),
    "events": (
        "event_id",
        "event_type",
        "user_id",
        "ts",
        "session_id",
        "product_id",
        "category",
        "price",
        "currency",
        "order_id",
    ),
    "orders": (
        "order_id",
        "user_id",
        "ordered_at",
        "category",
        "amount",
        "discount",
        "currency",
        "coupon_id",
        "n_items",
        "updated_at",
    ),
    "issuances": ("issuance_id", "user_id", "coupon_id", "issued_at", "policy", "propensity"),
    "redemptions": (
        "redemption_id",
        "issuance_id",
        "user_id",
        "coupon_id",
        "order_id",
        "redeemed_at",
        "discount",
        "currency",
    ),
}
LANDING_FILES: dict[str, str] = {
    "users": "users.csv",
    "coupons": "coupons.csv",
    "events": "events.jsonl",
    "orders": "orders.csv",
    "issuances": "issuances.jsonl",
    "redemptions": "redemptions.jsonl",
}

MONEY = DecimalType(12, 2)  # every amount in the lake: base currency (EUR), two decimals

USERS = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("signup_date", DateType()),
        StructField("region", StringType()),
        StructField("city", StringType()),
        StructField("device", StringType()),
        StructField("segment", StringType()),
        StructField("updated_at", TimestampType()),
        StructField("valid_from", DateType(), False),
        StructField("valid_to", DateType()),
    ]
)
"""silver ``users``: a type-2 dimension (:mod:`coupon_spark.dimension`), one row per version of a user, in force
over the ingest dates ``[valid_from, valid_to)`` (``valid_to`` null: the current version); key (``user_id``,
``valid_from``). An ingest date adds a row for each user whose ``signup_date``, ``region``, ``city``, ``device``
or ``segment`` changed in its export (or who is new), and closes the user's previous row; the export's
``updated_at`` of a version is the one of the export that began it. The dimension as of D:
``valid_from <= D AND (valid_to IS NULL OR valid_to > D)`` (:func:`coupon_spark.dimension.in_force`).
``region`` is an upper-case country code, ``device`` one of ios/android/web, ``segment`` lower case."""

COUPONS = StructType(
    [
        StructField("coupon_id", StringType(), False),
        StructField("campaign_id", StringType()),
        StructField("kind", StringType()),
        StructField("category", StringType()),
        StructField("face_value_eur", MONEY),
        StructField("min_spend_eur", MONEY),
        StructField("cost_eur", MONEY),
        StructField("valid_from", DateType()),
        StructField("valid_to", DateType()),
        StructField("campaign_budget_eur", MONEY),
        StructField("updated_at", TimestampType()),
        StructField("ingest_date", DateType(), False),
    ]
)
"""silver ``coupons``: the coupon catalogue snapshot of ``ingest_date`` (partition column), one row per
``coupon_id``. ``category`` is a canonical category or ``all`` (site-wide); ``cost_eur`` is what one redemption
costs the shop; ``campaign_budget_eur`` is repeated on every coupon of the campaign; the coupon can be issued
from ``valid_from`` to ``valid_to`` inclusive (UTC dates)."""

EVENTS = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("event_type", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("event_time", TimestampType(), False),
        StructField("session_id", StringType()),
        StructField("product_id", StringType()),
        StructField("category", StringType()),
        StructField("price_eur", MONEY),
        StructField("order_id", StringType()),
        StructField("ingest_date", DateType(), False),
    ]
)
"""silver ``events``: views, carts and purchases, one row per ``event_id``, partitioned by ``ingest_date`` (the
landing folder they arrived in; ``event_time`` is UTC and may be up to ``cleanse.max_lateness_days`` earlier).
``event_type`` is view, cart or purchase; purchases carry their ``order_id``."""

ORDERS = StructType(
    [
        StructField("order_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("ordered_at", TimestampType(), False),
        StructField("category", StringType()),
        StructField("amount_eur", MONEY, False),
        StructField("discount_eur", MONEY),
        StructField("coupon_id", StringType()),
        StructField("n_items", IntegerType()),
        StructField("source_currency", StringType()),
        StructField("updated_at", TimestampType()),
        StructField("ingest_date", DateType(), False),
    ]
)
"""silver ``orders``: one row per ``order_id`` (the latest ``updated_at`` wins), partitioned by ``ingest_date``.
``amount_eur`` is the basket before the coupon discount, ``discount_eur`` the coupon's discount (0 without
coupon), both converted from ``source_currency`` at the configured rates."""

ISSUANCES = StructType(
    [
        StructField("issuance_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("coupon_id", StringType()),
        StructField("issued_at", TimestampType(), False),
        StructField("policy", StringType()),
        StructField("propensity", DoubleType()),
        StructField("ingest_date", DateType(), False),
    ]
)
"""silver ``issuances``: the logged decisions of the issuing policy, one row per ``issuance_id``, partitioned by
``ingest_date``. ``coupon_id`` null is the control arm ("no coupon"); ``propensity`` is the probability with which
``policy`` chose this action for this user (in (0, 1]), for off-policy evaluation."""

REDEMPTIONS = StructType(
    [
        StructField("redemption_id", StringType(), False),
        StructField("issuance_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("coupon_id", StringType(), False),
        StructField("order_id", StringType()),
        StructField("redeemed_at", TimestampType(), False),
        StructField("discount_eur", MONEY),
        StructField("ingest_date", DateType(), False),
    ]
)
"""silver ``redemptions``: one row per ``redemption_id``, partitioned by ``ingest_date``; every row refers to a
known issuance (of this date or of the ``cleanse.issuance_lookback_days`` before)."""

QUARANTINE = StructType(
    [
        StructField("ingest_date", DateType(), False),
        StructField("source", StringType(), False),
        StructField("source_file", StringType(), False),
        StructField("position", LongType(), False),
        StructField("raw_text", StringType()),
        StructField("reason", StringType(), False),
        StructField("detail", StringType()),
    ]
)
"""``quarantine``: every landing record the cleansing job rejected, partitioned by ``ingest_date``.
``position`` is the 1-based line number in ``source_file`` (the CSV header is line 1); ``raw_text`` is the line
as read (invalid UTF-8 bytes replaced by U+FFFD; ``detail`` then holds the original bytes in base64);
``reason`` is one of :data:`coupon_spark.cleanse.REASONS`, ``detail`` says which field and value."""

RUN_METRICS = StructType(
    [
        StructField("ingest_date", DateType(), False),
        StructField("source", StringType(), False),
        StructField("records_read", LongType(), False),
        StructField("records_accepted", LongType(), False),
        StructField("records_quarantined", LongType(), False),
        StructField("quarantined_by_reason", MapType(StringType(), LongType(), True)),
        StructField("reconciled", BooleanType(), False),
        StructField("run_id", StringType(), False),
        StructField("started_at", TimestampType(), False),
        StructField("finished_at", TimestampType(), False),
        StructField("input_digest", StringType(), True),
    ]
)
"""``run_metrics``: one row per (``ingest_date``, ``source``) and cleansing run, partitioned by ``ingest_date``
and replaced by a rerun. ``records_read = records_accepted + records_quarantined`` always holds for a row
that was written: the job checks it and fails before writing anything when it does not. ``input_digest``
fingerprints what the run cleansed (the landing folder's files: names, sizes, modification times; and the
cleanse settings): a rerun with the same digest commits nothing (``coupon-spark cleanse --force`` does)."""

SILVER_TABLES: dict[str, StructType] = {
    "users": USERS,
    "coupons": COUPONS,
    "events": EVENTS,
    "orders": ORDERS,
    "issuances": ISSUANCES,
    "redemptions": REDEMPTIONS,
}

# ---- features (features) ---------------------------------------------------------------------------------
#
# Feature columns are found by prefix, so the model and the scorer need no list of names:
#   ``uf_*`` numeric user features (double), ``uc_*`` categorical user features (string),
#   ``cf_*`` numeric coupon features (double), ``cc_*`` categorical coupon features (string).
# The per-category spend shares are ``uf_share_<category>`` for every category of ``cleanse.categories``.
USER_FEATURE_PREFIXES = ("uf_", "uc_")
COUPON_FEATURE_PREFIXES = ("cf_", "cc_")

USER_FEATURES_KEYS = StructType(
    [StructField("as_of_date", DateType(), False), StructField("user_id", StringType(), False)]
)
"""``user_features``: one row per (``as_of_date``, ``user_id``), partitioned by ``as_of_date``, for every user
signed up before it. Point in time: the snapshot of date D uses only records with an event time strictly before
D 00:00 UTC (so a decision taken on day D may use it). Columns: the keys, then ``uf_*`` doubles (recency,
frequency and monetary value over 7/30/90 days, category spend shares, views/carts/sessions, tenure, coupon
history: issued, redeemed, redemption rate, average discount taken, price-sensitivity signals) and ``uc_*``
strings (region, device, segment). Never null: counts are 0, a recency without any purchase is the cap."""

COUPON_FEATURES_KEYS = StructType(
    [
        StructField("as_of_date", DateType(), False),
        StructField("coupon_id", StringType(), False),
        StructField("campaign_id", StringType()),
    ]
)
"""``coupon_features``: one row per (``as_of_date``, ``coupon_id``) of the coupon catalogue as of D, partitioned by
``as_of_date``: the keys, ``cf_*`` doubles (face value, minimum spend, discount ratio, cost, campaign budget,
days left of validity, days since valid_from) and ``cc_*`` strings (kind, category). ``cf_days_left`` <= 0: not
issuable on D."""

TRAINING_EXAMPLES_KEYS = StructType(
    [
        StructField("issue_date", DateType(), False),
        StructField("issuance_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("coupon_id", StringType()),
        StructField("campaign_id", StringType()),
        StructField("issued_at", TimestampType(), False),
        StructField("policy", StringType()),
        StructField("propensity", DoubleType(), False),
        StructField("purchased", IntegerType(), False),
        StructField("redeemed", IntegerType(), False),
        StructField("revenue_eur", DoubleType(), False),
        StructField("coupon_cost_eur", DoubleType(), False),
        StructField("outcome_window_days", IntegerType(), False),
    ]
)
"""``training_examples``: one row per logged issuance whose outcome window has closed, the control arm
("no coupon": ``coupon_id`` null) included, partitioned by ``issue_date``. Then the user's ``uf_*``/``uc_*``
columns exactly as in ``user_features`` as of ``issue_date`` (nothing after the issue can leak in), and the
treatment's ``cf_*``/``cc_*`` columns as in ``coupon_features`` as of ``issue_date`` (0.0 / "none" for the
control arm). Outcomes over ``[issued_at, issue_date + outcome_window_days)`` (00:00 UTC): ``purchased`` (any
order, 0/1), ``redeemed`` (this issuance's coupon redeemed, 0/1), ``revenue_eur`` (order amounts at list price,
before coupon discounts), ``coupon_cost_eur`` (what the redemption cost the shop; for a price-off coupon, its
discount). The reward ``revenue_eur * margin - coupon_cost_eur`` so counts a discount once, as the coupon's cost.
``propensity`` is the logging policy's probability of this action for this user, in (0, 1]."""

FEATURE_STATS = StructType(
    [
        StructField("as_of_date", DateType(), False),
        StructField("feature", StringType(), False),
        StructField("kind", StringType(), False),
        StructField("transform", StringType(), False),
        StructField("center", DoubleType()),
        StructField("scale", DoubleType()),
        StructField("vocabulary", ArrayType(StringType())),
        StructField("source_table", StringType(), False),
        StructField("source_version", LongType(), False),
    ]
)
"""``feature_stats``: the transformation of every feature column, computed in Spark from the feature tables of
``as_of_date`` (partition) and stored with the Delta ``source_version`` they were computed from, so training
and scoring apply exactly the same transformation. ``kind`` numeric: ``transform`` is ``standard``
(``(x - center) / scale``) or ``log1p_standard`` (``(log1p(max(x, 0)) - center) / scale``); ``kind``
categorical: ``transform`` ``onehot`` over ``vocabulary`` (anything else maps to an out-of-vocabulary slot)."""


# ---- candidates (score) and allocations (allocate) -------------------------------------------------------

CANDIDATES_SCHEMA = StructType(
    [
        StructField("run_date", DateType(), False),
        StructField("user_id", StringType(), False),
        StructField("coupon_id", StringType(), False),
        StructField("campaign_id", StringType(), False),
        StructField("p_purchase", DoubleType()),
        StructField("p_purchase_none", DoubleType()),
        StructField("uplift", DoubleType()),
        StructField("p_redeem", DoubleType()),
        StructField("coupon_cost", DoubleType()),
        StructField("expected_cost", DoubleType()),
        StructField("expected_profit", DoubleType()),
        StructField("model_version", StringType()),
        StructField("rank", IntegerType()),
    ]
)
"""``candidates`` (written by ``score``, read by ``allocate``): one row per (``run_date``, ``user_id``,
``coupon_id``), only the eligible top-K coupons of each user, partitioned by ``run_date``.
``p_purchase`` = p(purchase | this coupon), ``p_purchase_none`` = p(purchase | no coupon), ``uplift`` =
``p_purchase - p_purchase_none``; ``coupon_cost``: money the shop pays if the coupon is redeemed;
``expected_cost = p_redeem * coupon_cost``; ``expected_profit``: expected incremental profit against no
coupon, net of ``expected_cost`` (the value the allocator maximises; may be negative; 0 where positive but
not above the model's decision threshold, see ``coupon_spark.model.gate``); ``rank``: 1 = best
for the user. The allocator skips (and counts) rows with a null id, a non-finite profit or a negative or
non-finite cost."""

ALLOCATIONS_SCHEMA = StructType(
    [
        StructField("run_date", DateType()),
        StructField("user_id", StringType()),
        StructField("coupon_id", StringType()),
        StructField("campaign_id", StringType()),
        StructField("policy", StringType()),
        StructField("holdout", BooleanType()),
        StructField("score", DoubleType()),
        StructField("expected_uplift", DoubleType()),
        StructField("expected_profit", DoubleType()),
        StructField("expected_cost", DoubleType()),
        StructField("coupon_cost", DoubleType()),
        StructField("propensity", DoubleType()),
        StructField("model_version", StringType()),
        StructField("run_id", StringType()),
    ]
)
"""``allocations`` (written by ``allocate``), partitioned by ``run_date``, replaced by a rerun. Every user with
candidates that day has at least one row: one per coupon issued, or exactly one with ``coupon_id`` (and the
option columns) null when it gets nothing, so the evaluation sees the holdout and the untreated users.
``policy``: ``holdout`` (``holdout`` true; never a coupon), ``exploration`` (a uniformly random option among
the user's candidates and "none"), or ``model`` (the dual solution). ``propensity``: probability of the
logged action given the user's arm: 1 for model and holdout, ``1 / (candidates + 1)`` for exploration (the
arm shares are in ``allocation_runs``). ``score``: the issued coupon's profit less its multiplier-weighted
cost (what the allocator ranked on); ``expected_uplift``: the candidate's ``uplift``."""

BUDGET_USE = StructType(
    [
        StructField("name", StringType()),
        StructField("kind", StringType()),
        StructField("campaign_id", StringType()),
        StructField("limit", DoubleType()),
        StructField("spend", DoubleType()),
        StructField("exploration_spend", DoubleType()),
        StructField("use", DoubleType()),
        StructField("multiplier", DoubleType()),
    ]
)

ALLOCATION_RUNS_SCHEMA = StructType(
    [
        StructField("run_date", DateType()),
        StructField("run_id", StringType()),
        StructField("started_at", TimestampType()),
        StructField("seconds", DoubleType()),
        StructField("n_users", LongType()),
        StructField("n_options", LongType()),
        StructField("n_invalid_options", LongType()),
        StructField("n_holdout", LongType()),
        StructField("n_exploration", LongType()),
        StructField("n_model", LongType()),
        StructField("exploration_share", DoubleType()),
        StructField("cost_basis", StringType()),
        StructField("max_per_user", IntegerType()),
        StructField("primal_value", DoubleType()),
        StructField("dual_bound", DoubleType()),
        StructField("gap", DoubleType()),
        StructField("passes", IntegerType()),
        StructField("rounds", IntegerType()),
        StructField("converged", BooleanType()),
        StructField("budgets", ArrayType(BUDGET_USE)),
    ]
)
"""``allocation_runs``: one row per allocation run, partitioned by ``run_date`` (a rerun replaces it).
``primal_value``: total expected profit of the allocation (model + exploration arms); ``dual_bound``: the
Lagrangian upper bound on any allocation within the budgets (model arm, exploration fixed);
``gap = (dual_bound - primal_value) / dual_bound``. Each budget's ``spend`` (on the run's ``cost_basis`` for
money, coupons for counts; exploration included) never exceeds its ``limit``; ``multiplier`` is its dual
price. ``exploration_share`` is the effective share after trimming exploration to its budget fraction."""

# ---- evaluation (evaluate) ------------------------------------------------------------------------------

EVALUATION_METRICS = StructType(
    [
        StructField("run_date", DateType(), False),
        StructField("section", StringType(), False),
        StructField("metric", StringType(), False),
        StructField("dimension", StringType()),
        StructField("dimension_value", StringType()),
        StructField("value", DoubleType()),
        StructField("ci_low", DoubleType()),
        StructField("ci_high", DoubleType()),
        StructField("n", LongType()),
        StructField("note", StringType()),
        StructField("run_id", StringType(), False),
        StructField("evaluated_at", TimestampType(), False),
    ]
)
"""``evaluation_metrics`` (written by ``evaluate``): every figure of the evaluation of ``run_date`` in long format,
partitioned by ``run_date`` and replaced by a rerun. ``section`` is one of model, policy_truth, policy_logs,
holdout, budget, fairness; ``metric`` names the figure (e.g. ``ratio_to_oracle``, ``dr``,
``registry_validation.auc``); ``dimension``/``dimension_value`` what it is broken down by (policy, target,
arm, budget, segment, region, bin; null when not); ``ci_low``/``ci_high`` its interval at
``evaluate.confidence`` where it has one; ``n`` the rows or users behind it; ``value`` null when it is not
defined (never a made-up number). Money is EUR."""

__all__: list[str] = [
    "ALLOCATIONS_SCHEMA",
    "ALLOCATION_RUNS_SCHEMA",
    "BUDGET_USE",
    "CANDIDATES_SCHEMA",
    "COUPONS",
    "COUPON_FEATURES_KEYS",
    "COUPON_FEATURE_PREFIXES",
    "EVALUATION_METRICS",
    "EVENTS",
    "FEATURE_STATS",
    "ISSUANCES",
    "LANDING_FIELDS",
    "LANDING_FILES",
    "MONEY",
    "ORDERS",
    "QUARANTINE",
    "REDEMPTIONS",
    "RUN_METRICS",
    "SILVER_TABLES",
    "TRAINING_EXAMPLES_KEYS",
    "USERS",
    "USER_FEATURES_KEYS",
    "USER_FEATURE_PREFIXES",
    "StructType",
]
