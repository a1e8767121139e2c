"""The two-tower uplift model in tf-keras (``TF_USE_LEGACY_KERAS=1``).

A user tower maps the transformed user features (and a hashed user-id embedding) to ``u`` in R^d; a coupon
tower maps the transformed coupon features and a coupon-id embedding to a treatment vector ``t_c`` (and a
redemption vector ``r_c`` with two biases). The "no coupon" arm is a learned vector ``v_none`` of the coupon
side, and coupon ``c`` sits at ``v_c = v_none + t_c`` in the same space::

    logit p(purchase | none) = <u, v_none> + b_none
    logit p(purchase | c)    = <u, v_c> + b_none + b_c          = logit p(purchase | none) + <u, t_c> + b_c
    p(redeem | c)            = p(purchase | c) * sigmoid(<u, r_c> + b_use_c)
    uplift(u, c)             = p(purchase | c) - p(purchase | none)

With pair features ``phi(u, c)`` (:mod:`coupon_spark.model.pair`: what the coupon is worth to this user) the
coupon tower also emits, per pair feature ``k``, a direction ``P_ck``, a bias ``a_ck`` and a weight ``q_ck``::

    logit p(purchase | c)   += sum_k phi_k * (<u, P_ck> + a_ck)      the user's response to the coupon's worth
    logit p(uses c | buys)  += sum_k phi_k * q_ck

Trained on logged, randomised issuances (the row's arm is ``coupon_index``; ``NONE_INDEX`` = control) with
inverse-propensity weights: every row counts ``w = 1 / clip(propensity)`` times (normalised to mean 1 over
the training set), so each arm is fitted on the population rather than on whom the logging policy favoured.

With ``spec.heads`` > 1 the model is an ensemble (:class:`EnsembleUpliftModel`): that many two-tower models
trained side by side on the same batches, each row weighted by its own Poisson(1) bootstrap draw per head (the
online bootstrap). Its estimates are the heads' means and their spread is what the decisions count against
(one model alone is unstable: on the 100k demo, five models of different seeds or folds earned -22% to +8% of
the oracle, their mean +21%).

The numpy twin of this forward pass is :class:`coupon_spark.model.scorer.NumpyScorer`; weights move between
the two through :func:`export_weights` / :func:`import_weights` with the names documented there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import tf_keras

from coupon_spark.model.spec import NONE_INDEX, ModelSpec

INPUT_KEYS = ("user_x", "user_bucket", "coupon_x", "coupon_index", "pair_x")
LABEL_KEYS = ("purchased", "redeemed", "weight", "boot")


class TwoTowerUpliftModel(tf_keras.Model):
    """User tower, coupon tower with a learned "no coupon" arm, purchase and redemption heads.

    Args:
        spec: Input widths, layer sizes and id vocabularies.
        l2: L2 penalty on every weight (added by :meth:`compute_loss`).
        id_l2: Additional L2 penalty on the id embeddings (per-id parameters shrunk toward the towers).
        seed: Seed of the initial weights (the same seed gives the same weights in every process).
    """

    def __init__(self, spec: ModelSpec, l2: float = 0.0, seed: int = 0, id_l2: float = 0.0, **kwargs: object):
        super().__init__(**kwargs)
        self.spec = spec
        self.l2 = float(l2)
        self.id_l2 = float(id_l2)
        d = spec.embedding_dim
        init = _Init(seed)
        self.user_id_embedding = (
            tf_keras.layers.Embedding(
                spec.user_id_buckets, spec.id_embedding_dim, embeddings_initializer="zeros", name="user_id_embedding"
            )
            if spec.user_id_buckets > 0
            else None
        )
        self.user_layers = [
            tf_keras.layers.Dense(h, activation="relu", kernel_initializer=init(), name=f"user_dense_{i}")
            for i, h in enumerate(spec.hidden_units)
        ] + [tf_keras.layers.Dense(d, kernel_initializer=init(), name=f"user_dense_{len(spec.hidden_units)}")]
        self.coupon_id_embedding = tf_keras.layers.Embedding(
            spec.n_coupon_ids, spec.id_embedding_dim, embeddings_initializer="zeros", name="coupon_id_embedding"
        )
        self.coupon_layers = [
            tf_keras.layers.Dense(h, activation="relu", kernel_initializer=init(), name=f"coupon_dense_{i}")
            for i, h in enumerate(spec.hidden_units)
        ] + [
            tf_keras.layers.Dense(
                spec.coupon_width, kernel_initializer=init(), name=f"coupon_dense_{len(spec.hidden_units)}"
            )
        ]
        self.none_vector = self.add_weight(name="none_vector", shape=(d,), initializer=init())
        self.none_bias = self.add_weight(name="none_bias", shape=(), initializer="zeros")

    # ---- towers -----------------------------------------------------------------------------------------
    def user_tower(self, user_x: tf.Tensor, user_bucket: tf.Tensor) -> tf.Tensor:
        """``u``: float32 ``[n, d]`` from transformed user features ``[n, user_dim]`` and hash buckets ``[n]``."""
        h = tf.convert_to_tensor(user_x, tf.float32)
        if self.user_id_embedding is not None:
            h = tf.concat([h, self.user_id_embedding(tf.cast(user_bucket, tf.int32))], axis=1)
        for layer in self.user_layers:
            h = layer(h)
        return h

    def coupon_tower(self, coupon_x: tf.Tensor, coupon_index: tf.Tensor) -> dict[str, tf.Tensor]:
        """The coupon side for coupon indices ``[n]`` (``NONE_INDEX`` rows: zero treatment, zero redemption).

        Returns:
            ``v`` (``v_none + t_c``, ``[n, d]``), ``t`` (``[n, d]``), ``r`` (``[n, d]``), ``b`` (``[n]``,
            purchase bias of the coupon), ``b_use`` (``[n]``) and, with pair features, ``P`` (``[n, p, d]``),
            ``a`` and ``q`` (``[n, p]``).
        """
        idx = tf.cast(coupon_index, tf.int32)
        h = tf.concat([tf.convert_to_tensor(coupon_x, tf.float32), self.coupon_id_embedding(idx)], axis=1)
        for layer in self.coupon_layers:
            h = layer(h)
        d = self.spec.embedding_dim
        treated = tf.cast(tf.not_equal(idx, NONE_INDEX), tf.float32)
        t = h[:, :d] * treated[:, None]
        out = {
            "v": self.none_vector[None, :] + t,
            "t": t,
            "r": h[:, d : 2 * d] * treated[:, None],
            "b": h[:, 2 * d] * treated,
            "b_use": h[:, 2 * d + 1] * treated,
        }
        p = self.spec.pair_dim
        if p:
            o = 2 * d + 2
            out["P"] = tf.reshape(h[:, o : o + p * d], (-1, p, d))
            out["a"] = h[:, o + p * d : o + p * d + p]
            out["q"] = h[:, o + p * d + p : o + p * d + 2 * p]
        return out

    # ---- the small surface: call and compute_loss ---------------------------------------------------------
    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """Predictions for each row's own arm (its ``coupon_index``; ``NONE_INDEX``: no coupon).

        Args:
            inputs: ``user_x`` ``[n, user_dim]``, ``user_bucket`` ``[n]``, ``coupon_x`` ``[n, coupon_dim]``,
                ``coupon_index`` ``[n]`` and, when ``spec.pair_dim`` > 0, ``pair_x`` ``[n, pair_dim]`` (0 on
                control rows).
            training: Unused (no dropout); part of the Keras signature.

        Returns:
            ``logit_purchase``, ``logit_purchase_none``, ``logit_use``, ``p_purchase`` (under the row's arm),
            ``p_purchase_none``, ``p_redeem`` (0 for the control arm), ``uplift``; each ``[n]``.
        """
        u = self.user_tower(inputs["user_x"], inputs["user_bucket"])
        c = self.coupon_tower(inputs["coupon_x"], inputs["coupon_index"])
        logit_none = tf.reduce_sum(u * self.none_vector[None, :], axis=1) + self.none_bias
        logit = tf.reduce_sum(u * c["v"], axis=1) + self.none_bias + c["b"]
        logit_use = tf.reduce_sum(u * c["r"], axis=1) + c["b_use"]
        if self.spec.pair_dim:
            phi = tf.convert_to_tensor(inputs["pair_x"], tf.float32)
            logit = logit + tf.reduce_sum(phi * (tf.einsum("nd,npd->np", u, c["P"]) + c["a"]), axis=1)
            logit_use = logit_use + tf.reduce_sum(phi * c["q"], axis=1)
        treated = tf.cast(tf.not_equal(tf.cast(inputs["coupon_index"], tf.int32), NONE_INDEX), tf.float32)
        p = tf.sigmoid(logit)
        p_none = tf.sigmoid(logit_none)
        return {
            "logit_purchase": logit,
            "logit_purchase_none": logit_none,
            "logit_use": logit_use,
            "p_purchase": p,
            "p_purchase_none": p_none,
            "p_redeem": p * tf.sigmoid(logit_use) * treated,
            "uplift": p - p_none,
        }

    def compute_loss(  # type: ignore[override]
        self, batch: Mapping[str, tf.Tensor], normalizer: float, l2_share: float = 1.0, training: bool = True
    ) -> tf.Tensor:
        """Inverse-propensity-weighted log loss of the batch, summed and divided by ``normalizer``.

        Per row: ``w * (BCE(purchased, p_purchase) + treated * purchased * BCE(redeemed, p_use))``: the
        purchase head learns from every arm, the redemption head only from purchases made with a coupon
        (``p_redeem = p_purchase * p_use``). The sum over the batch is divided by ``normalizer``: the GLOBAL
        batch size when replicas sum their gradients, so that the summed gradient of all replicas is the
        gradient of one replica on the whole global batch.

        Args:
            batch: The inputs of :meth:`call` plus ``purchased``, ``redeemed`` (0/1) and ``weight``.
            normalizer: Divides the weighted sum (the global batch size).
            l2_share: Share of the L2 penalty this replica adds (``1 / replicas`` when gradients are summed).
            training: Passed to :meth:`call`.

        Returns:
            A scalar float32 tensor.
        """
        out = self(batch, training=training)
        y = tf.cast(batch["purchased"], tf.float32)
        r = tf.cast(batch["redeemed"], tf.float32)
        w = tf.cast(batch["weight"], tf.float32)
        treated = tf.cast(tf.not_equal(tf.cast(batch["coupon_index"], tf.int32), NONE_INDEX), tf.float32)
        bce_purchase = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=out["logit_purchase"])
        bce_use = tf.nn.sigmoid_cross_entropy_with_logits(labels=r, logits=out["logit_use"])
        per_row = w * (bce_purchase + treated * y * bce_use)
        loss = tf.reduce_sum(per_row) / tf.cast(normalizer, tf.float32)
        if self.l2 > 0.0:
            penalty = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.trainable_variables])
            loss = loss + self.l2 * l2_share * penalty
        if self.id_l2 > 0.0:
            ids = [e.embeddings for e in (self.user_id_embedding, self.coupon_id_embedding) if e is not None]
            loss = loss + self.id_l2 * l2_share * tf.add_n([tf.reduce_sum(tf.square(v)) for v in ids])
        return loss

    def build_all(self) -> None:
        """Create every variable by running the model once on a two-row dummy batch."""
        self(dummy_batch(self.spec))


class EnsembleUpliftModel(tf_keras.Model):
    """``spec.heads`` :class:`TwoTowerUpliftModel` heads (seeds ``seed * 1000 + b``) trained on bootstrap weights.

    :meth:`call` returns the heads' mean probabilities (the uplift is the mean ``p`` less the mean ``p_none``);
    :meth:`compute_loss` sums the heads' losses, head ``b`` weighting each row by ``weight * boot[:, b]`` when
    training and by ``weight`` alone (averaged over heads) when not.
    """

    def __init__(self, spec: ModelSpec, l2: float = 0.0, seed: int = 0, id_l2: float = 0.0, **kwargs: object):
        super().__init__(**kwargs)
        self.spec = spec
        self.heads = [
            TwoTowerUpliftModel(spec, l2=l2, seed=seed * 1000 + b, id_l2=id_l2, name=f"head_{b}")
            for b in range(spec.heads)
        ]

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        outs = [h(inputs, training=training) for h in self.heads]
        mean = {k: tf.add_n([o[k] for o in outs]) / len(outs) for k in ("p_purchase", "p_purchase_none", "p_redeem")}
        return mean | {"uplift": mean["p_purchase"] - mean["p_purchase_none"]}

    def compute_loss(  # type: ignore[override]
        self, batch: Mapping[str, tf.Tensor], normalizer: float, l2_share: float = 1.0, training: bool = True
    ) -> tf.Tensor:
        boot = tf.cast(batch["boot"], tf.float32)
        losses = []
        for b, head in enumerate(self.heads):
            w = batch["weight"] * boot[:, b] if training else batch["weight"]
            losses.append(head.compute_loss({**batch, "weight": w}, normalizer, l2_share, training))
        total = tf.add_n(losses)
        return total if training else total / len(self.heads)

    def build_all(self) -> None:
        self(dummy_batch(self.spec))


class _Init:
    """Glorot-uniform initialisers with distinct, reproducible seeds."""

    def __init__(self, seed: int):
        self.seed = seed
        self.count = 0

    def __call__(self) -> tf_keras.initializers.Initializer:
        self.count += 1
        return tf_keras.initializers.GlorotUniform(seed=self.seed * 1000 + self.count)


def dummy_batch(spec: ModelSpec, n: int = 2) -> dict[str, np.ndarray]:
    """A batch of ``n`` zero rows (one control, the rest unknown coupons) with the model's input shapes."""
    return {
        "user_x": np.zeros((n, spec.user_dim), np.float32),
        "user_bucket": np.zeros(n, np.int64),
        "coupon_x": np.zeros((n, spec.coupon_dim), np.float32),
        "coupon_index": np.array([NONE_INDEX] + [1] * (n - 1), np.int64),
        "pair_x": np.zeros((n, spec.pair_dim), np.float32),
    }


def export_weights(model: TwoTowerUpliftModel | EnsembleUpliftModel) -> dict[str, np.ndarray]:
    """The model's weights as named numpy arrays (float32).

    Names: ``user_id_embedding`` (when hashed user ids are used), ``user_dense_<i>_kernel`` /
    ``user_dense_<i>_bias`` for i = 0..len(hidden_units) (the last is the linear output layer), likewise
    ``coupon_id_embedding`` and ``coupon_dense_<i>_*`` (output width ``spec.coupon_width``: ``t``, ``r``, ``b``,
    ``b_use``, then ``P``, ``a``, ``q`` of the pair features),
    ``none_vector`` (``[d]``) and ``none_bias`` (scalar). An ensemble's: each head's under ``head<b>/``.
    """
    if isinstance(model, EnsembleUpliftModel):
        return {f"head{b}/{k}": v for b, h in enumerate(model.heads) for k, v in export_weights(h).items()}
    out: dict[str, np.ndarray] = {}
    if model.user_id_embedding is not None:
        out["user_id_embedding"] = model.user_id_embedding.embeddings.numpy()
    for i, layer in enumerate(model.user_layers):
        out[f"user_dense_{i}_kernel"], out[f"user_dense_{i}_bias"] = (w.numpy() for w in (layer.kernel, layer.bias))
    out["coupon_id_embedding"] = model.coupon_id_embedding.embeddings.numpy()
    for i, layer in enumerate(model.coupon_layers):
        out[f"coupon_dense_{i}_kernel"], out[f"coupon_dense_{i}_bias"] = (w.numpy() for w in (layer.kernel, layer.bias))
    out["none_vector"] = model.none_vector.numpy()
    out["none_bias"] = np.asarray(model.none_bias.numpy())
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def import_weights(model: TwoTowerUpliftModel | EnsembleUpliftModel, weights: Mapping[str, np.ndarray]) -> None:
    """Assign named weights (as :func:`export_weights` names them) to a built model."""
    if isinstance(model, EnsembleUpliftModel):
        for b, h in enumerate(model.heads):
            p = f"head{b}/"
            import_weights(h, {k[len(p) :]: v for k, v in weights.items() if k.startswith(p)})
        return
    if model.user_id_embedding is not None:
        model.user_id_embedding.embeddings.assign(weights["user_id_embedding"])
    for prefix, layers in (("user", model.user_layers), ("coupon", model.coupon_layers)):
        for i, layer in enumerate(layers):
            layer.kernel.assign(weights[f"{prefix}_dense_{i}_kernel"])
            layer.bias.assign(weights[f"{prefix}_dense_{i}_bias"])
    model.coupon_id_embedding.embeddings.assign(weights["coupon_id_embedding"])
    model.none_vector.assign(weights["none_vector"])
    model.none_bias.assign(weights["none_bias"])


def build_model(
    spec: ModelSpec,
    l2: float = 0.0,
    seed: int = 0,
    weights: Mapping[str, np.ndarray] | None = None,
    id_l2: float = 0.0,
) -> TwoTowerUpliftModel | EnsembleUpliftModel:
    """A built model with seeded initial weights, or with ``weights`` when given (an ensemble when
    ``spec.heads`` > 1)."""
    model: TwoTowerUpliftModel | EnsembleUpliftModel = (
        EnsembleUpliftModel(spec, l2=l2, seed=seed, id_l2=id_l2)
        if spec.heads > 1
        else TwoTowerUpliftModel(spec, l2=l2, seed=seed, id_l2=id_l2)
    )
    model.build_all()
    if weights is not None:
        import_weights(model, weights)
    return model


def export_saved_model(model: TwoTowerUpliftModel | EnsembleUpliftModel, path: str) -> None:
    """Save a TensorFlow SavedModel whose ``serving_default`` signature takes the five inputs of :meth:`call`
    (transformed features, hash buckets, coupon indices, pair features) and returns its outputs."""
    spec = model.spec

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, spec.user_dim], tf.float32, name="user_x"),
            tf.TensorSpec([None], tf.int64, name="user_bucket"),
            tf.TensorSpec([None, spec.coupon_dim], tf.float32, name="coupon_x"),
            tf.TensorSpec([None], tf.int64, name="coupon_index"),
            tf.TensorSpec([None, spec.pair_dim], tf.float32, name="pair_x"),
        ]
    )
    def serve(
        user_x: tf.Tensor, user_bucket: tf.Tensor, coupon_x: tf.Tensor, coupon_index: tf.Tensor, pair_x: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        inputs = {"user_x": user_x, "user_bucket": user_bucket, "coupon_x": coupon_x, "coupon_index": coupon_index}
        return model(inputs | {"pair_x": pair_x})

    tf.saved_model.save(model, path, signatures={"serving_default": serve})
