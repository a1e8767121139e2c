"""Pair features (what a coupon is worth to one user) by hand, and the model with them: numpy against TensorFlow."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pandas as pd
import pytest

from coupon_spark.model.data import bootstrap_weights
from coupon_spark.model.network import build_model, export_weights, import_weights
from coupon_spark.model.pair import PAIR_FEATURES, basket_of, pair_matrix, pair_rows
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.model.spec import NONE_INDEX, ModelSpec
from coupon_spark.model.transform import FeatureTransform

USERS = pd.DataFrame(
    {
        "user_id": ["u0", "u1", "u2"],
        # u0: a year's basket; u1: only a 90-day one; u2: never bought (the default basket, 40)
        "uf_hist_basket": [50.0, 0.0, 0.0],
        "uf_avg_basket_90d": [70.0, 10.0, 0.0],
        "uf_share_fashion": [0.3, 0.0, 0.0],
    }
)
COUPONS = pd.DataFrame(
    {
        "coupon_id": ["c1", "c2", "c3"],
        "cf_face_value": [5.0, 10.0, 4.95],
        "cf_min_spend": [25.0, 100.0, 0.0],
        "cc_category": ["all", "fashion", "books"],  # books: no share column, not known to be avoided
    }
)


def test_pair_features_by_hand() -> None:
    np.testing.assert_allclose(basket_of(USERS, 40.0), [50.0, 10.0, 40.0])
    got = pair_matrix(USERS, COUPONS, 40.0)
    assert got.shape == (3, 3, len(PAIR_FEATURES)) and got.dtype == np.float32
    # rel value = face / max(basket, min spend, 1); min-spend ratio = min(4, min spend / basket); scope share
    want = np.array(
        [
            [[5 / 50, 25 / 50, 1.0], [10 / 100, 100 / 50, 0.3], [4.95 / 50, 0.0, 1.0]],
            [[5 / 25, 2.5, 1.0], [10 / 100, 4.0, 0.0], [4.95 / 10, 0.0, 1.0]],
            [[5 / 40, 25 / 40, 1.0], [10 / 100, 2.5, 0.0], [4.95 / 40, 0.0, 1.0]],
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # row-wise (training examples: user and coupon columns side by side) is the same; the control arm is 0
    rows = USERS.merge(COUPONS, how="cross")
    rows.loc[4, "coupon_id"] = None
    by_row = pair_rows(rows, 40.0)
    want_rows = want.reshape(-1, len(PAIR_FEATURES)).copy()
    want_rows[4] = 0.0
    np.testing.assert_allclose(by_row, want_rows, rtol=1e-6)


@pytest.mark.parametrize("heads", [1, 3])
def test_numpy_scorer_matches_tensorflow_with_pair_features(heads: int) -> None:
    stats = [
        {"feature": "uf_x", "kind": "numeric", "transform": "standard", "center": 0.0, "scale": 1.0},
        {"feature": "cf_face_value", "kind": "numeric", "transform": "standard", "center": 5.0, "scale": 5.0},
    ]
    t = FeatureTransform.from_stats(stats)
    spec = ModelSpec(
        user_dim=t.user_dim,
        coupon_dim=t.coupon_dim,
        embedding_dim=4,
        hidden_units=[5],
        id_embedding_dim=2,
        coupon_ids=["c1", "c2"],
        pair_dim=len(PAIR_FEATURES),
        default_basket_eur=40.0,
        heads=heads,
    )
    model = build_model(spec, seed=2)
    rng = np.random.default_rng(1)
    weights = {k: rng.normal(size=v.shape).astype(np.float32) * 0.6 for k, v in export_weights(model).items()}
    import_weights(model, weights)
    scorer = NumpyScorer(spec, t, export_weights(model))
    users = USERS.assign(uf_x=[0.5, -1.0, 2.0])
    got = scorer.score_frames(users, COUPONS)
    pairs = users.merge(COUPONS, how="cross")
    inputs = {
        "user_x": t.user_matrix(pairs),
        "user_bucket": spec.user_buckets(pairs["user_id"]),
        "coupon_x": t.coupon_matrix(pairs),
        "coupon_index": spec.coupon_index(pairs["coupon_id"]),
        "pair_x": pair_rows(pairs, 40.0),
    }
    tf_out = {k: v.numpy() for k, v in model(inputs).items()}
    for k in ("p_purchase", "p_redeem", "uplift"):
        np.testing.assert_allclose(got[k].ravel(), tf_out[k], atol=1e-5)
    # the pair term moves the estimate: the same model without it scores differently
    no_pair = scorer.predict(scorer.user_embed(users), scorer.coupon_embed(COUPONS), np.zeros((3, 3, 3), np.float32))
    assert np.abs(no_pair["p_purchase"] - got["p_purchase"]).max() > 1e-3
    # row-wise with control rows (their pair features are 0 by construction)
    inputs["coupon_index"] = np.where(np.arange(len(pairs)) % 2 == 0, NONE_INDEX, inputs["coupon_index"])
    inputs["pair_x"] = inputs["pair_x"] * (inputs["coupon_index"] != NONE_INDEX)[:, None]
    rows, tf_rows = scorer.predict_rows(inputs), model(inputs)
    for k in ("p_purchase", "p_purchase_none", "p_redeem"):
        np.testing.assert_allclose(rows[k], tf_rows[k].numpy(), atol=1e-5)
    # an ensemble's estimate is its heads' mean, its spread their standard deviation
    value, cost = np.full((3, 1), 12.0), COUPONS["cf_face_value"].to_numpy()
    spread = scorer.profit_spread(users, COUPONS, value, cost)
    if heads == 1:
        assert spread is None
    else:
        per_head = [h.score_frames(users, COUPONS) for h in scorer.heads]
        np.testing.assert_allclose(got["p_purchase"], np.mean([o["p_purchase"] for o in per_head], axis=0), atol=1e-6)
        profits = [o["uplift"] * value - o["p_redeem"] * cost[None, :] for o in per_head]
        np.testing.assert_allclose(spread, np.std(profits, axis=0, ddof=1), rtol=1e-4, atol=1e-6)
        # the score job's one-pass kernel: the same mean and the mean profit less z sd
        out, lowered = scorer.score_profit(users, COUPONS, None, value[:, 0], cost, z=0.7)
        np.testing.assert_allclose(out["uplift"], got["uplift"], atol=1e-6)
        want = np.mean(profits, axis=0) - 0.7 * np.std(profits, axis=0, ddof=1)
        np.testing.assert_allclose(lowered, want, rtol=1e-4, atol=1e-5)


def tiny_ensembles(seed: int) -> tuple[FeatureTransform, ModelSpec, list[dict[str, np.ndarray]]]:
    """A one-feature transform, a 2-head spec, and three random weight sets of it (a published model and two
    fold models)."""
    stats = [{"feature": "uf_x", "kind": "numeric", "transform": "standard", "center": 0.0, "scale": 1.0}]
    t = FeatureTransform.from_stats(stats)
    spec = ModelSpec(user_dim=t.user_dim, coupon_dim=t.coupon_dim, embedding_dim=3, hidden_units=[4],
                     id_embedding_dim=2, coupon_ids=["c1", "c2"], heads=2)  # fmt: skip
    rng = np.random.default_rng(seed)
    shapes = {k: v.shape for k, v in export_weights(build_model(spec, seed=0)).items()}
    return t, spec, [{k: rng.normal(size=v).astype(np.float32) * 0.6 for k, v in shapes.items()} for _ in range(3)]


def test_a_loaded_version_pools_its_fold_models_heads(tmp_path) -> None:
    """``NumpyScorer.load``: the fold models' heads join the published model's (``score.pool_fold_models``); the
    estimate is the mean over every head of every model, the spread their sd; without pooling the published
    heads alone."""
    t, spec, models = tiny_ensembles(seed=4)
    np.savez(tmp_path / "weights.npz", **models[0])
    np.savez(tmp_path / "fold_weights.npz", **{f"{m}/{k}": a for m, w in enumerate(models[1:]) for k, a in w.items()})
    (tmp_path / "spec.json").write_text(spec.to_json())
    (tmp_path / "transform.json").write_text(t.to_json())
    users = USERS.assign(uf_x=[0.5, -1.0, 2.0])
    value, cost = np.full(3, 12.0), COUPONS["cf_face_value"].to_numpy()
    # a second method: each model's own heads, scored apart
    per_head = [h.score_frames(users, COUPONS) for w in models for h in NumpyScorer(spec, t, w).heads]
    profits = np.stack([o["uplift"] * value[:, None] - o["p_redeem"] * cost[None, :] for o in per_head])
    pooled = NumpyScorer.load(tmp_path)
    assert len(pooled.heads) == 6 and len(pooled.members) == 2
    out, lowered = pooled.score_profit(users, COUPONS, pooled.coupon_embed(COUPONS), value, cost, z=1.0)
    np.testing.assert_allclose(out["p_purchase"], np.mean([o["p_purchase"] for o in per_head], axis=0), atol=1e-6)
    np.testing.assert_allclose(lowered, profits.mean(0) - profits.std(0, ddof=1), rtol=1e-4, atol=1e-5)
    alone = NumpyScorer.load(tmp_path, pool_members=False)
    assert len(alone.heads) == 2
    np.testing.assert_allclose(
        alone.score_frames(users, COUPONS)["p_purchase"],
        np.mean([o["p_purchase"] for o in per_head[:2]], axis=0),
        atol=1e-6,
    )


def test_bootstrap_weights_are_poisson_and_stable() -> None:
    ids = pd.Series([f"I{i}" for i in range(40_000)])
    w = bootstrap_weights(ids, 4, seed=3)
    assert w.shape == (40_000, 4) and w.dtype == np.float32
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.02)  # Poisson(1): mean 1, variance 1, P(0) = 1/e
    np.testing.assert_allclose(w.var(axis=0), 1.0, atol=0.04)
    np.testing.assert_allclose((w == 0).mean(axis=0), np.exp(-1), atol=0.01)
    assert abs(np.corrcoef(w[:, 0], w[:, 1])[0, 1]) < 0.03  # heads resample independently
    np.testing.assert_array_equal(bootstrap_weights(ids[::-1], 4, seed=3), w[::-1])  # whatever the order
    np.testing.assert_array_equal(bootstrap_weights(ids, 1, seed=3), np.ones((40_000, 1)))


def test_ensemble_loss_sums_the_heads_on_their_bootstrap_weights() -> None:
    spec = ModelSpec(user_dim=2, coupon_dim=1, embedding_dim=3, hidden_units=[4], coupon_ids=["c1"], heads=2)
    model = build_model(spec, seed=1)
    rng = np.random.default_rng(0)
    n = 6
    batch = {
        "user_x": rng.normal(size=(n, 2)).astype(np.float32),
        "user_bucket": np.zeros(n, np.int64),
        "coupon_x": rng.normal(size=(n, 1)).astype(np.float32),
        "coupon_index": np.array([0, 2, 2, 0, 2, 2]),
        "pair_x": np.zeros((n, 0), np.float32),
        "purchased": np.array([1, 0, 1, 0, 1, 1], np.float32),
        "redeemed": np.array([0, 0, 1, 0, 0, 1], np.float32),
        "weight": np.ones(n, np.float32),
        "boot": np.array([[1, 0], [2, 1], [0, 1], [1, 3], [1, 1], [0, 0]], np.float32),
    }
    total = float(model.compute_loss(batch, normalizer=n))
    want = sum(
        float(h.compute_loss({**batch, "weight": batch["boot"][:, b]}, normalizer=n)) for b, h in enumerate(model.heads)
    )
    assert abs(total - want) < 1e-6
    # evaluation: each row once, the heads' mean
    plain = np.mean([float(h.compute_loss(batch, normalizer=n, training=False)) for h in model.heads])
    assert abs(float(model.compute_loss(batch, normalizer=n, training=False)) - plain) < 1e-6


def test_out_of_bag_heads_per_row_by_a_second_method(tmp_path) -> None:
    """``score_profit`` with a head mask: each user's mean and sd over its own heads, checked row by row against
    the heads scored apart; an all-true mask is the plain pool; the gate's mask holds out what trained on a row."""
    from coupon_spark.model.data import bootstrap_weights
    from coupon_spark.model.gate import oob_head_mask

    t, spec, w = tiny_ensembles(seed=8)
    pooled = NumpyScorer(spec, t, w[0], members=[NumpyScorer(spec, t, x) for x in w[1:]]).pooled()
    users = USERS.assign(uf_x=[0.5, -1.0, 2.0])
    value, cost = np.array([12.0, 30.0, 8.0]), COUPONS["cf_face_value"].to_numpy()
    per_head = [h.score_frames(users, COUPONS) for h in pooled.heads]
    profits = np.stack([o["uplift"] * value[:, None] - o["p_redeem"] * cost[None, :] for o in per_head])
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], bool)  # [6 heads, 3 users]
    out, lowered = pooled.score_profit(users, COUPONS, None, value, cost, z=0.5, head_mask=mask)
    for i in range(3):
        mine = profits[mask[:, i], i]
        np.testing.assert_allclose(lowered[i], mine.mean(0) - 0.5 * mine.std(0, ddof=1), rtol=1e-4, atol=1e-5)
        want = np.mean([per_head[h]["p_purchase_none"][i] for h in np.flatnonzero(mask[:, i])])
        assert out["p_purchase_none"][i] == pytest.approx(want, rel=1e-5)
    _, everything = pooled.score_profit(users, COUPONS, None, value, cost, z=0.5, head_mask=np.ones((6, 3), bool))
    _, plain = pooled.score_profit(users, COUPONS, None, value, cost, z=0.5)
    np.testing.assert_allclose(everything, plain, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="at least one head"):
        pooled.score_profit(users, COUPONS, None, value, cost, head_mask=np.zeros((6, 3), bool))
    # the gate's mask: heads 0-1 published, 2-3 fold model 0, 4-5 fold model 1
    ids = pd.Series([f"i{k}" for k in range(400)])
    fold = np.arange(400) % 2
    m = oob_head_mask(ids, fold, heads=2, folds=2, seed=3)
    zero = bootstrap_weights(ids, 2, 3) == 0
    assert m.shape == (6, 400)
    np.testing.assert_array_equal(m[0:2], zero.T)  # the published heads: where the bootstrap left the row out
    np.testing.assert_array_equal(m[2:4], zero.T | (fold == 0)[None, :])  # fold model 0 never saw fold 0
    np.testing.assert_array_equal(m[4:6], zero.T | (fold == 1)[None, :])
    assert m.sum(0).min() >= 2 and 0.3 < zero.mean() < 0.45  # Poisson(1) leaves e^-1 = 37% out


