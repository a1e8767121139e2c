"""The ``train`` stage: two Horovod ranks through ``horovod.spark.run`` against one process on the same global
batches, the registry, and what the model learns from a known response model (and, once the whole loop
exists, from the synthetic shop)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
from pyspark.sql import functions as F
from test_model_data import COUPONS, RUN_DATE, STATS, make_world, write_world

from coupon_spark.config import Config, LakeConfig, SparkConfig, TrainConfig
from coupon_spark.model.data import make_examples, snapshot_files, split_files
from coupon_spark.model.gate import Gate
from coupon_spark.model.metrics import roc_auc
from coupon_spark.model.network import build_model, export_weights
from coupon_spark.model.pair import pair_rows
from coupon_spark.model.registry import Registry, read_npz
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.model.spec import ModelSpec
from coupon_spark.model.train import RankTask, content_digest, rank_main, run, train
from coupon_spark.model.transform import FeatureTransform
from coupon_spark.runner import Context, run_stage

TINY = dict(
    epochs=2,
    batch_size=32,
    learning_rate=0.01,
    embedding_dim=4,
    hidden_units=[8],
    id_embedding_dim=3,
    user_id_buckets=64,
    l2=1e-4,
    validation_share=0.2,
    seed=5,
)


def config(lake_cfg: LakeConfig, **train: object) -> Config:
    return Config(spark=SparkConfig(), lake=lake_cfg, train=TrainConfig(**{**TINY, **train}))  # type: ignore[arg-type]


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.mark.slow
def test_two_horovod_ranks_train_exactly_like_one_process_on_the_same_global_batches(spark, lake, lake_cfg):
    """The proof that gradients are averaged: the train stage on 2 ranks (Spark tasks of the local[2]
    session, Gloo) ends with the weights of ONE process that takes both ranks' local batches as its batch."""
    write_world(spark, lake, make_world(800, days=2))
    cfg = config(lake_cfg, num_proc=2)
    out = train(spark, cfg, RUN_DATE)
    registry = Registry.from_config(cfg)
    manifest = registry.manifest(out.name, out.version)
    assert (manifest["ranks"], manifest["horovod"]) == (2, True)
    two_ranks = read_npz(f"{out.uri}/weights.npz")

    # The reference: the same snapshot, split the same way, both shards in this one process.
    spec = ModelSpec.from_json(json.dumps(registry.read_json(out.name, out.version, "spec.json")))
    transform = FeatureTransform.from_stats(STATS)
    files = snapshot_files(lake.location("training_examples"), manifest["training_table"]["version"], until=RUN_DATE)
    groups = split_files(files, 2)
    one = rank_main(RankTask(groups, False, spec.to_json(), transform.to_json(), cfg.train))
    assert one["world"] == 2 and one["local_batch"] == 32
    initial = export_weights(build_model(spec, l2=cfg.train.l2, seed=cfg.train.seed))
    assert max_diff(two_ranks, initial) > 1e-2  # it did train
    assert max_diff(two_ranks, one["weights"]) < 1e-5  # float32 sums in another order (5 heads: 2e-6 apart)
    # ...and the comparison can fail: one rank alone (no averaging) ends elsewhere.
    alone = rank_main(RankTask(groups[:1], False, spec.to_json(), transform.to_json(), cfg.train))
    assert max_diff(alone["weights"], one["weights"]) > 1e-4
    # and two Horovod runs on the same rows end on the same bits: the same rows give the same model
    again = train(spark, cfg, RUN_DATE, force=True)
    assert again.version == out.version + 1
    assert max_diff(read_npz(f"{again.uri}/weights.npz"), two_ranks) == 0.0


