"""The allocation on Spark: pack the candidates into cached blocks, run the dual passes, write the tables.

The candidates are repartitioned by user and packed once (``mapInArrow``) into blocks of dense numpy arrays,
one Spark row per block, and cached: that cache is the source of truth. Each solver pass (stats, each grid of
multipliers, the fill) is one ``mapInArrow`` job over the cached *block ids* only: the Python worker that
runs a task finds the blocks, already decoded, in its per-process cache (:data:`_BLOCK_CACHE`, filled when it
packed them or first read them, keyed by the run), runs a block function of
:mod:`coupon_spark.allocation.core` and returns one small result per block. A block a worker does not hold
(another worker packed it, the worker was restarted, the cache evicted it) is reported missing and the driver
runs it at once in a second job that reads it from the Spark cache (and caches it there): the results are the
same either way, and the driver combines them in block-id order, so they do not depend on where a block ran.
Only the output pass reads every block back whole (it needs the user ids and the output columns).
"""

from __future__ import annotations

import datetime as dt
import logging
import pickle
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark import tables
from coupon_spark.allocation.core import (
    CANDIDATE_COLUMNS,
    Agg,
    Arms,
    Block,
    BlockStats,
    Budget,
    BudgetMatrix,
    CostBasis,
    Dictionaries,
    Moves,
    PackSettings,
    SolverSettings,
    block_moves,
    block_stats,
    decide_block,
    decision_table,
    evaluate_block,
    exploration_salts,
    make_budget,
    pack_table,
)
from coupon_spark.allocation.plan import AllocationParams, Plan, check_spend, make_plan
from coupon_spark.config import AllocationConfig, Config
from coupon_spark.errors import MissingColumnsError, UpstreamNotReady
from coupon_spark.runner import Context
from coupon_spark.schemas import ALLOCATION_RUNS_SCHEMA, ALLOCATIONS_SCHEMA, CANDIDATES_SCHEMA

if TYPE_CHECKING:
    from coupon_spark.lake import Lake

log = logging.getLogger(__name__)

BLOCKS_DDL = "block_id long, n_users int, n_options long, n_invalid long, user_ids binary, data binary"


class NoCandidatesError(UpstreamNotReady, RuntimeError):
    """The candidates table has no rows for the run date; nothing to allocate."""


def check_candidates(df: DataFrame) -> None:
    """Raise :class:`MissingColumnsError` when columns the allocator reads are missing or of the wrong type."""
    have = {f.name: f.dataType for f in df.schema.fields}
    want = {f.name: f.dataType for f in CANDIDATES_SCHEMA.fields if f.name in CANDIDATE_COLUMNS}
    missing = [n for n in want if n not in have]
    wrong = [
        f"{n} ({have[n].simpleString()}, expected {t.simpleString()})"
        for n, t in want.items()
        if n in have and have[n] != t
    ]
    if missing or wrong:
        raise MissingColumnsError(
            "the candidates do not follow the contract of coupon_spark.schemas.CANDIDATES_SCHEMA: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and wrong else "")
            + (f"wrong types {wrong}" if wrong else "")
            + "; fix the scoring stage's output (or the test frame)"
        )


# ---- budgets from config or a table ---------------------------------------------------------------------------


def budgets_from_config(cfg: AllocationConfig) -> list[Budget]:
    """The overall budget (``budget``) and the per-campaign ones (``campaign_budgets``) of the config."""
    out: list[Budget] = []
    for campaign, limit in [(None, cfg.budget), *sorted(cfg.campaign_budgets.items())]:
        if limit.amount is not None:
            out.append(make_budget(campaign, "amount", limit.amount))
        if limit.count is not None:
            out.append(make_budget(campaign, "count", limit.count))
    return out


def budgets_from_frame(df: DataFrame) -> list[Budget]:
    """Budgets from a DataFrame ``(campaign_id, budget_amount, budget_count)``; ``*`` or null is overall."""
    missing = [c for c in ("campaign_id", "budget_amount", "budget_count") if c not in df.columns]
    if missing:
        raise MissingColumnsError(
            f"the budgets table lacks {missing}; expected campaign_id, budget_amount, budget_count"
        )
    out: list[Budget] = []
    for r in df.select("campaign_id", "budget_amount", "budget_count").orderBy("campaign_id").collect():
        campaign = None if r["campaign_id"] in (None, "*") else r["campaign_id"]
        if r["budget_amount"] is not None:
            out.append(make_budget(campaign, "amount", float(r["budget_amount"])))
        if r["budget_count"] is not None:
            out.append(make_budget(campaign, "count", float(r["budget_count"])))
    return out