def test_the_gate_scores_all_its_chunks_in_one_pass_bit_for_bit_as_chunk_by_chunk() -> None:
    """The gate scores every row at once and splits the rows into its chunks afterwards (the per-date work once,
    not once per chunk): the scores and gains, put in chunk order, are the same bits as scoring each chunk apart
    (what it did before), and each row with a live coupon comes back once. (Every chunk and date here holds many
    rows: a row alone in its chunk and date was multiplied by numpy's one-row routine, which may round otherwise.)"""
    import datetime as dt

    from coupon_spark.config import ScoreConfig
    from coupon_spark.model.gate import best_option_gains, chunk_ids, fold_ids, oob_head_mask

    t, spec, w = tiny_ensembles(seed=11)
    pooled = NumpyScorer(spec, t, w[0], members=[NumpyScorer(spec, t, x) for x in w[1:]]).pooled()
    rng, n = np.random.default_rng(5), 3000
    days = [dt.date(2026, 10, d) for d in (3, 4, 5, 6)]
    coupons = pd.DataFrame(
        {"coupon_id": ["c2", "c1"], "campaign_id": ["k", "k"], "cf_cost": [2.0, 1.0], "cf_min_spend": [0.0, 30.0]}
    )
    logged = rng.choice(np.array(["c1", "c2", None], dtype=object), n)
    bought = rng.random(n) < 0.3
    rows = pd.DataFrame(
        {
            "issuance_id": [f"i{k}" for k in range(n)],
            "issue_date": [days[k] for k in rng.integers(0, 4, n)],
            "user_id": [f"u{k % 700}" for k in range(n)],
            "coupon_id": logged,
            "propensity": np.full(n, 1 / 3),
            "revenue_eur": np.where(bought, rng.exponential(30.0, n), 0.0),
            "coupon_cost_eur": np.where(bought & pd.notna(logged), 1.5, 0.0),
            "uf_x": rng.normal(size=n),
            "uf_avg_basket_90d": rng.exponential(50.0, n),
        }
    )
    by_date = {d: coupons for d in days[:3]}  # no coupon is live on the fourth day: its rows are no decisions
    fold, chunk = fold_ids(rows["issuance_id"], 2, seed=3), chunk_ids(rows["issuance_id"], 5, seed=3)
    mask = oob_head_mask(rows["issuance_id"], fold, spec.heads, 2, seed=3)
    cfg = ScoreConfig(margin_rate=0.3, uncertainty_z=0.25, frequency_cap=10**9)
    apart = [best_option_gains(pooled, rows[chunk == p], by_date, cfg, None, mask[:, chunk == p]) for p in range(5)]
    s, g, at = best_option_gains(pooled, rows, by_date, cfg, None, mask)
    order = np.argsort(chunk[at], kind="stable")
    np.testing.assert_array_equal(s[order], np.concatenate([a[0] for a in apart]))
    np.testing.assert_array_equal(g[order], np.concatenate([a[1] for a in apart]))
    np.testing.assert_array_equal(np.sort(at), np.flatnonzero((rows["issue_date"] != days[3]).to_numpy()))
    assert len(s) > 2000 and np.isfinite(g).all()
    # the pool transforms the users once for all its heads: the same bits as each head on its own
    users = rows.head(50)
    apart_heads = np.concatenate([h.user_embed(users) for h in pooled.heads], axis=1)
    np.testing.assert_array_equal(pooled.user_embed(users), apart_heads)
    # ... which holds only for members of the same transformation: another one is refused, not mixed in
    t2 = FeatureTransform.from_stats(
        [{"feature": "uf_x", "kind": "numeric", "transform": "standard", "center": 1.0, "scale": 2.0}]
    )
    with pytest.raises(ValueError, match="another architecture or feature transformation"):
        NumpyScorer(spec, t, w[0], members=[NumpyScorer(spec, t2, w[1])]).pooled()