def test_registry_version_layout_latest_and_rerun(spark, lake, lake_cfg, capsys):
    version = write_world(spark, lake, make_world(1200, days=3))
    cfg = config(lake_cfg, num_proc=0)
    assert run(Context(spark, cfg), RUN_DATE) == 0
    assert "version 1" in capsys.readouterr().out
    registry = Registry.from_config(cfg)
    name = cfg.train.model_name
    assert registry.root == f"{lake_cfg.root}/models" and registry.latest(name) == 1
    d = registry.local_dir(name)
    assert sorted(p.name for p in d.iterdir()) == [
        "checkpoints",
        "decision.json",
        "manifest.json",
        "metrics.json",
        "saved_model",
        "spec.json",
        "train_config.json",
        "transform.json",
        "weights.npz",
    ]
    m = registry.manifest(name, 1)
    assert m["training_table"]["version"] == version == lake.version("training_examples")
    assert m["training_table"]["rows"] == 1200 and m["feature_stats"]["as_of_date"] == str(RUN_DATE - dt.timedelta(1))
    assert m["feature_stats"]["source_version"] == 7 and m["run_date"] == str(RUN_DATE)
    assert m["numpy_vs_tensorflow_max_abs_diff"] < 1e-5
    assert registry.read_json(name, 1, "train_config.json") == dataclasses.asdict(cfg.train)
    metrics = registry.read_json(name, 1, "metrics.json")
    assert metrics["n_train"] + metrics["n_validation"] == 1200 and len(metrics["history"]) >= 1
    assert 0.5 < metrics["validation"]["purchase"]["auc"] <= 1.0
    assert {"log_loss", "expected_calibration_error", "calibration"} <= metrics["validation"]["purchase"].keys()
    # the published numpy weights are the best checkpoint, and the numpy scorer loads the version
    best = read_npz(f"{registry.version_uri(name, 1)}/checkpoints/best.npz")
    assert max_diff(best, read_npz(f"{registry.version_uri(name, 1)}/weights.npz")) == 0.0
    scorer = NumpyScorer.load(d)
    assert scorer.spec.coupon_ids == ["c05", "c10", "c20"]
    # this world's logging policy ("random") is not one of evaluate.ope_policies: nothing to test the model on,
    # so its decision gate is closed and the scorer knows it
    decision = registry.read_json(name, 1, "decision.json")
    assert decision["rows"] == 0 and decision["open"] is False and math.isinf(scorer.decision_threshold)
    assert metrics["decision"] == decision
    # same inputs: nothing new, also when a rerun of the features rewrote the same rows as a new version
    assert train(spark, cfg, RUN_DATE).skipped and registry.versions(name) == [1]
    same = lake.read("training_examples").repartition(3).cache()
    lake.write(same, "training_examples", mode="overwrite")
    lake.write(lake.read("feature_stats").cache(), "feature_stats", mode="overwrite")
    assert lake.version("training_examples") == version + 1
    assert train(spark, cfg, RUN_DATE).skipped and registry.versions(name) == [1]
    # forced: version 2 becomes latest, and on one rank the same rows (in other files) train the same weights
    assert train(spark, cfg, RUN_DATE, force=True).version == 2 and registry.latest(name) == 2
    assert max_diff(read_npz(f"{registry.version_uri(name, 1)}/weights.npz"),
                    read_npz(f"{registry.version_uri(name, 2)}/weights.npz")) == 0.0  # fmt: skip
    # one changed row: new inputs
    changed = same.withColumn("purchased", F.when(F.col("issuance_id") == same.first()["issuance_id"],
                                                  1 - F.col("purchased")).otherwise(F.col("purchased")))  # fmt: skip
    assert content_digest(changed) != content_digest(same) and content_digest(same.repartition(5)) == content_digest(
        same
    )


def write_coupon_features(spark, lake, days: int) -> None:  # type: ignore[no-untyped-def]
    """``coupon_features`` of the world's issue dates: its three coupons, live, without a minimum spend, and
    cheap enough (a twentieth of their value) for the model to find some of them worth issuing."""
    import pandas as pd

    frame = pd.concat(
        [COUPONS.assign(as_of_date=RUN_DATE - dt.timedelta(days=1 + k)) for k in range(days)], ignore_index=True
    ).assign(cf_cost=lambda f: f["cf_value"] / 20, cf_min_spend=0.0, cf_days_left=3.0, cf_days_since_start=1.0)
    lake.write(spark.createDataFrame(frame), "coupon_features", mode="overwrite", partition_by=["as_of_date"])