# ---- the catalogue's campaign budgets, paced over each campaign's remaining days --------------------------------

PACING_MODES = ("even", "asap", "off")


def paced_limit(budget: float, spent: float, days_left: float, pacing: str) -> float:
    """What a campaign may spend today out of its catalogue budget.

    ``even``: what remains (``budget - spent``, at least 0) spread evenly over the days the campaign has left,
    today included, so that a campaign that runs for two more weeks is not spent on its first day; each day
    recomputes from the redemptions so far, so under- and over-spending are corrected on the next day.
    ``asap``: all that remains may be spent today.
    """
    if pacing not in PACING_MODES[:2]:
        raise ValueError(f"pacing must be one of {PACING_MODES[:2]}, not {pacing!r}")
    remaining = max(float(budget) - float(spent), 0.0)
    return remaining if pacing == "asap" else remaining / max(float(days_left), 1.0)


def catalogue_budgets(coupon_features: DataFrame, spent: DataFrame | None, pacing: str) -> list[Budget]:
    """One money budget per campaign of the run date's catalogue that has a budget (``cf_campaign_budget`` > 0)
    and a coupon valid that day: :func:`paced_limit` of what its redemptions spent before the run date.

    Args:
        coupon_features: The run date's ``coupon_features`` snapshot.
        spent: ``(campaign_id, spent)`` (:func:`coupon_spark.scoring.campaign_spend` before the run date), or
            None: nothing spent.
        pacing: ``even`` or ``asap`` (see :func:`paced_limit`).
    """
    from coupon_spark.scoring import valid_today

    campaigns = (
        coupon_features.where(valid_today() & (F.col("cf_campaign_budget") > 0))
        .groupBy("campaign_id")
        .agg(F.max("cf_campaign_budget").alias("budget"), F.max("cf_days_left").alias("days_left"))
    )
    if spent is not None:
        campaigns = campaigns.join(spent.select("campaign_id", "spent"), on="campaign_id", how="left")
    else:
        campaigns = campaigns.withColumn("spent", F.lit(0.0))
    rows = campaigns.orderBy("campaign_id").collect()
    return [
        make_budget(r["campaign_id"], "amount", paced_limit(r["budget"], r["spent"] or 0.0, r["days_left"], pacing))
        for r in rows
    ]


def merge_budgets(configured: Sequence[Budget], catalogue: Sequence[Budget]) -> list[Budget]:
    """The configured budgets and the catalogue's; where both limit the same campaign's money, the tighter."""
    out = {(b.campaign_id, b.kind): b for b in configured}
    for b in catalogue:
        key = (b.campaign_id, b.kind)
        if key not in out or b.limit < out[key].limit:
            out[key] = b
    return list(out.values())


def run_budgets_for(lake: Lake, cfg: AllocationConfig, run_date: dt.date) -> list[Budget]:
    """The run's budgets: the configured ones (``budgets_table`` or ``budget`` / ``campaign_budgets``) and,
    unless ``campaign_pacing`` is ``off``, each live campaign's paced catalogue budget (the tighter wins)."""
    budgets = budgets_from_frame(lake.read(cfg.budgets_table)) if cfg.budgets_table else budgets_from_config(cfg)
    if cfg.campaign_pacing == "off":
        return budgets
    cf = (
        lake.read(tables.COUPON_FEATURES, where={"as_of_date": run_date})
        if lake.exists(tables.COUPON_FEATURES)
        else None
    )
    if cf is None or cf.isEmpty():
        log.warning("no coupon_features snapshot of %s: the catalogue's campaign budgets are not applied", run_date)
        return budgets
    spent = None
    if lake.exists(tables.REDEMPTIONS) and lake.exists(tables.COUPONS):
        from coupon_spark.scoring import campaign_spend

        spent = campaign_spend(lake.read(tables.REDEMPTIONS), lake.read(tables.COUPONS), run_date)
    return merge_budgets(budgets, catalogue_budgets(cf, spent, cfg.campaign_pacing))


