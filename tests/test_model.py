"""The model's pieces, against values worked out by hand: feature transform, ids, loss with IPW, metrics,
and the numpy forward pass against TensorFlow's."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from coupon_spark.model.data import Examples, ipw_weights, validation_mask
from coupon_spark.model.loop import batch_tensors
from coupon_spark.model.metrics import binary_summary, log_loss, roc_auc, summary_metrics
from coupon_spark.model.network import build_model, export_weights, import_weights
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.model.spec import NONE_INDEX, UNKNOWN_INDEX, ModelSpec, hash_buckets
from coupon_spark.model.transform import (
    FeatureStatsError,
    FeatureTransform,
    MissingFeatureColumnsError,
)

HAND_STATS = [
    {"feature": "uf_x", "kind": "numeric", "transform": "standard", "center": 2.0, "scale": 4.0},
    {"feature": "uf_y", "kind": "numeric", "transform": "log1p_standard", "center": 1.0, "scale": 2.0},
    {"feature": "uc_r", "kind": "categorical", "transform": "onehot", "vocabulary": ["a", "b"]},
    {"feature": "cf_v", "kind": "numeric", "transform": "standard", "center": 10.0, "scale": 5.0},
    {"feature": "cc_k", "kind": "categorical", "transform": "onehot", "vocabulary": ["abs"]},
]


def test_feature_transform_by_hand():
    t = FeatureTransform.from_stats(HAND_STATS)
    assert t.user_columns == ["uc_r", "uf_x", "uf_y"] and t.coupon_columns == ["cc_k", "cf_v"]
    assert (t.user_dim, t.coupon_dim) == (5, 3)
    users = pd.DataFrame({"uf_x": [6.0, 2.0, -2.0], "uf_y": [math.e**3 - 1, -5.0, 0.0], "uc_r": ["b", "zzz", None]})
    # uc_r one-hot [a, b, OOV]; uf_x (x - 2) / 4; uf_y (log1p(max(x, 0)) - 1) / 2
    want = np.array([[0, 1, 0, 1.0, 1.0], [0, 0, 1, 0.0, -0.5], [0, 0, 1, -1.0, -0.5]], np.float32)
    np.testing.assert_allclose(t.user_matrix(users), want, atol=1e-6)
    coupons = pd.DataFrame({"cf_v": [20.0, 0.0], "cc_k": ["abs", "none"]})
    np.testing.assert_allclose(t.coupon_matrix(coupons), [[1, 0, 2.0], [0, 1, -2.0]], atol=1e-6)
    assert FeatureTransform.from_json(t.to_json()) == t
    with pytest.raises(MissingFeatureColumnsError, match="uf_y"):
        t.user_matrix(users.drop(columns=["uf_y"]))
    with pytest.raises(FeatureStatsError, match="quantile"):
        FeatureTransform.from_stats([{**HAND_STATS[0], "transform": "quantile"}])
    # broken statistics name the stage that rewrites them
    with pytest.raises(FeatureStatsError, match=r"uc_r.*no vocabulary: rerun `coupon-spark features`"):
        FeatureTransform.from_stats([{**HAND_STATS[2], "vocabulary": None}])
    with pytest.raises(FeatureStatsError, match=r"no user feature .*: run `coupon-spark features`"):
        FeatureTransform.from_stats(HAND_STATS[3:])


def test_coupon_index_and_stable_user_hash():
    spec = ModelSpec(user_dim=1, coupon_dim=1, coupon_ids=["c1", "c2"], user_id_buckets=1000)
    idx = spec.coupon_index(pd.Series(["c2", None, "c1", "new"]))
    assert idx.tolist() == [3, NONE_INDEX, 2, UNKNOWN_INDEX]
    b = spec.user_buckets(["u1", "u2", "u1"])
    assert b[0] == b[2] and 0 <= b.min() and b.max() < 1000
    # Pinned: scoring must find the buckets training used, in any process and any later run.
    assert hash_buckets(["u00001", "alice"], 2**20).tolist() == PINNED_BUCKETS
    assert hash_buckets(["x"], 0).tolist() == [0]


PINNED_BUCKETS = [108610, 891369]  # siphash-2-4 (pandas hash_array) with the key "coupon-spark-uid"


def test_validation_split_depends_on_the_id_only():
    ids = pd.Series([f"i{k}" for k in range(20000)])
    m = validation_mask(ids, 0.1, seed=3)
    assert abs(m.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(validation_mask(ids[::-1], 0.1, seed=3), m[::-1])  # order does not matter


def test_ipw_loss_by_hand():
    """Four rows; all weights zero so every logit is its bias: p(purchase) = 0.75 (none_bias = ln 3) and
    p(use) = 0.5. Propensities 0.5, 0.25, 1, 0.001 -> clipped at 0.01 -> raw weights 2, 4, 1, 100 with mean
    26.75. Per row: BCE(purchase) plus, for treated purchases only, BCE(redeem | purchase) = ln 2."""
    spec = ModelSpec(
        user_dim=2,
        coupon_dim=1,
        embedding_dim=3,
        hidden_units=[4],
        id_embedding_dim=2,
        user_id_buckets=5,
        coupon_ids=["c1"],
    )
    model = build_model(spec)
    weights = {k: np.zeros_like(v) for k, v in export_weights(model).items()}
    weights["none_bias"] = np.float32(math.log(3.0))
    import_weights(model, weights)
    prop = np.array([0.5, 0.25, 1.0, 0.001])
    raw = ipw_weights(prop, clip=0.01)
    np.testing.assert_allclose(raw, [2.0, 4.0, 1.0, 100.0])
    w = raw / raw.mean()
    ex = Examples(
        user_x=np.ones((4, 2), np.float32),
        user_bucket=np.array([0, 1, 2, 3]),
        coupon_x=np.ones((4, 1), np.float32),
        coupon_index=np.array([NONE_INDEX, 2, 2, 2]),
        pair_x=np.zeros((4, 0), np.float32),
        boot=np.ones((4, 1), np.float32),
        purchased=np.array([1.0, 1.0, 0.0, 1.0], np.float32),
        redeemed=np.array([0.0, 1.0, 0.0, 0.0], np.float32),
        propensity=prop,
        is_validation=np.zeros(4, bool),
    )
    loss = float(model.compute_loss(batch_tensors([ex], [w]), normalizer=4.0))
    lp1, lp0, lu = -math.log(0.75), -math.log(0.25), math.log(2.0)
    want = (2 * lp1 + 4 * (lp1 + lu) + 1 * lp0 + 100 * (lp1 + lu)) / 26.75 / 4
    assert loss == pytest.approx(want, rel=1e-6)


def test_metrics_by_hand():
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, p) == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs are ordered right
    assert log_loss(y, p) == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4)
    m = summary_metrics(binary_summary(y, p))
    assert m["auc"] == pytest.approx(0.75) and m["log_loss"] == pytest.approx(log_loss(y, p))
    # Two calibration bins: [0.1, 0.2): mean p 0.15 vs 1/2 observed; [0.8, 0.9): 0.85 vs 1; ECE = (0.7 + 0.3) / 4.
    c = summary_metrics(binary_summary(np.array([0, 1, 1, 1]), np.array([0.15, 0.15, 0.85, 0.85])))
    assert c["expected_calibration_error"] == pytest.approx(0.25)
    assert [(b["n"], b["observed_rate"]) for b in c["calibration"]] == [(2, 0.5), (2, 1.0)]
    # summaries of two halves add up to the summary of the whole (what the allreduce relies on)
    np.testing.assert_allclose(binary_summary(y[:2], p[:2]) + binary_summary(y[2:], p[2:]), binary_summary(y, p))


@pytest.mark.parametrize("buckets", [0, 7])
def test_numpy_forward_equals_tensorflow(buckets):
    t = FeatureTransform.from_stats(HAND_STATS)
    spec = ModelSpec(
        user_dim=t.user_dim,
        coupon_dim=t.coupon_dim,
        embedding_dim=4,
        hidden_units=[6, 5],
        id_embedding_dim=3,
        user_id_buckets=buckets,
        coupon_ids=["c1", "c2", "c3"],
    )
    model = build_model(spec, seed=4)
    rng = np.random.default_rng(0)
    import_weights(
        model, {k: rng.normal(size=v.shape).astype(np.float32) * 0.7 for k, v in export_weights(model).items()}
    )  # embeddings start at zero: randomise all
    scorer = NumpyScorer(spec, t, export_weights(model))
    users = pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(6)],
            "uf_x": rng.normal(size=6) * 4,
            "uf_y": rng.exponential(3, size=6),
            "uc_r": ["a", "b", "c", "a", "b", None],
        }
    )
    coupons = pd.DataFrame(
        {"coupon_id": ["c1", "c3", "zz", "c2"], "cf_v": [5.0, 10.0, 20.0, 7.5], "cc_k": ["abs", "pct", "abs", "abs"]}
    )
    u, c = scorer.user_embed(users), scorer.coupon_embed(coupons)
    got = scorer.predict(u, c)
    # TensorFlow on every (user, coupon) pair, and on (user, none)
    pairs = users.merge(coupons, how="cross")
    inputs = {
        "user_x": t.user_matrix(pairs),
        "user_bucket": spec.user_buckets(pairs["user_id"]),
        "coupon_x": t.coupon_matrix(pairs),
        "coupon_index": spec.coupon_index(pairs["coupon_id"]),
    }
    tf_out = {k: v.numpy() for k, v in model(inputs).items()}
    np.testing.assert_allclose(got["p_purchase"].ravel(), tf_out["p_purchase"], atol=1e-5)
    np.testing.assert_allclose(got["p_redeem"].ravel(), tf_out["p_redeem"], atol=1e-5)
    np.testing.assert_allclose(got["uplift"].ravel(), tf_out["uplift"], atol=1e-5)
    np.testing.assert_allclose(np.repeat(got["p_purchase_none"], len(coupons)), tf_out["p_purchase_none"], atol=1e-5)
    np.testing.assert_allclose(
        u, model.user_tower(t.user_matrix(users), spec.user_buckets(users["user_id"])).numpy(), atol=1e-5
    )
    assert got["p_purchase"].shape == (6, 4) and got["p_purchase_none"].shape == (6,)
    # row-wise, the control arm included
    inputs["coupon_index"] = np.where(np.arange(len(pairs)) % 3 == 0, NONE_INDEX, inputs["coupon_index"])
    rows, tf_rows = scorer.predict_rows(inputs), model(inputs)
    for k in ("p_purchase", "p_purchase_none", "p_redeem"):
        np.testing.assert_allclose(rows[k], tf_rows[k].numpy(), atol=1e-5)
    assert np.all(rows["p_redeem"][inputs["coupon_index"] == NONE_INDEX] == 0.0)
    np.testing.assert_allclose(
        rows["p_purchase"][inputs["coupon_index"] == NONE_INDEX],
        rows["p_purchase_none"][inputs["coupon_index"] == NONE_INDEX],
        atol=1e-7,
    )


def test_saved_model_serves_the_same_predictions(tmp_path):
    from coupon_spark.model.network import dummy_batch, export_saved_model

    spec = ModelSpec(
        user_dim=3,
        coupon_dim=2,
        embedding_dim=4,
        hidden_units=[5],
        id_embedding_dim=2,
        user_id_buckets=4,
        coupon_ids=["c1"],
    )
    model = build_model(spec, seed=1)
    export_saved_model(model, str(tmp_path / "sm"))
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    batch = dummy_batch(spec, 3)
    batch["user_x"] = np.arange(9, dtype=np.float32).reshape(3, 3) / 9
    out = serve(**{k: tf.constant(v) for k, v in batch.items()})
    np.testing.assert_allclose(out["p_purchase"].numpy(), model(batch)["p_purchase"].numpy(), atol=1e-6)


def test_id_l2_penalises_only_the_id_embeddings():
    """id_l2 adds id_l2 * (sum of squared id-embedding entries) to the loss, and nothing for other weights:
    with every id embedding entry set to 0.5 (5 user buckets x 2 + 4 coupon ids x 2 = 18 entries) the
    penalty is 0.1 * 18 * 0.25 = 0.45."""
    spec = ModelSpec(
        user_dim=2, coupon_dim=1, embedding_dim=3, hidden_units=[4], id_embedding_dim=2, user_id_buckets=5,
        coupon_ids=["c1"],
    )  # fmt: skip
    plain, shrunk = build_model(spec, seed=2), build_model(spec, seed=2, id_l2=0.1)
    weights = export_weights(plain)
    for name in weights:
        if "id_embedding" in name:
            weights[name] = np.full_like(weights[name], 0.5)
    import_weights(plain, weights)
    import_weights(shrunk, weights)
    n_entries = sum(v.size for k, v in weights.items() if "id_embedding" in k)
    assert n_entries == 5 * 2 + spec.n_coupon_ids * 2
    ex = Examples(
        user_x=np.ones((2, 2), np.float32),
        user_bucket=np.array([0, 1]),
        coupon_x=np.ones((2, 1), np.float32),
        coupon_index=np.array([NONE_INDEX, 2]),
        pair_x=np.zeros((2, 0), np.float32),
        boot=np.ones((2, 1), np.float32),
        purchased=np.array([1.0, 0.0], np.float32),
        redeemed=np.zeros(2, np.float32),
        propensity=np.array([0.5, 0.5]),
        is_validation=np.zeros(2, bool),
    )
    batch = batch_tensors([ex], [np.ones(2)])
    diff = float(shrunk.compute_loss(batch, normalizer=2.0)) - float(plain.compute_loss(batch, normalizer=2.0))
    assert diff == pytest.approx(0.1 * n_entries * 0.25, rel=1e-5)


def test_weight_average_is_the_debiased_moving_average_by_hand():
    """WeightAverage folds each update into ``a = d a + (1 - d) w`` with ``d = min(1 - 1/h, (1+t)/(10+t))``
    (worked out here in numpy), and swap_in / swap_out put the average in and the weights back."""
    from coupon_spark.model.loop import WeightAverage

    v = tf.Variable(np.zeros(3, np.float32))
    avg = WeightAverage([v], horizon_steps=4.0)
    rng = np.random.default_rng(0)
    a = np.zeros(3)
    step = tf.function(avg.update)
    for t in range(1, 30):
        w = rng.normal(size=3)
        v.assign(w.astype(np.float32))
        step()
        d = min(0.75, (1 + t) / (10 + t))
        a = d * a + (1 - d) * w
    last = v.numpy().copy()
    current = avg.swap_in()
    np.testing.assert_allclose(v.numpy(), a, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(current[0], last)
    avg.swap_out(current)
    np.testing.assert_array_equal(v.numpy(), last)
    off = WeightAverage([v], horizon_steps=0.0)
    off.update()
    off.swap_out(off.swap_in())
    np.testing.assert_array_equal(v.numpy(), last)  # off: the model keeps its last iterate


def test_early_stopping_and_batch_plan_by_hand():
    from coupon_spark.config import TrainConfig
    from coupon_spark.model.loop import BatchPlan, EarlyStopping, EmptyShardError, LocalComm

    stop = EarlyStopping(patience=2, min_delta=1e-4)
    seen = [(stop.update(e, loss), stop.stop) for e, loss in enumerate([1.0, 0.9, 0.89995, 0.95], start=1)]
    # 0.89995 is not better than 0.9 by more than 1e-4: the second epoch without improvement stops
    assert seen == [(True, False), (True, False), (False, False), (False, True)]
    assert (stop.best, stop.best_epoch) == (0.9, 2)

    class Shard:  # only the length matters to the plan
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

    cfg = TrainConfig(batch_size=512, learning_rate=0.002)
    plan = BatchPlan.of([Shard(1500), Shard(1300)], cfg, LocalComm())  # the smallest shard decides
    assert (plan.world, plan.local_batch, plan.steps, plan.global_batch) == (2, 512, 2, 1024)
    assert plan.learning_rate == pytest.approx(0.004)
    assert BatchPlan.of([Shard(100)], cfg, LocalComm()).local_batch == 100
    with pytest.raises(EmptyShardError):
        BatchPlan.of([Shard(0), Shard(10)], cfg, LocalComm())