@pytest.mark.slow
def test_the_gate_is_cross_fitted_on_every_randomised_row_and_spends_its_error_over_versions(
    spark, lake, lake_cfg, monkeypatch
):
    """With 3 folds the gate rests on every randomised row (not the 20% validation split), scored by fold models
    that are not the published one and trained for at most its best epoch count; each published version is
    the next test of the loop, at 0.05 / (j (j + 1))."""
    from coupon_spark.config import EvaluateConfig
    from coupon_spark.model import train as train_module
    from coupon_spark.model.data import validation_mask
    from coupon_spark.model.gate import chunk_ids

    world = make_world(3000, days=3)
    write_world(spark, lake, world)
    write_coupon_features(spark, lake, days=3)
    cfg = dataclasses.replace(
        config(lake_cfg, num_proc=0, gate_folds=3, epochs=4), evaluate=EvaluateConfig(ope_policies=["random"])
    )
    calls = []
    fold_models = train_module.fold_models

    def spy(task, folds):  # type: ignore[no-untyped-def]
        calls.append((task, fold_models(task, folds)))
        return calls[-1][1]

    monkeypatch.setattr(train_module, "fold_models", spy)
    out = train(spark, cfg, RUN_DATE)
    registry, name = Registry.from_config(cfg), cfg.train.model_name
    d = registry.read_json(name, out.version, "decision.json")
    ids = world.examples["issuance_id"]
    n_sel = int((chunk_ids(ids, 10, seed=5) == 0).sum())
    # every row was logged at random and every coupon is live and eligible: all 3000 are out-of-fold decisions
    assert (d["folds"], d["rows"], d["rows_selection"], d["rows_confirmation"]) == (3, 3000, n_sel, 3000 - n_sel)
    assert (d["test_index"], d["alpha"], d["alpha_spent"]) == (1, pytest.approx(0.025), pytest.approx(0.025))
    assert len(d["curve"]) > 1 and d["se"] > 0 and Gate.from_json(d).tested  # some positive scores: a real test
    ((task, weights),) = calls
    best_epoch = registry.read_json(name, out.version, "metrics.json")["best_epoch"]
    assert task.train.epochs == min(4, best_epoch) and len(task.groups) == 1 and task.version_uri == ""
    published = read_npz(f"{out.uri}/weights.npz")
    assert len(weights) == 3 and all(max_diff(w, published) > 1e-3 for w in weights)
    assert registry.manifest(name, out.version)["gate_seconds"] > 0
    # a forced retrain is the loop's second test; without cross-fitting the gate sees the validation split only
    again = train(spark, cfg, RUN_DATE, force=True)
    d2 = registry.read_json(name, again.version, "decision.json")
    assert (d2["test_index"], d2["alpha"], d2["alpha_spent"]) == (
        2,
        pytest.approx(0.05 / 6),
        pytest.approx(0.05 * 2 / 3),
    )
    plain = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, gate_folds=0))
    d3 = registry.read_json(name, train(spark, plain, RUN_DATE).version, "decision.json")
    assert (d3["folds"], d3["rows"], d3["test_index"]) == (0, int(validation_mask(ids, 0.2, seed=5).sum()), 3)
    assert len(calls) == 2  # the second run trained fold models too, the third none