def params_from_config(cfg: AllocationConfig) -> AllocationParams:
    return AllocationParams(
        max_per_user=cfg.max_per_user,
        cost_basis=cfg.cost_basis,
        holdout_share=cfg.holdout_share,
        holdout_salt=cfg.holdout_salt,
        exploration_share=cfg.exploration_share,
        exploration_max_budget_fraction=cfg.exploration_max_budget_fraction,
        seed=cfg.seed,
        solver=SolverSettings(
            tolerance=cfg.tolerance,
            max_rounds=cfg.max_rounds,
            max_passes=cfg.max_passes,
            grid_points=cfg.grid_points,
        ),
        fill_moves=cfg.fill_moves,
    )


# ---- packing ---------------------------------------------------------------------------------------------------


def dictionaries(candidates: DataFrame) -> Dictionaries:
    """Sorted distinct coupons, campaigns and model versions (one small job)."""
    rows = candidates.agg(
        F.array_sort(F.collect_set("coupon_id")).alias("coupons"),
        F.array_sort(F.collect_set("campaign_id")).alias("campaigns"),
        F.array_sort(F.collect_set("model_version")).alias("versions"),
    ).first()
    assert rows is not None
    return Dictionaries(tuple(rows["coupons"]), tuple(rows["campaigns"]), tuple(rows["versions"]) + (None,))


# ---- the per-worker block cache ----------------------------------------------------------------------------------

#: Decoded (slim) blocks per run key, in each Python worker process: run key -> block id -> block. It only
#: saves reading blocks back from Spark; a miss is always served from the Spark cache (see SparkPasses).
_BLOCK_CACHE: OrderedDict[str, dict[int, Block]] = OrderedDict()
#: Runs kept per process (the oldest is dropped first), so a worker's memory is bounded by ~two runs' blocks.
_CACHE_RUNS = 2
_CACHE_LOCK = threading.Lock()


def _cache_for(key: str, create: bool) -> dict[int, Block] | None:
    with _CACHE_LOCK:
        blocks = _BLOCK_CACHE.get(key)
        if blocks is None and create:
            blocks = _BLOCK_CACHE[key] = {}
            while len(_BLOCK_CACHE) > _CACHE_RUNS:
                _BLOCK_CACHE.popitem(last=False)
        if blocks is not None:
            _BLOCK_CACHE.move_to_end(key)
        return blocks


def _cache_put(key: str, block: Block, basis: CostBasis) -> Block:
    slim = block.slim(basis)
    blocks = _cache_for(key, create=True)
    assert blocks is not None
    blocks[block.block_id] = slim
    return slim


def _cache_drop(key: str) -> None:
    with _CACHE_LOCK:
        _BLOCK_CACHE.pop(key, None)


def _pack_fn(
    dicts: Dictionaries, settings: PackSettings, cache_key: str | None = None, basis: CostBasis = "expected"
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def pack(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        base = (ctx.partitionId() if ctx else 0) << 32
        pending: list[pa.RecordBatch] = []
        rows = 0
        count = 0

        def emit(table: pa.Table) -> Iterator[pa.RecordBatch]:
            nonlocal count
            blocks, invalid = pack_table(table, dicts, settings, base + count)
            count += len(blocks)
            if cache_key is not None:
                for b in blocks:
                    _cache_put(cache_key, b, basis)
            out = [
                (b.block_id, b.n, b.value.size, 0, pickle.dumps(b.user_ids, protocol=5), b.payload()) for b in blocks
            ]
            if invalid:
                out.append((base + count, 0, 0, invalid, pickle.dumps(pa.array([], pa.string())), b""))
                count += 1
            if out:
                cols = list(zip(*out, strict=True))
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(cols[0], pa.int64()),
                        pa.array(cols[1], pa.int32()),
                        pa.array(cols[2], pa.int64()),
                        pa.array(cols[3], pa.int64()),
                        pa.array(cols[4], pa.binary()),
                        pa.array(cols[5], pa.binary()),
                    ],
                    names=["block_id", "n_users", "n_options", "n_invalid", "user_ids", "data"],
                )

        for batch in batches:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= settings.block_rows:
                table = pa.Table.from_batches(pending)
                users = table["user_id"]
                last = users[table.num_rows - 1]
                # keep the last user's rows for the next chunk: a user's rows must stay together
                cut = table.num_rows
                while cut > 0 and users[cut - 1] == last:
                    cut -= 1
                if cut == 0:
                    continue
                yield from emit(table.slice(0, cut))
                rest = table.slice(cut)
                pending, rows = rest.to_batches(), rest.num_rows
        if rows:
            yield from emit(pa.Table.from_batches(pending))

    return pack


