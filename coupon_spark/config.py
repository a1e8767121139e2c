"""Typed configuration: YAML files in ``conf/`` loaded into dataclasses and validated.

An environment file names its parent with ``extends:`` (``local.yaml`` extends ``base.yaml``); mappings are
merged key by key, the child winning. Every key is checked against the dataclasses below: an unknown key, a
value of the wrong type or a missing required value raises :class:`ConfigError`, which names the dotted key
and the file the value came from. Only ``yaml.safe_load`` is used.

Example:
    >>> cfg = Config.from_file("conf/local.yaml", overrides=["lake.root=/tmp/lake"])
    >>> cfg.lake.root
    '/tmp/lake'
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from coupon_spark.errors import InputError


class ConfigError(InputError, ValueError):
    """A configuration file is wrong; the message names the key and the file."""

    label = "configuration error"


def require(section: str, obj: object, checks: list[tuple[str, bool, str]]) -> None:
    """Raise :class:`ConfigError` for the first ``(key, ok, wanted)`` of ``checks`` that is not ok, naming
    ``section.key``, what it must be and the value found on ``obj``."""
    for key, ok, want in checks:
        if not ok:
            raise ConfigError(f"{section}.{key}: must be {want}, found {getattr(obj, key)!r}")


@dataclass(frozen=True)
class SparkConfig:
    """How the SparkSession is built.

    Attributes:
        master: Spark master URL; empty to take it from ``spark-submit --master``.
        app_name: Application name shown by the cluster manager.
        shuffle_partitions: ``spark.sql.shuffle.partitions``.
        arrow_batch_size: Rows per Arrow batch for pandas/Arrow UDFs.
        driver_memory: ``spark.driver.memory`` (only effective when the JVM is started by this process).
        conf: Extra Spark settings, passed through unchanged.
        connector_jars: The Delta Spark connector's jars for a session this process starts on a ``local`` master:
            ``auto`` takes the folder ``$COUPON_SPARK_JARS``, else the checkout's ``.jars/`` (``make setup``
            fetches them with Maven); a folder or comma-separated jar paths; ``none``: no jars (the bridge
            backend). On a cluster (``spark-submit --jars`` / ``--packages``, a Delta runtime) nothing is added.
    """

    master: str = "local[*]"
    app_name: str = "coupon-spark"
    shuffle_partitions: int = 8
    arrow_batch_size: int = 20000
    driver_memory: str = "4g"
    conf: dict[str, str] = field(default_factory=dict)
    connector_jars: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            ("shuffle_partitions", self.shuffle_partitions >= 1, "an integer >= 1"),
            ("arrow_batch_size", self.arrow_batch_size >= 1, "an integer >= 1"),
        ]
        require("spark", self, checks)


@dataclass(frozen=True)
class LakeConfig:
    """Where and how Delta tables are written.

    Attributes:
        root: Lakehouse root (local path or object-store URI).
        landing: Folder of raw landing files, one sub-folder per ingest date.
        backend: ``auto`` (native when the Delta connector is on the classpath, else bridge), ``bridge`` or
            ``native``.
        target_file_rows: The most rows per Parquet data file the bridge writes; cleanse also writes each
            table's date in at most ``ceil(rows / target_file_rows)`` files, on either backend.
        compression: Bridge backend: Parquet codec.
        bridge_writer: Bridge backend: who writes the data files. ``spark``: Spark's own Parquet writer (its
            committer publishes them when the job succeeds; the driver reads their footers for the Delta
            statistics); ``arrow``: pyarrow inside the Spark tasks (the rows cross into Python).
        tables: Logical table name -> path relative to ``root`` (or absolute).
    """

    root: str
    landing: str
    backend: Literal["auto", "bridge", "native"] = "auto"
    target_file_rows: int = 1_000_000
    compression: Literal["snappy", "zstd", "gzip", "none"] = "snappy"
    bridge_writer: Literal["spark", "arrow"] = "spark"
    tables: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require("lake", self, [("target_file_rows", self.target_file_rows >= 1, "an integer >= 1")])

    def table_path(self, name: str) -> str:
        """Absolute location of the table ``name`` (a logical name from ``tables`` or a relative path)."""
        rel = self.tables.get(name, name)
        if "://" in rel or os.path.isabs(rel):
            return rel
        return join_uri(self.root, rel)


DEFECT_KINDS = (
    "malformed",
    "bad_type",
    "missing_field",
    "bad_amount",
    "future_timestamp",
    "unknown_user",
    "unknown_coupon",
    "exact_duplicate",
    "near_duplicate",
    "bad_encoding",
)


@dataclass(frozen=True)
class ShopConfig:
    """The synthetic shop (``coupon-spark generate``).

    Attributes:
        seed: Every random draw is a hash of (seed, entity, draw number): same seed, same shop, any cluster.
        users: Size of the population (users who sign up later included).
        start_date: First day of the simulation (``YYYY-MM-DD``); signups, campaigns and seasonality count
            from it.
        signup_history_days: Existing users signed up over this many days before ``start_date``.
        new_signup_share: Share of the population that signs up after ``start_date``.
        signup_horizon_days: ...spread over this many days.
        views_per_user_day: Mean product views per active user and day (heavy-tailed across users).
        cart_rate: Probability that a view puts the product in the cart.
        campaigns: Number of coupon campaigns; each has ``coupons_per_campaign`` coupons.
        coupons_per_campaign: Coupons (face values) per campaign.
        budget_eur_per_1k_users: Campaign budget, scaled with the population.
        issue_rate: Share of active users the randomised logging policy reaches each day.
        control_share: Share of reached users the logging policy deliberately gives nothing (the control arm).
        dirty_rate: Probability that a landing record carries a defect.
        defects: Defect kinds to inject (a subset of ``DEFECT_KINDS``), equally likely.
        partitions: Spark partitions of the generated data (output does not depend on it).
        truth_dir: Where the hidden truth goes, relative to ``lake.root`` (or absolute); stages never read it.
        single_file: Concatenate each landing source into one file (else a folder of part files, as on a
            cluster).
        backfill_days: Days of the shop's past before its first logged day (orders, and the issuances and
            redemptions of an earlier randomised promotion), landed as one bulk import
            (:mod:`coupon_spark.datagen.backfill`); 0: the shop starts without a past.
        backfill_issue_rate: Share of active users the earlier promotion reached each day (one coupon of its
            catalogue, uniformly, or a deliberate nothing with ``control_share``).
        latent_weights: Shares of the hidden behaviour classes ``casual``, ``loyal``, ``dormant``, ``averse``
            (:data:`coupon_spark.datagen.world.LATENT_CLASSES`; normalised). The default is the world the
            figures of README are measured on; the tests keep a second world with another mix and seed, on
            which the model must not lose money.
    """

    seed: int = 42
    users: int = 10_000
    start_date: str = "2026-11-02"
    signup_history_days: int = 365
    new_signup_share: float = 0.1
    signup_horizon_days: int = 60
    views_per_user_day: float = 4.0
    cart_rate: float = 0.08
    campaigns: int = 4
    coupons_per_campaign: int = 3
    budget_eur_per_1k_users: float = 300.0
    issue_rate: float = 0.3
    control_share: float = 0.25
    dirty_rate: float = 0.01
    defects: list[str] = field(default_factory=lambda: list(DEFECT_KINDS))
    partitions: int = 8
    truth_dir: str = "_truth"
    single_file: bool = True
    backfill_days: int = 365
    backfill_issue_rate: float = 0.1
    latent_weights: list[float] = field(default_factory=lambda: [0.35, 0.12, 0.38, 0.15])

    def __post_init__(self) -> None:
        try:
            dt.date.fromisoformat(self.start_date)
        except ValueError:
            raise ConfigError(f"shop.start_date: expected YYYY-MM-DD, found {self.start_date!r}") from None
        unknown = sorted(set(self.defects) - set(DEFECT_KINDS))
        if unknown:
            raise ConfigError(f"shop.defects: unknown kinds {unknown}; known: {', '.join(DEFECT_KINDS)}")
        for name in (
            "new_signup_share",
            "cart_rate",
            "issue_rate",
            "control_share",
            "dirty_rate",
            "backfill_issue_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"shop.{name}: must be within [0, 1], found {getattr(self, name)!r}")
        w = self.latent_weights
        if len(w) != 4 or not all(isinstance(x, int | float) and 0 <= x < math.inf for x in w) or not sum(w) > 0:
            raise ConfigError(
                f"shop.latent_weights: expected 4 shares >= 0 (casual, loyal, dormant, averse) with a positive sum, "
                f"found {w!r}"
            )
        checks = [
            ("users", self.users >= 1, "an integer >= 1"),
            ("campaigns", self.campaigns >= 1, "an integer >= 1"),
            ("coupons_per_campaign", self.coupons_per_campaign >= 1, "an integer >= 1"),
            ("partitions", self.partitions >= 1, "an integer >= 1"),
            ("backfill_days", self.backfill_days >= 0, "an integer >= 0"),
            ("seed", self.seed >= 0, "an integer >= 0"),
            ("signup_history_days", self.signup_history_days >= 0, "an integer >= 0"),
            ("signup_horizon_days", self.signup_horizon_days >= 0, "an integer >= 0"),
            ("views_per_user_day", self.views_per_user_day > 0, "> 0"),
            ("budget_eur_per_1k_users", self.budget_eur_per_1k_users >= 0, ">= 0"),
        ]
        require("shop", self, checks)

    @property
    def start(self) -> dt.date:
        """``start_date`` as a date."""
        return dt.date.fromisoformat(self.start_date)

    def truth_table(self, name: str) -> str:
        """Where the hidden-truth table ``name`` (``user_traits``, ``coupons``, ``defects``) lives, relative to
        ``lake.root`` (or absolute, as ``truth_dir`` is)."""
        return f"{self.truth_dir.rstrip('/')}/{name}"


@dataclass(frozen=True)
class CleanseConfig:
    """The cleansing job (``coupon-spark cleanse``).

    Attributes:
        base_currency: The one currency of every amount in the lake.
        fx_to_eur: Rate sheet: units of ``base_currency`` per unit of each accepted currency. The synthetic
            shop prices in the same sheet. A record in another currency is quarantined (``unknown_currency``).
        categories: Canonical product categories.
        category_aliases: Spellings mapped to a canonical category (after lower-casing and trimming).
        max_amount_eur: An amount above this is absurd (``bad_amount``).
        max_field_chars: A text field longer than this is absurd (``bad_value``): ids, codes, names.
        future_tolerance_minutes: Timestamps later than the end of the ingest date plus this are
            ``future_timestamp``.
        max_lateness_days: Fact timestamps more than this many days before the ingest date are
            ``stale_timestamp``.
        naive_timezone: Time zone of timestamps that carry no offset.
        issuance_lookback_days: A redemption may refer to an issuance of the ingest date or this many days
            before.
    """

    base_currency: str = "EUR"
    fx_to_eur: dict[str, float] = field(default_factory=lambda: {"EUR": 1.0, "GBP": 1.17, "USD": 0.92})
    categories: list[str] = field(
        default_factory=lambda: ["grocery", "fashion", "electronics", "home", "beauty", "sports", "toys", "books"]
    )
    category_aliases: dict[str, str] = field(
        default_factory=lambda: {
            "groceries": "grocery",
            "food": "grocery",
            "clothing": "fashion",
            "apparel": "fashion",
            "electronic": "electronics",
            "tech": "electronics",
            "home & garden": "home",
            "household": "home",
            "cosmetics": "beauty",
            "sport": "sports",
            "toy": "toys",
            "book": "books",
        }
    )
    max_amount_eur: float = 10_000.0
    max_field_chars: int = 256
    future_tolerance_minutes: int = 60
    max_lateness_days: int = 7
    naive_timezone: str = "UTC"
    issuance_lookback_days: int = 30

    def __post_init__(self) -> None:
        if self.base_currency not in self.fx_to_eur or self.fx_to_eur[self.base_currency] != 1.0:
            raise ConfigError(f"cleanse.fx_to_eur: must hold the base currency {self.base_currency!r} at rate 1.0")
        bad = sorted(k for k, v in self.category_aliases.items() if v not in self.categories)
        if bad:
            raise ConfigError(f"cleanse.category_aliases: {bad} map to categories not in cleanse.categories")
        rates = sorted(k for k, v in self.fx_to_eur.items() if not v > 0)
        if rates:
            raise ConfigError(f"cleanse.fx_to_eur: every rate must be > 0; {rates} are not")
        checks = [
            ("max_amount_eur", self.max_amount_eur > 0, "> 0"),
            ("max_field_chars", self.max_field_chars >= 1, "an integer >= 1"),
            ("future_tolerance_minutes", self.future_tolerance_minutes >= 0, "an integer >= 0"),
            ("max_lateness_days", self.max_lateness_days >= 0, "an integer >= 0"),
            ("issuance_lookback_days", self.issuance_lookback_days >= 0, "an integer >= 0"),
        ]
        require("cleanse", self, checks)


@dataclass(frozen=True)
class FeaturesConfig:
    """The feature job (``coupon-spark features``).

    Attributes:
        windows_days: Look-back windows of the recency/frequency/monetary features.
        outcome_window_days: An issuance's outcomes (purchase, redemption, revenue) are counted from its
            ``issued_at`` to the end of this many calendar days (UTC), the issue day being the first: 1 = the
            rest of the issue day. Match it to how long a coupon is valid (the shop's expire with their issue
            day): a longer window adds purchases the coupon could not change, diluting the uplift it measures.
            Only issuances whose window has closed become training examples.
        training_lookback_days: Issue dates older than this (before the run date) are not rebuilt.
        recency_cap_days: ``uf_recency_days`` of a user who never bought.
        vocabulary_max_size: Most frequent values kept per categorical feature (the rest: out of vocabulary).
        log1p_features: Name fragments of non-negative, heavy-tailed features scaled as log1p then standardised.
        history_window_days: The long window of the purchase-history and coupon-response features
            (``uf_hist_*``, ``uf_resp_*``): up to a year of a shop's past.
        coupon_kinds: Coupon kinds with their own response features (``uf_resp_*_<kind>``).
        response_prior_issuances: Strength of the prior of the response features, in issuances: a user's
            purchase lift on coupon days (and redemption rate) is shrunk toward the population's as if the
            population's value had been seen on this many more issuances.
        import_policies: Logged policies of a bulk-imported past (an earlier randomised promotion): their
            issuances become training examples once, on the first run that finds them, with the features of
            snapshots every ``import_snapshot_days`` over the import (not one per day: a year of daily
            snapshots would cost more than all else), the first ``import_min_history_days`` after the
            import's first issue date. Each row takes the latest snapshot on or before its issue date.
        import_snapshot_days: Days between the snapshots of an imported period.
        import_min_history_days: The imported issuances of the first days are only history: the features
            of their users would be nearly empty.
    """

    windows_days: list[int] = field(default_factory=lambda: [7, 30, 90])
    history_window_days: int = 365
    coupon_kinds: list[str] = field(default_factory=lambda: ["price_off", "free_shipping", "bonus_points"])
    response_prior_issuances: float = 5.0
    import_policies: list[str] = field(default_factory=lambda: ["legacy_newsletter"])
    import_snapshot_days: int = 30
    import_min_history_days: int = 120
    outcome_window_days: int = 1
    training_lookback_days: int = 60
    recency_cap_days: int = 365
    vocabulary_max_size: int = 100
    log1p_features: list[str] = field(
        default_factory=lambda: [
            "orders",
            "spend",
            "views",
            "carts",
            "sessions",
            "issued",
            "redeemed",
            "tenure",
            "recency",
            "basket",
            "discount_taken",
            "price",
            "face_value",
            "min_spend",
            "cost",
            "budget",
            "days",
        ]
    )

    def __post_init__(self) -> None:
        checks = [
            ("import_snapshot_days", self.import_snapshot_days >= 1, ">= 1"),
            ("import_min_history_days", self.import_min_history_days >= 0, ">= 0"),
            ("outcome_window_days", self.outcome_window_days >= 1, ">= 1"),
            ("windows_days", bool(self.windows_days) and min(self.windows_days) >= 1, "a non-empty list of days >= 1"),
            ("history_window_days", self.history_window_days >= 1, "an integer >= 1"),
            ("response_prior_issuances", self.response_prior_issuances >= 0, ">= 0"),
            ("training_lookback_days", self.training_lookback_days >= 1, "an integer >= 1"),
            ("recency_cap_days", self.recency_cap_days >= 1, "an integer >= 1"),
            ("vocabulary_max_size", self.vocabulary_max_size >= 1, "an integer >= 1"),
        ]
        require("features", self, checks)


@dataclass(frozen=True)
class ScoreConfig:
    """The scoring job (``coupon-spark score``).

    Attributes:
        top_k: Candidates kept per user (by expected incremental profit).
        model_version: Registry version to score with; 0 = the model's ``latest``.
        margin_rate: Gross margin on a basket: incremental profit = uplift * margin_rate * basket - p_redeem * cost.
        default_basket_eur: Basket of a user without purchase history.
        min_spend_factor: A coupon is plausible for a user only if min_spend <= factor * the user's basket.
        frequency_cap: At most this many coupons per user within ``frequency_cap_days``: a user at the cap gets
            no candidate.
        frequency_cap_days: Look-back of the frequency cap (issuances before the run date).
        targeting: Campaign id -> the user segments it may target (absent: every segment).
        batch_rows: Users scored at once inside a task (bounds the memory of the score matrices).
        uncertainty_z: Decisions on a lower bound: each expected incremental profit (the mean of the model's
            heads, ``train.heads``) is lowered by this many standard deviations of the heads' estimates (a model
            of one head: of the decision gate's fold models, published with the version); 0: the mean alone.
            Taking the best of many noisy estimates picks the noise; the lower bound counts an estimate only as
            far as the heads agree on it.
        pool_fold_models: The decision gate's fold models (published with the version) join the published
            model's heads: estimates are the mean of all heads, the uncertainty their spread
            (:meth:`coupon_spark.model.scorer.NumpyScorer.load`).
        top_up: A redemption brings the spend up to the coupon's minimum: its cost to the shop is counted net
            of the margin on the expected top-up of the user's basket (:func:`coupon_spark.policy.redemption_cost`).
        basket_cv: Coefficient of variation of a user's order amounts where their history cannot tell (fewer
            than two orders), and the prior their own is shrunk toward.
    """

    top_k: int = 10
    model_version: int = 0
    margin_rate: float = 0.3
    default_basket_eur: float = 40.0
    min_spend_factor: float = 3.0
    frequency_cap: int = 3
    frequency_cap_days: int = 7
    targeting: dict[str, list[str]] = field(default_factory=dict)
    batch_rows: int = 4096
    uncertainty_z: float = 0.25
    pool_fold_models: bool = True
    top_up: bool = True
    basket_cv: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            ("top_k", self.top_k >= 1, "an integer >= 1"),
            ("model_version", self.model_version >= 0, ">= 0 (0: the latest)"),
            ("margin_rate", 0.0 < self.margin_rate <= 1.0, "in (0, 1]"),
            ("default_basket_eur", self.default_basket_eur > 0, "> 0"),
            ("min_spend_factor", self.min_spend_factor > 0, "> 0"),
            ("frequency_cap", self.frequency_cap >= 1, "an integer >= 1"),
            ("frequency_cap_days", self.frequency_cap_days >= 1, "an integer >= 1"),
            ("batch_rows", self.batch_rows >= 1, "an integer >= 1"),
            ("uncertainty_z", 0.0 <= self.uncertainty_z <= 10.0, "in [0, 10]"),
            ("basket_cv", 0.0 < self.basket_cv <= 5.0, "in (0, 5]"),
        ]
        require("score", self, checks)


@dataclass(frozen=True)
class PipelineConfig:
    """The daily loop (``coupon-spark pipeline``).

    Attributes:
        history_days: Days of shop history (randomised logging policy) made before the first run date when
            the lake does not have them; at least ``features.outcome_window_days`` to have examples.
        train_every_days: Retrain every this many days of the loop (0: only when no model exists yet).
    """

    history_days: int = 14
    train_every_days: int = 1

    def __post_init__(self) -> None:
        checks = [
            ("history_days", self.history_days >= 0, "an integer >= 0"),
            ("train_every_days", self.train_every_days >= 0, "an integer >= 0 (0: only while no model exists)"),
        ]
        require("pipeline", self, checks)


@dataclass(frozen=True)
class AllocationConfig:
    """The budget-constrained allocation (``coupon-spark allocate``).

    Attributes:
        max_per_user: At most this many coupons per user per run (k >= 1).
        cost_basis: What a money budget counts: ``expected`` (``p_redeem * coupon_cost``) or ``face`` (the
            full ``coupon_cost`` of every coupon issued: the worst case, as if all were redeemed).
        budget: The overall budget over all campaigns (``amount`` and/or ``count``; null = none).
        campaign_budgets: campaign_id -> its budget (``amount`` and/or ``count``).
        budgets_table: When set, a table (logical name or path) with ``campaign_id, budget_amount,
            budget_count`` (``*`` = overall) replaces ``budget`` and ``campaign_budgets``.
        campaign_pacing: How the catalogue's campaign budgets (``coupons.campaign_budget``, less what the
            campaign's redemptions have cost so far) limit the run: ``even`` (what remains over the days the
            campaign has left), ``asap`` (all that remains, today), ``off`` (not applied by the allocation; a
            spent campaign's coupons are still not scored). A configured budget of the same campaign also
            applies: the tighter wins.
        holdout_share: Share of users who never get a coupon, by ``blake2b(holdout_salt:user_id)``.
        holdout_salt: Salt of the holdout hash; a user stays in or out as long as it does not change.
        exploration_share: Share of the other users given a uniformly random option (a coupon or none).
        exploration_max_budget_fraction: Exploration may use at most this fraction of any budget (it is
            shrunk, by whole hash buckets, to fit).
        seed: Seed of the exploration draw (with the run date).
        tolerance: Target relative duality gap.
        max_rounds: Most coordinate-descent rounds over the budgets.
        max_passes: Most passes over the candidates in the dual search.
        grid_points: Multiplier values evaluated per pass.
        fill_moves: Most fill / repair candidates per Spark task.
        partitions: Spark partitions of the packed candidates (0 = default parallelism).
        block_rows: Most candidate rows per packed block.
        export_dir: Folder (under the lakehouse root) of the channel export.
        default_channel: Channel of a campaign not in ``channels``.
        channels: campaign_id -> push channel.
    """

    @dataclass(frozen=True)
    class Limit:
        """A budget: money (on the cost basis) and/or a number of coupons; null means unlimited."""

        amount: float | None = None
        count: int | None = None

    max_per_user: int = 1
    cost_basis: Literal["expected", "face"] = "expected"
    budget: Limit = field(default_factory=Limit)
    campaign_budgets: dict[str, Limit] = field(default_factory=dict)
    budgets_table: str = ""
    campaign_pacing: Literal["even", "asap", "off"] = "even"
    holdout_share: float = 0.05
    holdout_salt: str = "coupon-spark-holdout-v1"
    exploration_share: float = 0.02
    exploration_max_budget_fraction: float = 0.1
    seed: int = 0
    tolerance: float = 0.001
    max_rounds: int = 20
    max_passes: int = 200
    grid_points: int = 8
    fill_moves: int = 20000
    partitions: int = 0
    block_rows: int = 500000
    export_dir: str = "exports/allocations"
    default_channel: str = "push"
    channels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            ("max_per_user", self.max_per_user >= 1, "an integer >= 1"),
            ("campaign_pacing", self.campaign_pacing in ("even", "asap", "off"), "one of even, asap, off"),
            ("holdout_share", 0.0 <= self.holdout_share < 1.0, "in [0, 1)"),
            ("exploration_share", 0.0 <= self.exploration_share < 1.0, "in [0, 1)"),
            ("exploration_max_budget_fraction", 0.0 <= self.exploration_max_budget_fraction <= 1.0, "in [0, 1]"),
            ("tolerance", self.tolerance > 0, "> 0"),
            ("grid_points", self.grid_points >= 2, ">= 2"),
            ("block_rows", self.block_rows >= 1, ">= 1"),
            ("seed", self.seed >= 0, "an integer >= 0"),
            ("max_rounds", self.max_rounds >= 1, "an integer >= 1"),
            ("max_passes", self.max_passes >= 1, "an integer >= 1"),
            ("fill_moves", self.fill_moves >= 0, "an integer >= 0"),
            ("partitions", self.partitions >= 0, "an integer >= 0 (0: Spark's default)"),
        ]
        require("allocation", self, checks)
        limits = [("budget", self.budget), *((f"campaign_budgets.{c}", v) for c, v in self.campaign_budgets.items())]
        for key, lim in limits:
            for kind in ("amount", "count"):
                v = getattr(lim, kind)
                if v is not None and v < 0:
                    raise ConfigError(f"allocation.{key}.{kind}: must be >= 0 (or null for no limit), found {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The uplift model's training (``coupon-spark train``): Horovod on Spark, or one process without it.

    Attributes:
        num_proc: Horovod ranks, one Spark task each (``horovod.spark.run``); 0 trains in the driver process,
            without Horovod (also what happens when horovod is not installed).
        epochs: Most passes over the training shard of each rank.
        batch_size: Examples per rank and step; the global batch is ``batch_size * ranks``.
        learning_rate: Learning rate of one rank; multiplied by the number of ranks (linear scaling rule).
        optimizer: ``adam`` or ``sgd``.
        embedding_dim: Dimension d of the space both towers map into.
        hidden_units: Hidden ReLU layers of each tower.
        id_embedding_dim: Dimension of the user-id and coupon-id embeddings.
        user_id_buckets: Hash buckets of the user-id embedding; 0 leaves the user id out.
        heads: Two-tower models trained side by side on bootstrap weights (an ensemble): the estimate is their
            mean, their spread the uncertainty the decisions count against (``score.uncertainty_z``).
        pair_features: Feed the model what each coupon is worth to each user (:mod:`coupon_spark.model.pair`).
        l2: L2 penalty on all weights.
        id_l2: Extra L2 penalty on the user-id and coupon-id embeddings: shrinks what the model learns per id
            toward what the feature towers predict (a user's own few logged outcomes are mostly noise).
        validation_share: Share of examples (by a hash of ``issuance_id``) held out for early stopping and
            the metrics.
        early_stopping_patience: Stop after this many epochs without a better validation loss.
        average_epochs: The weights validated and published are an exponential moving average of the training
            iterates over about this many epochs of steps (Polyak averaging: it removes the jitter a constant
            learning rate leaves in the last weights, which moved the published ranking from run to run);
            0 keeps the last iterate.
        min_delta: Smallest decrease of the validation loss that counts as better.
        propensity_clip: Propensities are clipped to ``[propensity_clip, 1]`` before inverse weighting.
        history_days: Train on examples issued in the last ``history_days`` days before the run date
            (0: every issue date before it).
        sample_rows: Smoke runs: at most this many examples per rank (0: all).
        model_name: Name of the model in the registry.
        registry_dir: Model registry folder, relative to ``lake.root`` (or absolute).
        use_gpu: Pin each rank to the GPU Spark assigned its task (``conf/gpu-cluster.yaml``).
        seed: Seed of the initial weights, the validation hash and the batch order.
        start_timeout_s: How long ``horovod.spark.run`` waits for the Spark tasks to start.
        decision_confidence: The decision gate (:mod:`coupon_spark.model.gate`): the model issues coupons only
            above a threshold whose gain over issuing nothing, estimated on held-out randomised decisions,
            has a lower bound above 0; this is the level over every test of the loop (the ``j``-th test of
            ``model_name`` is run at ``(1 - decision_confidence) / (j (j + 1))``); 0 disables the gate.
        gate_folds: Cross-fitting folds of the gate: besides the published model, this many fold models are
            trained in the driver process (same shards, world and hyper-parameters; at most the published
            model's best epoch count), each without the rows of its fold, and every randomised row is scored
            by the one that did not see it. 0 or 1: the published model on its validation split.
        gate_on_import: The gate also replays the model on the imported past promotion's randomised rows
            (``features.import_policies``; with the catalogue of their day), not only on the logged days':
            about 7x the evidence on the demo. Its fold models never trained on the rows they score.
        gate_monitor: Once a test of the model name opened the gate, its next versions are monitored, not
            re-tested: each keeps the gate open iff its cross-fitted gain is positive; a closed gate reopens only
            by a new test (:mod:`coupon_spark.model.gate`). False: every version is a new test.
        gate_out_of_bag: With an ensemble (``heads`` > 1) and fold models, each row is scored by the pool the score
            job uses (``score.pool_fold_models``) less the heads that trained on it: its fold model's and the
            heads whose bootstrap weight for it is 0 (:func:`coupon_spark.model.gate.oob_head_mask`). False: by
            its fold model alone.
        gate_chunks: The gate's online test (:mod:`coupon_spark.model.gate`): its held-out randomised decisions,
            in chunks by a hash of ``issuance_id``; each chunk after the first is judged at the threshold chosen
            on the chunks before it.
    """

    num_proc: int = 2
    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 0.002
    optimizer: Literal["adam", "sgd"] = "adam"
    embedding_dim: int = 16
    hidden_units: list[int] = field(default_factory=lambda: [64])
    id_embedding_dim: int = 8
    user_id_buckets: int = 0
    pair_features: bool = True
    heads: int = 5
    l2: float = 1e-6
    id_l2: float = 1e-4
    validation_share: float = 0.1
    early_stopping_patience: int = 3
    average_epochs: float = 1.0
    min_delta: float = 1e-4
    propensity_clip: float = 0.01
    history_days: int = 0
    sample_rows: int = 0
    model_name: str = "uplift_two_tower"
    registry_dir: str = "models"
    use_gpu: bool = False
    seed: int = 0
    start_timeout_s: int = 600
    decision_confidence: float = 0.95
    gate_folds: int = 3
    gate_on_import: bool = True
    gate_monitor: bool = True
    gate_out_of_bag: bool = True
    gate_chunks: int = 10

    def __post_init__(self) -> None:
        checks = [
            ("num_proc", self.num_proc >= 0, ">= 0"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("embedding_dim", self.embedding_dim >= 1, ">= 1"),
            ("hidden_units", all(h >= 1 for h in self.hidden_units), "a list of integers >= 1"),
            ("id_embedding_dim", self.id_embedding_dim >= 1, ">= 1"),
            ("user_id_buckets", self.user_id_buckets >= 0, ">= 0"),
            ("heads", self.heads >= 1, ">= 1"),
            ("l2", self.l2 >= 0, ">= 0"),
            ("id_l2", self.id_l2 >= 0, ">= 0"),
            ("min_delta", self.min_delta >= 0, ">= 0"),
            ("seed", self.seed >= 0, "an integer >= 0"),
            ("start_timeout_s", self.start_timeout_s >= 1, "an integer >= 1"),
            ("validation_share", 0.0 < self.validation_share < 1.0, "in (0, 1)"),
            ("early_stopping_patience", self.early_stopping_patience >= 1, ">= 1"),
            ("average_epochs", self.average_epochs >= 0, ">= 0"),
            ("propensity_clip", 0.0 < self.propensity_clip <= 1.0, "in (0, 1]"),
            ("history_days", self.history_days >= 0, ">= 0"),
            ("sample_rows", self.sample_rows >= 0, ">= 0"),
            ("decision_confidence", 0.0 <= self.decision_confidence < 1.0, "in [0, 1)"),
            ("gate_folds", self.gate_folds >= 0, ">= 0"),
            ("gate_chunks", self.gate_chunks >= 2, ">= 2"),
            ("model_name", bool(self.model_name) and "/" not in self.model_name, "a non-empty name without '/'"),
        ]
        require("train", self, checks)


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluation and its report (``coupon-spark evaluate``).

    Attributes:
        report_dir: Reports go to ``<report_dir>/<run_date>/index.html`` (relative to ``lake.root``, or absolute).
        margin_rate: Gross margin of the logged reward ``revenue_eur * margin_rate - coupon_cost_eur``; 0 takes
            ``score.margin_rate``.
        ope_policies: Logging policies whose issuances are randomised (propensity known and < 1 for some
            actions): the only logged rows the off-policy estimates use.
        ope_lookback_days: Off-policy estimates use training examples issued in this many days before the run
            date.
        confidence: Level of every confidence interval.
        bootstrap_samples: Resamples of the bootstrap interval of the realised uplift against the holdout.
        seed: Seed of the bootstrap, the random-targeting baseline and the cross-fitting folds.
        out_of_time_max_rows: Most training examples (issued on or after the model's training date) the model
            metrics are recomputed on with the numpy scorer; 0 skips the recomputation.
        truth_sample_share: Share of users (by a stable hash) the synthetic-shop policy value is computed on, on
            the driver; budgets are scaled by the same share. 1.0: every user.
        history_days: Run dates shown in the report's "value over days" plot.
    """

    report_dir: str = "reports"
    margin_rate: float = 0.0
    ope_policies: list[str] = field(default_factory=lambda: ["random_v1", "coupon-spark/exploration"])
    ope_lookback_days: int = 28
    confidence: float = 0.95
    bootstrap_samples: int = 1000
    seed: int = 0
    out_of_time_max_rows: int = 200_000
    truth_sample_share: float = 1.0
    history_days: int = 60

    def __post_init__(self) -> None:
        checks = [
            ("margin_rate", 0.0 <= self.margin_rate <= 1.0, "in [0, 1]"),
            ("ope_lookback_days", self.ope_lookback_days >= 1, ">= 1"),
            ("confidence", 0.0 < self.confidence < 1.0, "in (0, 1)"),
            ("bootstrap_samples", self.bootstrap_samples >= 10, ">= 10"),
            ("out_of_time_max_rows", self.out_of_time_max_rows >= 0, ">= 0"),
            ("truth_sample_share", 0.0 < self.truth_sample_share <= 1.0, "in (0, 1]"),
            ("history_days", self.history_days >= 1, ">= 1"),
            ("seed", self.seed >= 0, "an integer >= 0"),
        ]
        require("evaluate", self, checks)


@dataclass(frozen=True)
class Config:
    """The whole configuration of a coupon-spark deployment."""

    spark: SparkConfig
    lake: LakeConfig
    shop: ShopConfig = field(default_factory=ShopConfig)
    cleanse: CleanseConfig = field(default_factory=CleanseConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    source: str = ""  # the file it was loaded from (not a YAML key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], overrides: list[str] | None = None) -> Config:
        """Load ``path`` (following ``extends:``), apply ``key.sub=value`` overrides, validate.

        Args:
            path: The environment file, e.g. ``conf/local.yaml``.
            overrides: Dotted assignments such as ``lake.root=/tmp/lake``; values are parsed as YAML scalars.

        Raises:
            ConfigError: Unknown key, wrong type, missing value, unreadable file or an ``extends`` cycle.
        """
        data, origin = _load_chain(Path(path), seen=())
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. lake.root=/tmp/lake")
            _assign(data, origin, key.strip().split("."), yaml.safe_load(raw), "--set")
        cfg = _build(cls, data, origin, prefix="", default_file=str(path), skip={"source"})
        # Relative paths are taken from the working directory, as a user running a command expects.
        lake = dataclasses.replace(cfg.lake, root=_absolute(cfg.lake.root), landing=_absolute(cfg.lake.landing))
        return dataclasses.replace(cfg, source=str(path), lake=lake)


def join_uri(root: str, rel: str) -> str:
    """Join a path under a local root or an object-store URI."""
    return root.rstrip("/") + "/" + rel.lstrip("/")


def _absolute(p: str) -> str:
    if "://" in p or os.path.isabs(p):
        return p
    return str((Path.cwd() / p).resolve())


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ConfigError(f"{path}: 'extends' makes a cycle: {chain}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, found {type(raw).__name__}")
    parent = raw.pop("extends", None)
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: 'extends' must be a file name, found {parent!r}")
        data, origin = _load_chain(path.parent / parent, (*seen, resolved))
    _merge(data, origin, raw, str(path), prefix="")
    return data, origin


def _merge(dst: dict[str, Any], origin: dict[str, str], src: dict[str, Any], file: str, prefix: str) -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], origin, value, file, prefix=f"{dotted}.")
        else:
            dst[key] = value
            _mark(origin, dotted, value, file)


def _mark(origin: dict[str, str], dotted: str, value: Any, file: str) -> None:
    origin[dotted] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, f"{dotted}.{k}", v, file)


def _assign(data: dict[str, Any], origin: dict[str, str], keys: list[str], value: Any, file: str) -> None:
    node = data
    for i, k in enumerate(keys[:-1]):
        if k not in node:  # a mapping this assignment creates is its own: errors about it name ``file``
            origin.setdefault(".".join(keys[: i + 1]), file)
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{file}: {'.'.join(keys)}: {k} is not a mapping")
    node[keys[-1]] = value
    _mark(origin, ".".join(keys), value, file)


def _where(origin: dict[str, str], dotted: str, default_file: str) -> str:
    parts = dotted.split(".")
    while parts:
        f = origin.get(".".join(parts))
        if f:
            return f
        parts.pop()
    return default_file


T = typing.TypeVar("T")


def _build(
    cls: type[T], data: Any, origin: dict[str, str], prefix: str, default_file: str, skip: set[str] | None = None
) -> T:
    where = _where(origin, prefix.rstrip("."), default_file) if prefix else default_file
    section = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {section}: expected a mapping, found {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    allowed = set(fields) - (skip or set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"{_where(origin, key, default_file)}: unknown key {key!r}; {section} accepts: {', '.join(sorted(allowed))}"
        )
    kwargs: dict[str, Any] = {}
    for name in allowed:
        f = fields[name]
        key = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {key!r}")
            continue
        kwargs[name] = _coerce(hints[name], data[name], origin, key, default_file)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, origin: dict[str, str], key: str, default_file: str) -> Any:
    where = _where(origin, key, default_file)
    o = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, origin, prefix=f"{key}.", default_file=default_file)  # type: ignore[type-var,arg-type]
    if o in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, origin, key, default_file)
    if o is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}: must be one of {', '.join(map(repr, args))}, found {value!r}")
        return value
    if o is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, found {value!r}")
        kt, vt = args
        if vt is str:  # Spark settings: YAML may give 1 or true, which Spark reads as "1" / "true"
            value = {
                k: (str(v).lower() if isinstance(v, bool) else str(v)) if isinstance(v, (bool, int, float)) else v
                for k, v in value.items()
            }
        return {
            _coerce(kt, k, origin, f"{key}.{k}", default_file): _coerce(vt, v, origin, f"{key}.{k}", default_file)
            for k, v in value.items()
        }
    if o is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}: expected a list, found {value!r}")
        return [_coerce(args[0], v, origin, f"{key}[{i}]", default_file) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; take it as the number it is
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected a number, found {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {key}: expected a finite number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, found {value!r}")
        return value
    raise ConfigError(f"{where}: {key}: unsupported type {tp!r}")  # pragma: no cover
