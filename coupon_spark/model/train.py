"""``coupon-spark train``: the two-tower uplift model trained with Horovod on Spark, published to the registry.

The driver pins one Delta version of ``training_examples``, reads the feature transformation from
``feature_stats``, lists the snapshot's data files and splits them into one group per rank. Then
``horovod.spark.run`` starts ``train.num_proc`` Spark tasks, each running :func:`rank_main` as one Horovod
rank (Gloo on CPU; NCCL for GPU tensors where Horovod was built with it): the rank pins the GPU Spark gave
its task, reads only its files with pyarrow and runs :func:`coupon_spark.model.loop.fit`. Rank 0 writes
checkpoints and the final weights into the new version's folder; the driver then adds the SavedModel, the
transformation, the metrics, the config and the manifest, and moves ``latest``.

With ``train.num_proc: 0``, or where horovod is not installed, the same :func:`rank_main` runs in the driver
process as a single rank.

The decision gate (:mod:`coupon_spark.model.gate`) then needs out-of-fold scores of the randomised rows: with
``train.gate_folds`` K >= 2 the driver trains K fold models in its own process with the same
:func:`coupon_spark.model.loop.fit` (:func:`fold_models`), each on the published run's shards without one fold,
for at most the published model's best epoch count. Horovod stays the path of the published model.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark import tables
from coupon_spark.config import Config, TrainConfig
from coupon_spark.errors import MissingColumnsError, UpstreamNotReady
from coupon_spark.lake import Lake
from coupon_spark.model.data import (
    ID_COLUMNS,
    TARGET_COLUMNS,
    DataFile,
    Examples,
    make_examples,
    read_files,
    snapshot_files,
    split_files,
    validation_mask,
)
from coupon_spark.model.gate import DECISION_FILE, MIN_ROWS, NO_GATE, Gate, monitors, next_test_index
from coupon_spark.model.pair import PAIR_COUPON_COLUMNS, PAIR_FEATURES
from coupon_spark.model.registry import Registry, read_npz, write_bytes, write_npz
from coupon_spark.model.scorer import FOLD_WEIGHTS_FILE
from coupon_spark.model.spec import ModelSpec
from coupon_spark.model.transform import FeatureTransform
from coupon_spark.runner import Context

log = logging.getLogger(__name__)

TRAINING_TABLE = tables.TRAINING_EXAMPLES
STATS_TABLE = tables.FEATURE_STATS
RANK_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


class NoTrainingDataError(UpstreamNotReady, RuntimeError):
    """No training example (or no feature statistics) before the run date."""


@dataclass(frozen=True)
class RankTask:
    """Everything a rank needs, picklable and free of TensorFlow objects.

    Attributes:
        groups: File groups (shards) in global order; with ``P`` processes each takes ``len(groups) / P``
            consecutive groups (one per Horovod rank; all of them in a single process).
        horovod: Run as a Horovod rank (``hvd.init()``) rather than a lone process.
        spec_json: :class:`ModelSpec` as JSON.
        transform_json: :class:`FeatureTransform` as JSON.
        train: The training configuration.
        version_uri: The registry version folder (rank 0 writes checkpoints and ``weights.npz`` there); empty:
            write nothing.
    """

    groups: list[list[DataFile]]
    horovod: bool
    spec_json: str
    transform_json: str
    train: TrainConfig
    version_uri: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        t = FeatureTransform.from_json(self.transform_json)
        return [*ID_COLUMNS, *TARGET_COLUMNS, *t.user_columns, *t.coupon_columns]


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`train` did."""

    name: str
    version: int
    uri: str
    metrics: dict[str, Any]
    skipped: bool = False
    gate: Gate | None = None


# ---- the rank -----------------------------------------------------------------------------------------------
def pin_gpu() -> str | None:
    """Make the GPU that Spark assigned this task the only one CUDA shows this process (before TensorFlow
    touches CUDA). Falls back to the Horovod local rank when Spark assigned no GPU resource."""
    addresses: list[str] = []
    try:
        from horovod.spark.task import get_available_devices

        addresses = list(get_available_devices())
    except Exception:  # noqa: BLE001 - not inside a horovod.spark task
        addresses = []
    address = addresses[0] if addresses else os.environ.get("HOROVOD_LOCAL_RANK")
    if address is None:
        return None
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    if visible and address not in visible and address.isdigit() and int(address) < len(visible):
        address = visible[int(address)]  # the executor already narrowed the devices: the address is an index
    os.environ["CUDA_VISIBLE_DEVICES"] = address
    return address