def pack_candidates(
    candidates: DataFrame,
    dicts: Dictionaries,
    settings: PackSettings,
    partitions: int,
    cache_key: str | None = None,
    basis: CostBasis = "expected",
) -> DataFrame:
    """Candidates -> blocks (``BLOCKS_DDL``): repartitioned by user, sorted by (user, coupon), packed.

    With ``cache_key`` the packing worker also keeps each block (slim, for ``basis``) in its block cache.
    """
    return (
        candidates.select(*CANDIDATE_COLUMNS)
        .repartition(partitions, "user_id")
        .sortWithinPartitions("user_id", "coupon_id")
        .mapInArrow(_pack_fn(dicts, settings, cache_key, basis), BLOCKS_DDL)
    )


def _blocks(batch: pa.RecordBatch, with_users: bool = False) -> Iterator[Block]:
    datas = batch.column("data")
    users = batch.column("user_ids") if with_users else None
    for i in range(batch.num_rows):
        raw = datas[i].as_buffer()
        if raw is None or raw.size == 0:
            continue
        ids = pickle.loads(users[i].as_buffer()) if users is not None else None
        yield Block.from_payload(raw, ids)


# ---- Spark passes ----------------------------------------------------------------------------------------------


def _per_block(
    keys: DataFrame,
    blocks: DataFrame,
    cache_key: str,
    basis: CostBasis,
    fn: Callable[[Block], object],
    combine: Callable[[list[object]], object] | None = None,
) -> tuple[list[tuple[int, object]], int]:
    """``fn`` on every block: from the workers' caches, then the missing blocks from the Spark cache.

    Args:
        combine: Merges a task's results into one before they travel (only for an order-free merge, such as
            :meth:`Moves.top`); without it every block's result comes back.

    Returns the ``(block id, result)`` pairs in block-id order and the number of blocks read back from Spark.
    """

    def merged(done: list[tuple[int, object]]) -> list[tuple[int, object]]:
        if combine is None or len(done) < 2:
            return done
        return [(done[0][0], combine([r for _, r in done]))]

    def cached(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        held = _cache_for(cache_key, create=False) or {}
        done: list[tuple[int, object]] = []
        missing: list[int] = []
        for batch in batches:
            for bid in batch.column("block_id").to_pylist():
                b = held.get(bid)
                if b is None:
                    missing.append(bid)
                else:
                    done.append((bid, fn(b)))
        payload = pickle.dumps((merged(done), missing), protocol=5)
        yield pa.RecordBatch.from_arrays([pa.array([payload], pa.binary())], names=["r"])

    def reread(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        done: list[tuple[int, object]] = []
        for batch in batches:
            for b in _blocks(batch):
                done.append((b.block_id, fn(_cache_put(cache_key, b, basis))))
        payload = pickle.dumps((merged(done), []), protocol=5)
        yield pa.RecordBatch.from_arrays([pa.array([payload], pa.binary())], names=["r"])

    out: list[tuple[int, object]] = []
    missing: list[int] = []
    for r in keys.mapInArrow(cached, "r binary").collect():
        done, miss = pickle.loads(r["r"])
        out.extend(done)
        missing.extend(miss)
    if missing:
        # one task reads them all, so that the worker running it then holds every block: which worker runs a
        # task is the scheduler's choice, and per-partition rereads could keep landing on the wrong one
        again = blocks.where(F.col("block_id").isin(missing)).select("block_id", "data").coalesce(1)
        for r in again.mapInArrow(reread, "r binary").collect():
            out.extend(pickle.loads(r["r"])[0])
    out.sort(key=lambda t: t[0])
    return out, len(missing)


class SparkPasses:
    """The passes of :class:`coupon_spark.allocation.plan.Passes` as Spark jobs over the cached blocks.

    Each pass runs the block function on the blocks the workers hold decoded (see the module doc) and sums the
    per-block results on the driver in block-id order, so the outcome does not depend on which worker held
    which block, nor on cache misses.
    """

    def __init__(self, blocks: DataFrame, cache_key: str, basis: CostBasis):
        self.blocks = blocks
        # only the ids travel to the workers on a pass (the columnar cache reads just these columns)
        self.keys = blocks.where(F.col("n_users") > 0).select("block_id")
        self.cache_key = cache_key
        self.basis = basis
        self.seconds = 0.0
        self.passes = 0
        self.reread = 0  # blocks read back from the Spark cache (worker cache misses), all passes together

    def _run(
        self, fn: Callable[[Block], object], combine: Callable[[list[object]], object] | None = None
    ) -> list[object]:
        t = time.perf_counter()
        out, missing = _per_block(self.keys, self.blocks, self.cache_key, self.basis, fn, combine)
        self.seconds += time.perf_counter() - t
        self.passes += 1
        self.reread += missing
        return [r for _, r in out]

    def stats(self, basis: CostBasis, explore_share: float, n_campaigns: int) -> BlockStats:
        total = BlockStats.zero(n_campaigns)
        for p in self._run(lambda b: block_stats(b, basis, explore_share, n_campaigns)):
            total = total + p  # type: ignore[operator]
        return total

    def evaluate(
        self, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int, n_campaigns: int
    ) -> Agg:
        total = Agg.zero(alpha.shape[0], n_campaigns)
        for p in self._run(lambda b: evaluate_block(b, basis, alpha, beta, arms, k, n_campaigns)):
            total = total + p  # type: ignore[operator]
        return total

    def moves(
        self, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int, limit: int
    ) -> tuple[Moves, Moves]:
        def top(parts: list[object]) -> tuple[Moves, Moves]:
            return (
                Moves.concat([p[0] for p in parts]).top(limit),  # type: ignore[index]
                Moves.concat([p[1] for p in parts]).top(2 * limit),  # type: ignore[index]
            )

        return top(self._run(lambda b: block_moves(b, basis, alpha, beta, arms, k, limit), top))


# ---- the allocation as DataFrames -------------------------------------------------------------------------------


@dataclass
class AllocationResult:
    """What :func:`allocate` returns: the allocation rows, the run summary row and the plan behind them."""

    allocations: DataFrame
    summary: DataFrame
    plan: Plan
    spend: np.ndarray  # per budget, recomputed from the allocation rows
    n_invalid: int
    n_users: int
    n_options: int


def _decide_fn(
    plan: Plan, params: AllocationParams, dicts: Dictionaries, run_date: dt.date, run_id: str, cache_key: str = ""
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    alpha, beta, arms, moves = plan.alpha, plan.beta, plan.arms, plan.moves
    target = pa.schema([pa.field(f.name, t) for f, t in zip(ALLOCATIONS_SCHEMA.fields, _ARROW_TYPES, strict=True)])

    def decide(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _cache_drop(cache_key)  # the solver is done: free this worker's decoded blocks (best effort)
        for batch in batches:
            for b in _blocks(batch, with_users=True):
                dec = decide_block(b, params.cost_basis, alpha, beta, arms, params.max_per_user, moves.get(b.block_id))
                t = decision_table(b, dec, dicts)
                n = t.num_rows
                t = t.append_column("run_date", pa.array([run_date] * n, pa.date32()))
                t = t.append_column("run_id", pa.array([run_id] * n, pa.string()))
                yield from t.select(target.names).cast(target).to_batches()

    return decide


_ARROW_TYPES = [
    pa.date32(),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.bool_(),
    pa.float64(),
    pa.float64(),
    pa.float64(),
    pa.float64(),
    pa.float64(),
    pa.float64(),
    pa.string(),
    pa.string(),
]


def allocate(
    spark: SparkSession,
    candidates: DataFrame,
    budgets: Sequence[Budget],
    params: AllocationParams,
    run_date: dt.date,
    partitions: int = 0,
    block_rows: int = 500_000,
    run_id: str | None = None,
) -> AllocationResult:
    """Allocate one run date's candidates within the budgets.

    Args:
        spark: The session.
        candidates: Rows of the candidates contract for ``run_date``.
        budgets: The budgets (see :func:`budgets_from_config`, :func:`budgets_from_frame`).
        params: The run's knobs.
        run_date: The run date (salts the exploration draw, fills ``run_date``).
        partitions: Spark partitions of the packed blocks (0: the default parallelism).
        block_rows: Most options per block.
        run_id: Identifier of this run (a new UUID when not given).

    Returns:
        The allocation rows (``ALLOCATIONS_SCHEMA``, cached), the summary row (``ALLOCATION_RUNS_SCHEMA``)
        and the plan.

    Raises:
        MissingColumnsError: The candidates do not follow the contract.
        NoCandidatesError: No candidate rows.
        BudgetExceededError: The rows would exceed a budget (a bug: the plan guarantees otherwise).
    """
    started_at = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    run_id = run_id or uuid.uuid4().hex
    check_candidates(candidates)
    dicts = dictionaries(candidates)
    if not dicts.coupons:
        raise NoCandidatesError(f"no candidates for {run_date}: run the score stage for this date first")
    ex_salt, pick_salt = exploration_salts(params.seed, run_date.isoformat())
    settings = PackSettings(params.holdout_share, params.holdout_salt, ex_salt, pick_salt, block_rows)
    partitions = partitions or spark.sparkContext.defaultParallelism
    cache_key = f"{run_id}:{uuid.uuid4().hex}"  # this call's blocks in the workers' caches
    blocks = pack_candidates(candidates, dicts, settings, partitions, cache_key, params.cost_basis).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    sizes = blocks.agg(F.sum("n_users"), F.sum("n_options"), F.sum("n_invalid")).first()
    assert sizes is not None
    n_users, n_options, n_invalid = (int(v or 0) for v in sizes)
    matrix = BudgetMatrix.build(budgets, dicts.campaigns)
    passes = SparkPasses(blocks, cache_key, params.cost_basis)
    plan = make_plan(passes, matrix, params)
    allocations = (
        blocks.select("user_ids", "data")
        .mapInArrow(_decide_fn(plan, params, dicts, run_date, run_id, cache_key), ALLOCATIONS_SCHEMA)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    cost_col = "expected_cost" if params.cost_basis == "expected" else "coupon_cost"
    per_camp = (
        allocations.where(F.col("coupon_id").isNotNull())
        .groupBy("campaign_id")
        .agg(F.sum(cost_col).alias("amount"), F.count("*").alias("n"), F.sum("expected_profit").alias("value"))
        .collect()
    )
    index = {c: i for i, c in enumerate(dicts.campaigns)}
    amount, count = np.zeros(len(index)), np.zeros(len(index))
    value = 0.0
    for r in per_camp:
        amount[index[r["campaign_id"]]] = r["amount"]
        count[index[r["campaign_id"]]] = r["n"]
        value += r["value"]
    spend = check_spend(matrix, amount, count)
    blocks.unpersist()
    seconds = time.perf_counter() - t0
    summary = summary_frame(
        spark, plan, params, run_date, run_id, started_at, seconds, spend, value, n_users, n_options, n_invalid
    )
    return AllocationResult(allocations, summary, plan, spend, n_invalid, n_users, n_options)


def summary_frame(
    spark: SparkSession,
    plan: Plan,
    params: AllocationParams,
    run_date: dt.date,
    run_id: str,
    started_at: dt.datetime,
    seconds: float,
    spend: np.ndarray,
    primal: float,
    n_users: int,
    n_options: int,
    n_invalid: int,
) -> DataFrame:
    """The run's row of ``allocation_runs`` (``ALLOCATION_RUNS_SCHEMA``)."""
    stats = plan.stats
    n_explore = int(stats.explore_users[: plan.arms.explore_buckets].sum())
    budgets = [
        (
            b.name,
            b.kind,
            b.campaign_id,
            float(b.limit),
            float(spend[i]),
            float(plan.explore_spend[i]),
            float(spend[i] / b.limit) if b.limit > 0 else 0.0,
            float(plan.lam[i]),
        )
        for i, b in enumerate(plan.budgets.budgets)
    ]
    dual = max(plan.dual, primal)
    gap = 0.0 if dual <= 0 else max(0.0, (dual - primal) / abs(dual))
    row = (
        run_date,
        run_id,
        started_at,
        float(seconds),
        n_users,
        n_options,
        n_invalid,
        stats.n_holdout,
        n_explore,
        n_users - stats.n_holdout - n_explore,
        float(plan.arms.effective_share),
        params.cost_basis,
        params.max_per_user,
        float(primal),
        float(dual),
        float(gap),
        plan.solve.passes,
        plan.solve.rounds,
        bool(gap <= params.solver.tolerance),
        budgets,
    )
    return spark.createDataFrame([row], ALLOCATION_RUNS_SCHEMA)


def format_summary(row: dict[str, object]) -> str:
    """The run summary as the job prints it."""
    lines = [
        f"allocation run {row['run_id']} for {row['run_date']}: {row['n_users']} users, {row['n_options']} options "
        f"({row['n_invalid_options']} invalid), holdout {row['n_holdout']}, exploration {row['n_exploration']} "
        f"(share {row['exploration_share']:.4f}), model {row['n_model']}",
        f"  primal value {row['primal_value']:.4f}  dual bound {row['dual_bound']:.4f}  gap {row['gap']:.4%}  "
        f"passes {row['passes']}  rounds {row['rounds']}  converged {row['converged']}  time {row['seconds']:.1f}s",
    ]
    for b in row["budgets"]:  # type: ignore[attr-defined]
        lines.append(
            f"  budget {b['name']:<28} limit {b['limit']:>14.2f}  spend {b['spend']:>14.2f}  use {b['use']:7.2%}  "
            f"exploration {b['exploration_spend']:.2f}  multiplier {b['multiplier']:.6g}"
        )
    return "\n".join(lines)


# ---- export for the push channels ----------------------------------------------------------------------------


def with_channel(cfg: AllocationConfig) -> Callable[[DataFrame], DataFrame]:
    """Adds ``channel``: the campaign's channel from ``channels`` (campaign_id -> channel), else the default."""

    def transform(df: DataFrame) -> DataFrame:
        mapping = F.create_map(*[F.lit(x) for kv in sorted(cfg.channels.items()) for x in kv]) if cfg.channels else None
        channel = (
            F.coalesce(mapping[F.col("campaign_id")], F.lit(cfg.default_channel))
            if mapping is not None
            else (F.lit(cfg.default_channel))
        )
        return df.select(*df.columns, channel.alias("channel"))

    return transform


def export_frame(allocations: DataFrame, cfg: AllocationConfig) -> DataFrame:
    """The rows a push channel needs: issued coupons only, one channel each."""
    return (
        allocations.where(F.col("coupon_id").isNotNull())
        .transform(with_channel(cfg))
        .select("channel", "run_date", "user_id", "coupon_id", "campaign_id", "policy", "propensity", "run_id")
    )


def export_allocations(allocations: DataFrame, cfg: Config, run_date: dt.date) -> str:
    """Write ``<root>/<export_dir>/run_date=D/channel=X/part-*.csv`` (one file set per channel); a rerun
    replaces the date's folder. Returns the date's folder."""
    from coupon_spark.config import join_uri

    path = join_uri(cfg.lake.root, f"{cfg.allocation.export_dir}/run_date={run_date.isoformat()}")
    (
        export_frame(allocations, cfg.allocation)
        .drop("run_date")
        .repartition("channel")
        .write.mode("overwrite")
        .partitionBy("channel")
        .option("header", True)
        .csv(path)
    )
    return path


# ---- the stage ---------------------------------------------------------------------------------------------------


def run(ctx: Context, run_date: dt.date) -> int:
    """``coupon-spark allocate``: candidates of ``run_date`` -> allocations, run summary, channel export."""
    spark, cfg, lake = ctx.spark, ctx.cfg, ctx.lake
    acfg = cfg.allocation
    budgets = run_budgets_for(lake, acfg, run_date)
    candidates = lake.read(tables.CANDIDATES, where={"run_date": run_date})
    result = allocate(
        spark,
        candidates,
        budgets,
        params_from_config(acfg),
        run_date,
        partitions=acfg.partitions,
        block_rows=acfg.block_rows,
    )
    # replace_partitions, no app transaction id: a rerun must replace the date, not be skipped
    w1 = lake.write(result.allocations, tables.ALLOCATIONS)
    w2 = lake.write(result.summary, tables.ALLOCATION_RUNS)
    path = export_allocations(result.allocations, cfg, run_date)
    result.allocations.unpersist()
    print(format_summary(result.summary.first().asDict(recursive=True)))  # type: ignore[union-attr]
    print(f"  {w1}\n  {w2}\n  export {path}")
    return 0