def test_model_recovers_a_known_response_model():
    """In-process training on 20k logged issuances of a known logistic response model: its AUC reaches 90%
    of the AUC of the true probabilities, and its uplift estimates follow the true uplift."""
    world = make_world(20000, seed=11)
    transform = FeatureTransform.from_stats(STATS)
    spec = ModelSpec(
        transform.user_dim,
        transform.coupon_dim,
        embedding_dim=8,
        hidden_units=[16],
        user_id_buckets=0,
        coupon_ids=["c05", "c10", "c20"],
    )
    tc = TrainConfig(epochs=6, batch_size=256, learning_rate=0.01, user_id_buckets=0, seed=1)
    ex = make_examples(world.examples, transform, spec, 0.2, seed=1)
    task_weights = rank_main_in_memory(ex, spec, tc)
    scorer = NumpyScorer(spec, transform, task_weights)
    val = ex.is_validation
    out = scorer.predict_rows(
        {k: getattr(ex, k)[val] for k in ("user_x", "user_bucket", "coupon_x", "coupon_index", "pair_x")}
    )
    y = world.examples["purchased"].to_numpy()[val]
    assert roc_auc(y, out["p_purchase"]) >= 0.9 * roc_auc(y, world.p_true[val])
    treated = world.examples["coupon_id"].notna().to_numpy()[val]
    assert np.corrcoef(out["uplift"][treated], world.uplift_true[val][treated])[0, 1] > 0.5
    # p(purchase | none) of the control rows follows the truth too (the learned "no coupon" arm)
    control = ~treated
    assert np.corrcoef(out["p_purchase_none"][control], world.p_none_true[val][control])[0, 1] > 0.9


def rank_main_in_memory(ex, spec, tc):  # type: ignore[no-untyped-def]
    from coupon_spark.model.loop import fit

    return fit([ex], spec, tc).weights


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("COUPON_SPARK_E2E"),
    reason="about 10 minutes on 2 cores (8 days of cleansing): set COUPON_SPARK_E2E=1 to run it",
)
def test_end_to_end_on_a_generated_shop(spark, tmp_path):
    """generate -> cleanse -> features -> train on a small shop; the model's AUC on its validation rows
    reaches 90% of the AUC of the shop's true probabilities, and its uplift correlates with the true uplift."""
    import pandas as pd

    from coupon_spark.datagen.response import CouponParams, UserTraits, response_pairs
    from coupon_spark.datagen.shop import truth_table
    from coupon_spark.datagen.world import season_logit
    from coupon_spark.lake import Lake
    from coupon_spark.model.data import read_files, validation_mask

    root = os.path.join(os.path.dirname(__file__), "..", "conf", "local.yaml")
    cfg = Config.from_file(
        root,
        overrides=[
            f"lake.root={tmp_path}/lake",
            f"lake.landing={tmp_path}/landing",
            "shop.users=3000",
            "shop.partitions=2",
            "shop.issue_rate=0.8",
            "features.outcome_window_days=1",  # a shop coupon acts on its issue day only
            "train.num_proc=0",
            "train.epochs=8",
            "train.batch_size=256",
            "train.learning_rate=0.005",
        ],
    )
    days = 8
    first = cfg.shop.start
    run_date = first + dt.timedelta(days=days)
    ctx = Context(spark, cfg)
    assert run_stage("generate", ctx.with_options(days=days), first) == 0
    for i in range(days):
        assert run_stage("cleanse", ctx, first + dt.timedelta(days=i)) == 0
    assert run_stage("features", ctx, run_date) == 0
    out = train(spark, cfg, run_date)
    lake = Lake.from_config(spark, cfg.lake)
    scorer = NumpyScorer.load(Registry.from_config(cfg).local_dir(out.name, out.version))
    manifest = Registry.from_config(cfg).manifest(out.name, out.version)
    files = snapshot_files(lake.location("training_examples"), manifest["training_table"]["version"], until=run_date)
    cols = [
        "issue_date",
        "issuance_id",
        "user_id",
        "coupon_id",
        "purchased",
        *scorer.transform.user_columns,
        *scorer.transform.coupon_columns,
    ]
    ex = read_files(files, cols)
    ex = ex[validation_mask(ex["issuance_id"], cfg.train.validation_share, cfg.train.seed)].reset_index(drop=True)
    users = lake.read(truth_table(cfg, "user_traits")).toPandas().set_index("user_id").loc[ex["user_id"]]
    coupons = CouponParams.from_pandas(lake.read(truth_table(cfg, "coupons")).toPandas())
    season = np.array([season_logit(pd.Timestamp(d).date()) for d in ex["issue_date"]])
    traits = UserTraits.from_pandas(users.reset_index())
    truth = response_pairs(traits, coupons, coupons.index_of(ex["coupon_id"]), season)
    truth_none = response_pairs(traits, coupons, np.full(len(ex), -1), season)
    u, idx = scorer.user_embed(ex), scorer.spec.coupon_index(ex["coupon_id"])
    pred = scorer.predict_rows(
        {
            "user_x": scorer.transform.user_matrix(ex),
            "user_bucket": scorer.spec.user_buckets(ex["user_id"]),
            "coupon_x": scorer.transform.coupon_matrix(ex),
            "coupon_index": idx,
            "pair_x": pair_rows(ex, scorer.spec.default_basket_eur),
        }
    )
    assert u.shape == (len(ex), scorer.embedding_dim)
    y = ex["purchased"].to_numpy()
    treated = ex["coupon_id"].notna().to_numpy()
    true_uplift = truth.p_purchase - truth_none.p_purchase
    auc, auc_true = roc_auc(y, pred["p_purchase"]), roc_auc(y, truth.p_purchase)
    corr = float(np.corrcoef(pred["uplift"][treated], true_uplift[treated])[0, 1])
    print(
        f"shop: {len(ex)} validation rows, model AUC {auc:.4f}, true-probability AUC {auc_true:.4f}, "
        f"uplift correlation {corr:.3f}"
    )
    assert auc >= 0.9 * auc_true
    assert corr > 0.0