def rank_main(task: RankTask) -> dict[str, Any]:
    """One rank: join Horovod (if asked), pin the GPU, read this rank's files, train, (rank 0) save weights.

    Returns:
        Rank 0: the validation metrics, the history and the run's shape; other ranks: their rank. Without a
        ``version_uri`` every rank also returns its final weights (tests compare them).
    """
    from coupon_spark.tfenv import start_tensorflow  # the env first; without a GPU, TensorFlow quietly

    start_tensorflow(RANK_ENV | task.env)
    gpu = pin_gpu() if (task.train.use_gpu and task.horovod) else None
    if task.horovod:
        import horovod.tensorflow as hvd

        hvd.init()
    import tensorflow as tf

    from coupon_spark.model.loop import HorovodComm, LocalComm, fit

    comm = HorovodComm() if task.horovod else LocalComm()
    if task.horovod:
        _rank_logging(comm.rank)
    for g in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(g, True)
    if task.train.use_gpu:
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            log.warning("rank %d: train.use_gpu is set but no GPU is visible; training on the CPU", comm.rank)
        elif isinstance(comm, HorovodComm) and not comm.hvd.nccl_built():
            log.warning("rank %d: Horovod was built without NCCL: GPU gradients go through Gloo on the host", comm.rank)
        log.info("rank %d: GPU %s (CUDA_VISIBLE_DEVICES=%s)", comm.rank, gpus, gpu)
    if len(task.groups) % comm.size:
        raise ValueError(f"{len(task.groups)} file groups cannot be shared by {comm.size} ranks")
    per = len(task.groups) // comm.size
    spec = ModelSpec.from_json(task.spec_json)
    transform = FeatureTransform.from_json(task.transform_json)
    shards = [
        read_shard(files, task, spec, transform)[0] for files in task.groups[comm.rank * per : (comm.rank + 1) * per]
    ]
    log.info(
        "rank %d/%d: %d rows from %d file(s)",
        comm.rank,
        comm.size,
        sum(len(s) for s in shards),
        sum(len(g) for g in task.groups[comm.rank * per : (comm.rank + 1) * per]),
    )

    def checkpoint(weights: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        if task.version_uri:
            write_npz(f"{task.version_uri}/checkpoints/best.npz", weights)
            write_bytes(f"{task.version_uri}/checkpoints/state.json", json.dumps(state).encode(), atomic=True)

    result = fit(shards, spec, task.train, comm, checkpoint=checkpoint)
    if comm.rank != 0:
        return {"rank": comm.rank, "weights": None if task.version_uri else result.weights}
    if task.version_uri:
        write_npz(f"{task.version_uri}/weights.npz", result.weights)
    return {
        "rank": 0,
        "metrics": result.metrics,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "world": result.world,
        "local_batch": result.local_batch,
        "steps_per_epoch": result.steps_per_epoch,
        "learning_rate": result.learning_rate,
        "n_train": result.n_train,
        "n_validation": result.n_validation,
        "train_seconds": result.train_seconds,
        "examples_per_second": result.examples_per_second,
        "weights": None if task.version_uri else result.weights,
    }


def read_shard(
    files: list[DataFile], task: RankTask, spec: ModelSpec, transform: FeatureTransform
) -> tuple[Examples, np.ndarray]:
    """One shard's examples (at most ``train.sample_rows`` rows) and their ``issuance_id``, in ``issuance_id``
    order: the batches then depend on the rows, not on how files lay them out (a rerun of the features that
    rewrites the same rows trains the same model)."""
    pdf = read_files(files, task.columns).sort_values("issuance_id", kind="stable", ignore_index=True)
    if task.train.sample_rows:
        pdf = pdf.head(task.train.sample_rows)
    ex = make_examples(pdf, transform, spec, task.train.validation_share, task.train.seed)
    return ex, pdf["issuance_id"].to_numpy(object)


def fold_models(task: RankTask, folds: int) -> list[dict[str, np.ndarray]]:
    """The gate's cross-fitting models, trained in this process: model ``k`` on the shards of ``task`` without
    the rows of fold ``k`` (:func:`coupon_spark.model.gate.fold_ids`). Every group of ``task`` is one shard,
    as :func:`coupon_spark.model.loop.fit` emulates the published run's ranks in one process: the same world,
    global batch and learning rate, without a Horovod job per fold.

    Returns:
        The weights of each fold model, in fold order.
    """
    from coupon_spark.model.gate import fold_ids
    from coupon_spark.model.loop import fit

    spec = ModelSpec.from_json(task.spec_json)
    transform = FeatureTransform.from_json(task.transform_json)
    shards, shard_folds = [], []
    for files in task.groups:
        ex, ids = read_shard(files, task, spec, transform)
        shards.append(ex)
        shard_folds.append(fold_ids(ids, folds, task.train.seed))
    out = []
    for k in range(folds):
        part = [s.take(np.flatnonzero(f != k)) for s, f in zip(shards, shard_folds, strict=True)]
        log.info("gate fold model %d/%d: %d rows (fold %d held out)", k + 1, folds, sum(len(p) for p in part), k)
        out.append(fit(part, spec, task.train).weights)
    return out


def _rank_logging(rank: int) -> None:
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
        root.setLevel(logging.INFO)


def horovod_available() -> bool:
    try:
        import horovod.spark
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def run_ranks(task: RankTask, num_proc: int, start_timeout: int = 600) -> list[dict[str, Any]]:
    """Run :func:`rank_main` on ``num_proc`` Horovod ranks (Spark tasks), or in this process when
    ``task.horovod`` is false. Returns the ranks' results in rank order."""
    if not task.horovod:
        return [rank_main(task)]
    import horovod.spark

    return horovod.spark.run(  # type: ignore[no-any-return]
        rank_main,
        args=(task,),
        num_proc=num_proc,
        start_timeout=start_timeout,
        use_gloo=True,
        env=RANK_ENV | task.env,
        verbose=1,
    )


# ---- the driver ---------------------------------------------------------------------------------------------
def load_transform(lake: Lake, run_date: dt.date) -> tuple[FeatureTransform, dict[str, Any]]:
    """The ``feature_stats`` rows of the latest ``as_of_date`` on or before ``run_date``.

    Raises:
        NoTrainingDataError: No statistics on or before the run date.
    """
    version = lake.version(STATS_TABLE)
    stats = lake.read(STATS_TABLE, version=version).where(F.col("as_of_date") <= F.lit(run_date))
    last = stats.agg(F.max("as_of_date")).first()[0]  # type: ignore[index]
    if last is None:
        raise NoTrainingDataError(
            f"{STATS_TABLE} has no statistics on or before {run_date}: run `coupon-spark features` first"
        )
    pdf = stats.where(F.col("as_of_date") == F.lit(last)).toPandas()
    transform = FeatureTransform.from_stats(pdf)
    info = {
        "location": lake.location(STATS_TABLE),
        "version": version,
        "as_of_date": str(last),
        "source_table": str(pdf["source_table"].iloc[0]),
        "source_version": transform.source_version,
        # the transformation itself (not the version it was computed from): what the fingerprint needs
        "digest": fingerprint(
            [
                {k: (list(v) if k == "vocabulary" and v is not None else v) for k, v in r.items()}
                for r in pdf.drop(columns=["source_version"]).sort_values(["feature", "kind"]).to_dict("records")
            ]
        ),
    }
    return transform, info


def check_columns(names: list[str], transform: FeatureTransform) -> None:
    want = [*ID_COLUMNS, *TARGET_COLUMNS, *transform.user_columns, *transform.coupon_columns]
    missing = [c for c in want if c not in names]
    if missing:
        raise MissingColumnsError(
            f"{TRAINING_TABLE} lacks {missing} (it has {sorted(names)}); the model needs the contract's keys "
            "(coupon_spark.schemas.TRAINING_EXAMPLES_KEYS) and every feature that feature_stats describes: "
            "rerun `coupon-spark features` for the same dates"
        )


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_digest(df: DataFrame) -> str:
    """``rows:digest`` of a DataFrame's content, whatever its files, partitions and row order: the row count and
    the sum of each row's ``xxhash64`` over every column (in name order). One pass in Spark."""
    h = F.xxhash64(*[F.col(c) for c in sorted(df.columns)]).cast("decimal(38,0)")
    got = df.select(h.alias("h")).agg(F.count("*"), F.sum("h")).first()
    assert got is not None
    return f"{got[0]}:{got[1] or 0}"


@dataclass(frozen=True)
class TrainingSnapshot:
    """What a training run reads, pinned: one version of ``training_examples``, its data files before the run
    date (within ``train.history_days``), the feature transformation and where it came from."""

    location: str
    version: int
    transform: FeatureTransform
    stats: dict[str, Any]  # the manifest's feature_stats: table version, snapshot date, digest
    files: list[DataFile]
    since: dt.date | None
    until: dt.date
    examples: DataFrame  # the same rows, lazily, for the coupon vocabulary and the content fingerprint

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest's ``training_table``."""
        return {
            "location": self.location,
            "version": self.version,
            "since": self.since,
            "until": self.until,
            "files": len(self.files),
            "rows": sum(f.num_records for f in self.files),
        }


def pin_snapshot(lake: Lake, cfg: Config, run_date: dt.date) -> TrainingSnapshot:
    """Pin the current version of ``training_examples`` and the feature statistics of ``run_date``.

    Raises:
        NoTrainingDataError: No example issued before ``run_date`` (within ``train.history_days``).
        MissingColumnsError: The training table does not follow the contract.
    """
    from deltalake import DeltaTable

    location = lake.location(TRAINING_TABLE)
    version = lake.version(TRAINING_TABLE)
    transform, stats_info = load_transform(lake, run_date)
    names = DeltaTable(location, version=version).schema().to_arrow().names
    check_columns(list(names), transform)
    since = run_date - dt.timedelta(days=cfg.train.history_days) if cfg.train.history_days else None
    # the issue dates whose outcome windows had closed by the run date, as the features of the run date wrote
    # them: a rerun after later days' features (which add the next issue dates) reads the same rows
    until = run_date - dt.timedelta(days=cfg.features.outcome_window_days - 1)
    files = snapshot_files(location, version, since=since, until=until)
    if not files:
        window = f" within train.history_days={cfg.train.history_days}" if since else ""
        raise NoTrainingDataError(
            f"{TRAINING_TABLE} v{version} has no example issued before {until}{window}: run `coupon-spark "
            f"features` for a run date after the first logged issue day whose outcome window has closed"
            + (", or raise train.history_days (0: all)" if since else "")
        )
    examples = lake.read(TRAINING_TABLE, version=version).where(F.col("issue_date") < F.lit(until))
    if since:
        examples = examples.where(F.col("issue_date") >= F.lit(since))
    return TrainingSnapshot(location, version, transform, stats_info, files, since, until, examples)


def model_spec(cfg: Config, transform: FeatureTransform, coupon_ids: list[str]) -> ModelSpec:
    """The architecture from ``train.*``: pair features only where the feature stats describe the coupon columns
    they need (else a warning and none)."""
    tc = cfg.train
    missing = [c for c in PAIR_COUPON_COLUMNS if c not in transform.coupon_columns]
    if tc.pair_features and missing:
        log.warning(
            "train.pair_features: the feature stats describe no %s: the model is trained without pair features "
            "(build the features with `coupon-spark features`, or set train.pair_features=false to silence this)",
            ", ".join(missing),
        )
    return ModelSpec(
        user_dim=transform.user_dim,
        coupon_dim=transform.coupon_dim,
        embedding_dim=tc.embedding_dim,
        hidden_units=list(tc.hidden_units),
        id_embedding_dim=tc.id_embedding_dim,
        user_id_buckets=tc.user_id_buckets,
        coupon_ids=coupon_ids,
        pair_dim=len(PAIR_FEATURES) if tc.pair_features and not missing else 0,
        default_basket_eur=cfg.score.default_basket_eur,
        heads=tc.heads,
    )


def train(
    spark: SparkSession, cfg: Config, run_date: dt.date, force: bool = False, lake: Lake | None = None
) -> TrainOutcome:
    """Train on every example issued before ``run_date`` (or the last ``train.history_days`` days of them) and
    publish a new registry version; a rerun with the same inputs returns the version it made (unless
    ``force``).

    The steps: pin the inputs (:func:`pin_snapshot`), the architecture (:func:`model_spec`), the content
    fingerprint (a version trained on the same inputs is returned as it is), the Horovod ranks
    (:func:`run_ranks`), the decision gate (:func:`decision_gate`), then :func:`publish`.

    Raises:
        NoTrainingDataError: Nothing to train on.
        MissingColumnsError: The training table does not follow the contract.
    """
    tc = cfg.train
    lake = lake or Lake.from_config(spark, cfg.lake)
    snap = pin_snapshot(lake, cfg, run_date)
    coupon_ids = sorted(
        r[0] for r in snap.examples.select("coupon_id").where(F.col("coupon_id").isNotNull()).distinct().collect()
    )
    spec = model_spec(cfg, snap.transform, coupon_ids)
    use_horovod = tc.num_proc >= 1 and horovod_available()
    if tc.num_proc >= 1 and not use_horovod:
        log.warning("horovod is not installed: training in this process as a single rank")
    ranks = tc.num_proc if use_horovod else 1
    # by content, not by table versions: a rerun of the features that rewrites the same rows (new Delta
    # versions) trains nothing new
    fp = fingerprint(
        {
            "train": dataclasses.asdict(tc),
            "examples": content_digest(snap.examples),
            "since": snap.since,
            "stats": snap.stats["digest"],
            "ranks": ranks,
            "run_date": run_date,
        }
    )
    registry = Registry.from_config(cfg)
    name = tc.model_name
    existing = None if force else registry.find(name, fp)
    if existing is not None:
        log.info(
            "model %s version %d was trained on the same inputs (fingerprint %s): nothing to do", name, existing, fp
        )
        done = registry.read_json(name, existing, "metrics.json")
        return TrainOutcome(
            name,
            existing,
            registry.version_uri(name, existing),
            done["validation"],
            skipped=True,
            gate=Gate.from_json(done["decision"]) if done.get("decision") else None,
        )

    model_version = registry.new_version(name)
    uri = registry.version_uri(name, model_version)
    task = RankTask(split_files(snap.files, ranks), use_horovod, spec.to_json(), snap.transform.to_json(), tc, uri)
    log.info(
        "training %s v%d on %s v%d (%d files, %d rows) with %d %s",
        name,
        model_version,
        snap.location,
        snap.version,
        len(snap.files),
        snap.manifest["rows"],
        ranks,
        "Horovod rank(s)" if use_horovod else "local process",
    )
    started = time.time()
    result = run_ranks(task, ranks, tc.start_timeout_s)[0]
    weights = read_npz(f"{uri}/weights.npz")
    gate_started = time.time()
    gate = NO_GATE
    ensemble: list[dict[str, np.ndarray]] = []
    if tc.decision_confidence > 0:
        earlier = earlier_gates(registry, name, before=model_version)
        fold_task = dataclasses.replace(
            task, version_uri="", train=dataclasses.replace(tc, epochs=max(1, min(tc.epochs, result["best_epoch"])))
        )
        monitor, confirmed_by = monitors(earlier, tc.gate_monitor)
        test_index = confirmed_by if monitor else next_test_index(earlier)
        gate = decision_gate(
            lake, cfg, snap.files, spec, snap.transform, weights, test_index, fold_task, ensemble, monitor
        )
    gate_seconds = round(time.time() - gate_started, 1)
    log.info("decision gate of %s v%d (%.1f s): %s", name, model_version, gate_seconds, gate.describe())
    if ensemble:  # before the manifest: a version is complete only with everything its scorer reads
        write_npz(f"{uri}/{FOLD_WEIGHTS_FILE}", {f"{k}/{n}": a for k, w in enumerate(ensemble) for n, a in w.items()})
    publish(
        registry,
        NewVersion(
            name,
            model_version,
            spec,
            snap.transform,
            weights,
            result | {"decision": gate.to_json()},
            {
                "name": name,
                "version": model_version,
                "run_id": uuid.uuid4().hex,
                "run_date": run_date,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                "fingerprint": fp,
                "training_table": snap.manifest,
                "feature_stats": snap.stats,
                "ranks": ranks,
                "horovod": use_horovod,
                "seconds": round(time.time() - started, 1),
                "gate_seconds": gate_seconds,
            },
            tc,
        ),
    )
    return TrainOutcome(name, model_version, uri, result["metrics"], gate=gate)


def decision_gate(
    lake: Lake,
    cfg: Config,
    files: list[DataFile],
    spec: ModelSpec,
    transform: FeatureTransform,
    weights: dict[str, np.ndarray],
    test_index: int = 1,
    fold_task: RankTask | None = None,
    fold_models_out: list[dict[str, np.ndarray]] | None = None,
    monitor: bool = False,
) -> Gate:
    """The model's decision gate (:mod:`coupon_spark.model.gate`) from the rows of the training files that a
    randomised logging policy (``evaluate.ope_policies``) chose, and the coupons live on their issue dates
    (``coupon_features``).

    With ``train.gate_folds`` K >= 2 (and a ``fold_task``: the published run's shards and configuration),
    K fold models are trained in this process (:func:`fold_models`) and every randomised row is scored by the
    one that did not see it; else the published ``weights`` score the rows of the validation split. The rows
    are split into the selection and the confirmation parts and :func:`coupon_spark.model.gate.decide` chooses
    and tests the threshold, as the model name's ``test_index``-th test (``monitor``: a version of a procedure
    an earlier test confirmed, kept open while its gain is positive). The fold models' weights are appended to
    ``fold_models_out`` (published with the version: the ensemble of ``score.uncertainty_z``).
    """
    from coupon_spark.model.gate import chunk_ids, decide

    tc = cfg.train
    fold_models_out = [] if fold_models_out is None else fold_models_out
    folds = tc.gate_folds if tc.gate_folds >= 2 and fold_task is not None else 0
    rows = gate_rows(read_files(files, gate_columns(transform)), cfg, folds)
    chunk = chunk_ids(rows["issuance_id"], tc.gate_chunks, tc.seed)
    nothing = np.zeros(len(rows))
    if min((chunk == 0).sum(), (chunk > 0).sum()) < MIN_ROWS:  # closed whatever the model: train nothing
        return decide(nothing, nothing, chunk, tc.decision_confidence, test_index, folds, monitor=monitor)
    models = fold_models(fold_task, folds) if folds and fold_task is not None else []
    fold_models_out.extend(models)
    return gate_of_models(lake, cfg, rows, spec, transform, weights, models, test_index, monitor)


def gate_columns(transform: FeatureTransform) -> list[str]:
    """The columns of the training examples the gate reads."""
    outcomes = ["issue_date", "policy", "propensity", "revenue_eur", "coupon_cost_eur"]
    return [*ID_COLUMNS, *outcomes, *transform.user_columns]


def gate_rows(rows: pd.DataFrame, cfg: Config, folds: int) -> pd.DataFrame:
    """The training examples the gate replays the model on: those a randomised logging policy chose (the logged
    days' ``evaluate.ope_policies``, and with ``train.gate_on_import`` the imported promotion's), with a known
    propensity; without cross-fitting (``folds`` < 2) only the validation split."""
    tc = cfg.train
    policies = [*cfg.evaluate.ope_policies, *(cfg.features.import_policies if tc.gate_on_import else [])]
    keep = rows["policy"].isin(policies).to_numpy() & (rows["propensity"] > 0).to_numpy()
    if folds < 2:
        keep &= validation_mask(rows["issuance_id"], tc.validation_share, tc.seed)
    return rows[keep].reset_index(drop=True)


def gate_of_models(
    lake: Lake,
    cfg: Config,
    rows: pd.DataFrame,
    spec: ModelSpec,
    transform: FeatureTransform,
    weights: dict[str, np.ndarray],
    models: list[dict[str, np.ndarray]],
    test_index: int = 1,
    monitor: bool = False,
) -> Gate:
    """The gate of a published model (``weights``) and its fold models (``models``, fold ``k`` trained without
    the rows of fold ``k``; empty: the published model alone) on the :func:`gate_rows` ``rows``: every row scored
    out of fold (by the out-of-bag pool, ``train.gate_out_of_bag``, or by its fold model), then
    :func:`coupon_spark.model.gate.decide`. Also what ``bench/gate_replay.py`` calls on a saved version."""
    from coupon_spark.model.gate import best_option_gains, chunk_ids, decide, fold_ids, oob_head_mask
    from coupon_spark.model.scorer import NumpyScorer
    from coupon_spark.policy import live_on

    tc = cfg.train
    folds = len(models) if len(models) >= 2 else 0
    chunk = chunk_ids(rows["issuance_id"], tc.gate_chunks, tc.seed)
    rows = rows.copy()
    rows["issue_date"] = pd.to_datetime(rows["issue_date"]).dt.date
    dates = sorted(set(rows["issue_date"]))
    cf = lake.read(tables.COUPON_FEATURES, where={"as_of_date": dates}).toPandas()
    cf["as_of_date"] = pd.to_datetime(cf["as_of_date"]).dt.date
    by_date = {d: g.reset_index(drop=True) for d, g in cf[live_on(cf)].groupby("as_of_date")}
    score_cfg = dataclasses.replace(cfg.score, frequency_cap=10**9)  # the logged decisions were made anyway
    options = exploration_options(lake, rows)
    fold = fold_ids(rows["issuance_id"], folds, tc.seed)
    # each row is scored by the fold model that did not see it, lowered (score.uncertainty_z) by the spread of
    # all fold models, as the score job lowers the published model's estimates by the same ensemble's spread
    ensemble = [NumpyScorer(spec, transform, w) for w in models] if folds else []
    jobs: list[tuple[NumpyScorer, pd.DataFrame, np.ndarray, np.ndarray | None]]
    if ensemble and spec.heads > 1 and tc.gate_out_of_bag:  # the published pool less the heads that saw a row
        pooled = NumpyScorer(spec, transform, weights, members=ensemble).pooled()
        jobs = [(pooled, rows, chunk, oob_head_mask(rows["issuance_id"], fold, spec.heads, len(ensemble), tc.seed))]
    else:  # each row by the one model that did not see it (the published one without folds)
        scorers = [NumpyScorer(spec, transform, w, members=ensemble) for w in (models if folds else [weights])]
        jobs = [(sc, rows[fold == k], chunk[fold == k], None) for k, sc in enumerate(scorers)]
    started = time.perf_counter()
    scores, gains, parts = [], [], []
    for scorer, mine, mine_chunk, head_mask in jobs:
        # every chunk of a scorer's rows in one pass (the per-date work -- live coupons, their embeddings, pair
        # features -- once per date, not once per date and chunk), then the rows put in chunk order (stable:
        # within a chunk by date, then row order), so that decide() adds them in the order it always did. A row
        # that was alone in its chunk and date may differ in its last bit: numpy multiplies one row by another
        # BLAS routine (gemv) than many (gemm)
        s, g, at = best_option_gains(scorer, mine, by_date, score_cfg, options, head_mask)
        part = mine_chunk[at]
        order = np.argsort(part, kind="stable")
        scores.append(s[order])
        gains.append(g[order])
        parts.append(part[order])
    log.info("decision gate: %d randomised rows scored out of fold in %.1f s", len(rows), time.perf_counter() - started)
    return decide(
        np.concatenate(scores),
        np.concatenate(gains),
        np.concatenate(parts),
        tc.decision_confidence,
        test_index,
        folds,
        monitor=monitor,
    )


def earlier_gates(registry: Registry, name: str, before: int) -> list[Gate]:
    """The gates of the model name's complete versions before ``before`` (those without a decision file, from
    before the gate, are left out), in version order: what :func:`coupon_spark.model.gate.next_test_index`
    counts and :func:`coupon_spark.model.gate.monitors` reads."""
    out = []
    for v in sorted(registry.versions(name)):
        if v >= before:
            continue
        try:
            out.append(Gate.from_json(registry.read_json(name, v, DECISION_FILE)))
        except (FileNotFoundError, OSError):
            continue
    return out


def exploration_options(lake: Lake, rows: pd.DataFrame) -> dict[tuple[dt.date, str], frozenset[str]]:
    """For rows logged by coupon-spark's exploration arm (policy ``.../exploration``): the coupons it could
    draw for that user that day, i.e. the user's ``candidates`` of the run date (besides "no coupon")."""
    from coupon_spark.allocation import POLICY_EXPLORATION

    explored = rows[rows["policy"].astype(str).str.rsplit("/", n=1).str[-1] == POLICY_EXPLORATION]
    if explored.empty:
        return {}
    dates = sorted(set(explored["issue_date"]))
    cand = (
        lake.read(tables.CANDIDATES, where={"run_date": dates})
        .join(lake.spark.createDataFrame(explored[["user_id"]].drop_duplicates()), on="user_id", how="left_semi")
        .select("run_date", "user_id", "coupon_id")
        .toPandas()
        if lake.exists(tables.CANDIDATES)
        else pd.DataFrame(columns=["run_date", "user_id", "coupon_id"])
    )
    cand["run_date"] = pd.to_datetime(cand["run_date"]).dt.date
    sets = {k: frozenset(g) for k, g in cand.groupby(["run_date", "user_id"])["coupon_id"]}
    # an explored user without candidates that day had only "no coupon" to draw from
    keys = zip(explored["issue_date"], explored["user_id"], strict=True)
    return {(d, u): sets.get((d, u), frozenset()) for d, u in keys}


@dataclass(frozen=True)
class NewVersion:
    """A trained model on its way into the registry: everything :func:`publish` writes.

    Attributes:
        name: The model's name in the registry.
        version: The version number the run took (:meth:`Registry.new_version`).
        spec: The architecture.
        transform: The feature transformation.
        weights: The published weights (``weights.npz`` is already in the version folder).
        result: Rank 0's answer (metrics, history, run shape) and the gate's ``decision``.
        manifest: What was trained on what (fingerprint, tables, ranks, timings).
        train: The training configuration.
    """

    name: str
    version: int
    spec: ModelSpec
    transform: FeatureTransform
    weights: dict[str, np.ndarray]
    result: dict[str, Any]
    manifest: dict[str, Any]
    train: TrainConfig


def publish(registry: Registry, new: NewVersion) -> None:
    """Write the SavedModel, spec, transformation, metrics and config next to the weights, check the numpy
    forward pass against TensorFlow, write the manifest last and move ``latest``."""
    from coupon_spark.model.network import build_model, dummy_batch, export_saved_model
    from coupon_spark.model.scorer import NumpyScorer

    name, version, spec, transform, weights, result = (
        new.name,
        new.version,
        new.spec,
        new.transform,
        new.weights,
        new.result,
    )

    model = build_model(spec, weights=weights)
    uri = registry.version_uri(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(model, f"{tmp}/saved_model")
        registry.upload_dir(f"{tmp}/saved_model", f"{uri}/saved_model")
    probe = dummy_batch(spec, 8)
    rng = np.random.default_rng(0)
    probe["user_x"] = rng.normal(size=probe["user_x"].shape).astype(np.float32)
    probe["coupon_x"] = rng.normal(size=probe["coupon_x"].shape).astype(np.float32)
    probe["user_bucket"] = rng.integers(0, max(spec.user_id_buckets, 1), 8)
    probe["coupon_index"] = rng.integers(0, spec.n_coupon_ids, 8)
    probe["pair_x"] = (rng.uniform(size=probe["pair_x"].shape) * (probe["coupon_index"] != 0)[:, None]).astype(
        np.float32
    )
    tf_out = model(probe)
    np_out = NumpyScorer(spec, transform, weights).predict_rows(probe)
    diff = max(
        float(np.max(np.abs(tf_out[k].numpy() - np_out[k]))) for k in ("p_purchase", "p_purchase_none", "p_redeem")
    )
    registry.write_json(name, version, "spec.json", json.loads(spec.to_json()))
    registry.write_json(name, version, "transform.json", json.loads(transform.to_json()))
    registry.write_json(name, version, "train_config.json", dataclasses.asdict(new.train))
    registry.write_json(name, version, DECISION_FILE, result.get("decision") or NO_GATE.to_json())
    registry.write_json(
        name,
        version,
        "metrics.json",
        {
            "validation": result["metrics"],
            "history": result["history"],
            "best_epoch": result["best_epoch"],
            "world": result["world"],
            "local_batch": result["local_batch"],
            "learning_rate": result["learning_rate"],
            "steps_per_epoch": result["steps_per_epoch"],
            "n_train": result["n_train"],
            "n_validation": result["n_validation"],
            "train_seconds": result["train_seconds"],
            "examples_per_second": result["examples_per_second"],
            "decision": result.get("decision"),
        },
    )
    registry.write_json(name, version, "manifest.json", new.manifest | {"numpy_vs_tensorflow_max_abs_diff": diff})
    registry.advance_latest(name, version)


def run(ctx: Context, run_date: dt.date) -> int:
    """The ``train`` stage: train, publish, print where the version went and its validation metrics."""
    out = train(ctx.spark, ctx.cfg, run_date, force=ctx.options.force, lake=ctx.lake)
    p = out.metrics.get("purchase", {})
    r = out.metrics.get("redeem", {})
    print(f"model {out.name} version {out.version}{' (already trained: unchanged)' if out.skipped else ''}: {out.uri}")
    print(
        f"  validation purchase AUC {p.get('auc', float('nan')):.4f}, log loss {p.get('log_loss', float('nan')):.4f}"
        f", mean prediction {p.get('mean_prediction', float('nan')):.4f} vs observed "
        f"{p.get('observed_rate', float('nan')):.4f}; redeem AUC {r.get('auc', float('nan')):.4f}"
    )
    if out.gate is not None:
        print(f"  decision gate: {out.gate.describe()}")
    return 0