def test_each_rank_pins_the_gpu_spark_assigned_its_task(monkeypatch):
    """What a rank of a GPU pool sees: Spark's task resources (handed over by horovod.spark) name the GPU."""
    from horovod.spark.task import task_info
    from pyspark.resource import ResourceInformation

    from coupon_spark.model.train import pin_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("HOROVOD_LOCAL_RANK", "1")
    try:
        task_info.set_resources({"gpu": ResourceInformation("gpu", ["3"])})
        assert pin_gpu() == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
        # an executor that already narrowed CUDA to its devices: the address is an index into them
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
        task_info.set_resources({"gpu": ResourceInformation("gpu", ["1"])})
        assert pin_gpu() == "6" and os.environ["CUDA_VISIBLE_DEVICES"] == "6"
        # no GPU resource from Spark: the local rank decides
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        task_info.set_resources({})
        assert pin_gpu() == "1"
    finally:
        task_info.set_resources({})


def test_training_reads_the_issue_dates_whose_outcome_windows_had_closed_by_the_run_date(spark, lake, lake_cfg):
    """With outcomes counted over 2 days, the features of day D write issue dates up to D - 2; a later day's
    features add D - 1. Training for D (a rerun after later days, say) reads only what D's features wrote."""
    from coupon_spark.config import FeaturesConfig
    from coupon_spark.model.train import pin_snapshot

    world = make_world(150, days=3)
    write_world(spark, lake, world)
    issued = world.examples["issue_date"]
    for window, first_excluded in [(1, RUN_DATE), (2, RUN_DATE - dt.timedelta(days=1))]:
        cfg = dataclasses.replace(config(lake.cfg), features=FeaturesConfig(outcome_window_days=window))
        snap = pin_snapshot(lake, cfg, RUN_DATE)
        want = int((issued < first_excluded).sum())
        assert snap.until == first_excluded and 0 < want
        assert snap.examples.count() == want == sum(f.num_records for f in snap.files)
    assert int((issued == RUN_DATE - dt.timedelta(days=1)).sum()) > 0  # the window of 2 left a day out
