"""The model's forward pass in numpy: what the scoring pandas UDF runs, with weights broadcast once per task.

It reproduces :class:`coupon_spark.model.network.TwoTowerUpliftModel` (to 1e-5) without TensorFlow. Users and
coupons are embedded separately, then every user is scored against every coupon with two matrix products:

    >>> scorer = NumpyScorer.load(model_dir)                   # or NumpyScorer(spec, transform, weights)
    >>> u = scorer.user_embed(users_pdf)                       # [n_users, d]: user_id + uf_*/uc_* columns
    >>> c = scorer.coupon_embed(coupons_pdf)                   # [n_coupons, coupon_width]: coupon_id + cf_*/cc_*
    >>> out = scorer.predict(u, c, scorer.pair_x(users_pdf, coupons_pdf))   # pair features: None if pair_dim 0
    >>> out["p_purchase"].shape, out["p_purchase_none"].shape  # (n_users, n_coupons), (n_users,)

:meth:`NumpyScorer.score_frames` does the three steps from the raw frames.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from coupon_spark.model.gate import DECISION_FILE, NO_GATE, Gate
from coupon_spark.model.pair import pair_matrix
from coupon_spark.model.spec import ModelSpec
from coupon_spark.model.transform import FeatureTransform

WEIGHTS_FILE = "weights.npz"
FOLD_WEIGHTS_FILE = "fold_weights.npz"
"""The decision gate's K fold models (keys ``<k>/<weight name>``): the ensemble whose disagreement measures how
uncertain each estimate is."""
SPEC_FILE = "spec.json"
TRANSFORM_FILE = "transform.json"


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, numerically stable (``0.5 * (1 + tanh(x / 2))``: one ufunc pass, no overflow), in the
    input's dtype."""
    x = np.asarray(x)
    out = np.multiply(x, 0.5, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


@dataclasses.dataclass(frozen=True)
class Version:
    """What a model version folder holds (:func:`read_version`)."""

    spec: ModelSpec
    transform: FeatureTransform
    weights: dict[str, np.ndarray]
    fold_weights: list[dict[str, np.ndarray]]
    gate: Gate


def read_version(model_dir: str | Path) -> Version:
    """A version folder of the registry (a local path): spec, transform, published weights, the gate's fold
    models (``fold_weights.npz``, keys ``<fold>/<name>``; none when absent) and its gate (``NO_GATE`` when
    absent)."""
    d = Path(model_dir)
    with np.load(d / WEIGHTS_FILE) as npz:
        weights = {k: npz[k] for k in npz.files}
    fold_weights: list[dict[str, np.ndarray]] = []
    if (d / FOLD_WEIGHTS_FILE).exists():
        with np.load(d / FOLD_WEIGHTS_FILE) as npz:
            by_fold: dict[str, dict[str, np.ndarray]] = {}
            for k in npz.files:
                fold, name = k.split("/", 1)
                by_fold.setdefault(fold, {})[name] = npz[k]
            fold_weights = [by_fold[f] for f in sorted(by_fold, key=int)]
    decision = d / DECISION_FILE
    return Version(
        spec=ModelSpec.from_json((d / SPEC_FILE).read_text()),
        transform=FeatureTransform.from_json((d / TRANSFORM_FILE).read_text()),
        weights=weights,
        fold_weights=fold_weights,
        gate=Gate.from_json(json.loads(decision.read_text())) if decision.exists() else NO_GATE,
    )


class NumpyScorer:
    """Two towers and heads in numpy.

    Args:
        spec: The architecture and id vocabularies (``spec.json`` of a model version).
        transform: The feature transformation (``transform.json``).
        weights: Named float32 arrays (``weights.npz``), as :func:`coupon_spark.model.network.export_weights`
            names them.
        decision_threshold: EUR; the score job treats an expected incremental profit at or below it as not
            worth a coupon (``decision.json``, :mod:`coupon_spark.model.gate`; ``inf``: the gate is closed).
        members: Models of the same spec trained on other subsets of the rows (the gate's fold models): the
            spread of their estimates is the uncertainty :meth:`profit_spread` reports.
    """

    def __init__(
        self,
        spec: ModelSpec,
        transform: FeatureTransform,
        weights: Mapping[str, np.ndarray],
        decision_threshold: float = 0.0,
        members: Sequence[NumpyScorer] = (),
    ):
        self.spec = spec
        self.members = list(members)
        self.transform = transform
        self.decision_threshold = float(decision_threshold)
        self.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        # an ensemble: one scorer per head (weights under head<b>/); its estimates are their means
        one = dataclasses.replace(spec, heads=1)
        self.heads = [
            NumpyScorer(one, transform, _head_weights(weights, b)) for b in range(spec.heads if spec.heads > 1 else 0)
        ]
        if self.heads:
            return
        n = len(spec.hidden_units) + 1
        self._user = [(self.weights[f"user_dense_{i}_kernel"], self.weights[f"user_dense_{i}_bias"]) for i in range(n)]
        self._coupon = [
            (self.weights[f"coupon_dense_{i}_kernel"], self.weights[f"coupon_dense_{i}_bias"]) for i in range(n)
        ]

    @classmethod
    def load(cls, model_dir: str | Path, pool_members: bool = True) -> NumpyScorer:
        """From a model version folder of the registry (a local path; see ``Registry.download`` for others).

        With ``pool_members`` (``score.pool_fold_models``) and an ensemble whose version has fold models (the
        decision gate's, ``fold_weights.npz``), their heads join the published model's: the estimate is the
        mean of every head and the uncertainty their spread. The fold models are the same procedure on other
        subsets of the rows, so their disagreement with the published model is noise the decisions should
        discount, and their mean is a bagged estimate (measured on the demo: published heads alone earned
        5.0% / 25.6% / 25.9% of the oracle on the three loop days, pooled 23.8% / 26.8% / 26.0%)."""
        v = read_version(model_dir)
        members = [cls(v.spec, v.transform, w) for w in v.fold_weights]
        scorer = cls(v.spec, v.transform, v.weights, v.gate.threshold, members)
        return scorer.pooled() if pool_members else scorer

    def profit_spread(
        self, users: pd.DataFrame, coupon_frame: pd.DataFrame, value: np.ndarray, cost: np.ndarray
    ) -> np.ndarray | None:
        """Standard deviation over the heads of an ensemble (else over :attr:`members`) of the expected
        incremental profit ``uplift * value - p_redeem * cost`` of every user x coupon (``[n, m]``, float32);
        None with fewer than two.

        Args:
            users: Raw user features.
            coupon_frame: The live coupons' raw features, in the order of ``cost``.
            value: ``[n, 1]`` EUR of a purchase to the shop (margin x basket).
            cost: ``[m]`` coupon costs, or ``[n, m]`` per user (:func:`coupon_spark.policy.redemption_cost`).
        """
        models = self.heads if len(self.heads) >= 2 else self.members
        if len(models) < 2:
            return None
        cost = _per_pair(cost)
        profits = []
        for m in models:
            out = m.score_frames(users, coupon_frame)
            profits.append(out["uplift"] * value - out["p_redeem"] * cost)
        return np.std(np.stack(profits), axis=0, ddof=1).astype(np.float32)

    def score_profit(
        self,
        users: pd.DataFrame,
        coupons: pd.DataFrame,
        coupon_emb: np.ndarray | None,
        value: np.ndarray,
        cost: np.ndarray,
        z: float = 0.0,
        head_mask: np.ndarray | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """:meth:`score_frames` and the expected incremental profit ``uplift * value - p_redeem * cost``
        (``[n, m]`` float32) lowered by ``z`` standard deviations over the heads, every head evaluated once
        (the score job's kernel; :meth:`profit_spread` evaluates them again).

        Args:
            users: Raw user features.
            coupons: The live coupons' raw features, in the order of ``cost``.
            coupon_emb: Their :meth:`coupon_embed`, when already computed.
            value: ``[n]`` EUR of a purchase to the shop (margin x basket).
            cost: ``[m]`` coupon costs, or ``[n, m]``: what a redemption costs per user
                (:func:`coupon_spark.policy.redemption_cost`).
            z: Standard deviations to subtract (``score.uncertainty_z``); a model of one head takes the spread
                of its :attr:`members`.
            head_mask: ``[len(heads), n]`` bool: the heads that count for each user (the decision gate's
                out-of-bag heads of a row); None: all. Every user needs at least one (two for a spread).
        """
        value = np.asarray(value, np.float32)[:, None]
        cost = _per_pair(np.asarray(cost, np.float32))
        if not self.heads:
            out = self.score_frames(users, coupons, coupon_emb)
            profit = out["uplift"] * value - out["p_redeem"] * cost
            spread = self.profit_spread(users, coupons, value, cost) if z > 0 else None
            return out, profit if spread is None else profit - np.float32(z) * spread
        c = self.coupon_embed(coupons) if coupon_emb is None else coupon_emb
        outs = self._head_outputs(self.user_embed(users), c, self.pair_x(users, coupons))
        profits = np.stack([o["uplift"] * value - o["p_redeem"] * cost for o in outs])
        if head_mask is None:
            profit = profits.mean(axis=0)
            if z > 0 and len(outs) >= 2:
                profit -= np.float32(z) * profits.std(axis=0, ddof=1)
            return _mean_of(outs), profit.astype(np.float32, copy=False)
        w = np.asarray(head_mask, np.float32)  # [H, n]
        count = w.sum(axis=0)
        if (count < 1).any():
            raise ValueError("head_mask: every user needs at least one head")
        mean = np.einsum("hn,hnm->nm", w, profits) / count[:, None]
        if z > 0:
            dev = profits - mean[None]
            var = np.einsum("hn,hnm->nm", w, dev * dev) / np.maximum(count - 1, 1)[:, None]
            mean = mean - np.float32(z) * np.sqrt(var)
        avg = {
            "p_purchase": np.einsum("hn,hnm->nm", w, np.stack([o["p_purchase"] for o in outs])) / count[:, None],
            "p_redeem": np.einsum("hn,hnm->nm", w, np.stack([o["p_redeem"] for o in outs])) / count[:, None],
            "p_purchase_none": np.einsum("hn,hn->n", w, np.stack([o["p_purchase_none"] for o in outs])) / count,
        }
        avg["uplift"] = avg["p_purchase"] - avg["p_purchase_none"][:, None]
        return avg, mean.astype(np.float32, copy=False)

    def pooled(self) -> NumpyScorer:
        """This model with its :attr:`members`' heads joined to its own (what :meth:`load` does with
        ``pool_members``): the published model's heads first, then each member's in order."""
        spec = self.spec
        other = [
            m
            for m in self.members
            if m.transform != self.transform or dataclasses.replace(m.spec, heads=spec.heads) != spec
        ]
        if other:
            raise ValueError(
                f"{len(other)} member(s) of another architecture or feature transformation: only models of the "
                "same spec.json and transform.json (a version's fold models) can be pooled"
            )
        out = copy.copy(self)
        if self.heads and self.members:
            out.heads = [*self.heads, *(h for m in self.members for h in (m.heads or [m]))]
        return out

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    # ---- from raw frames ----------------------------------------------------------------------------------
    def score_frames(
        self, users: pd.DataFrame, coupons: pd.DataFrame, coupon_emb: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """:meth:`predict` of every user against every coupon, from the raw frames (``coupon_emb``: the
        coupons' :meth:`coupon_embed`, when already computed)."""
        c = self.coupon_embed(coupons) if coupon_emb is None else coupon_emb
        return self.predict(self.user_embed(users), c, self.pair_x(users, coupons))

    def pair_x(self, users: pd.DataFrame, coupons: pd.DataFrame) -> np.ndarray | None:
        """Pair features ``[n_users, n_coupons, pair_dim]`` (:func:`coupon_spark.model.pair.pair_matrix`); None
        for a model without them."""
        if not self.spec.pair_dim:
            return None
        return pair_matrix(users, coupons, self.spec.default_basket_eur)

    def user_embed(self, users: pd.DataFrame) -> np.ndarray:
        """User vectors ``u`` (float32 ``[len(users), d]``; an ensemble's heads side by side) from ``user_id``
        and the raw ``uf_*``/``uc_*``. The heads share the transformation (:meth:`pooled` checks it of the
        members), so the frame is transformed once, not once per head."""
        x, bucket = self.transform.user_matrix(users), self.spec.user_buckets(users["user_id"])
        if self.heads:
            return np.concatenate([h.user_tower(x, bucket) for h in self.heads], axis=1)
        return self.user_tower(x, bucket)

    def coupon_embed(self, coupons: pd.DataFrame) -> np.ndarray:
        """Coupon rows ``[v_c (d), r_c (d), b_c, b_use_c, P_c (p x d), a_c (p), q_c (p)]`` (float32
        ``[len(coupons), spec.coupon_width]``) from ``coupon_id`` and the raw ``cf_*``/``cc_*`` columns;
        ``v_c = v_none + t_c``; an ensemble's heads side by side (the frame transformed once)."""
        x, index = self.transform.coupon_matrix(coupons), self.spec.coupon_index(coupons["coupon_id"])
        if self.heads:
            return np.concatenate([h.coupon_tower(x, index) for h in self.heads], axis=1)
        return self.coupon_tower(x, index)

    # ---- towers from transformed inputs (what TensorFlow sees) --------------------------------------------
    def user_tower(self, user_x: np.ndarray, user_bucket: np.ndarray) -> np.ndarray:
        """``u`` from the transformed user matrix and hash buckets."""
        h = np.asarray(user_x, np.float32)
        if self.spec.user_id_buckets > 0:
            h = np.concatenate([h, self.weights["user_id_embedding"][np.asarray(user_bucket, np.int64)]], axis=1)
        return _mlp(h, self._user)

    def coupon_tower(self, coupon_x: np.ndarray, coupon_index: np.ndarray) -> np.ndarray:
        """Coupon rows ``[v_c, r_c, b_c, b_use_c]`` from the transformed coupon matrix and coupon indices."""
        emb = self.weights["coupon_id_embedding"][np.asarray(coupon_index, np.int64)]
        h = _mlp(np.concatenate([np.asarray(coupon_x, np.float32), emb], axis=1), self._coupon)
        h[np.asarray(coupon_index) == 0] = 0.0  # the "no coupon" arm: no treatment, nothing to redeem
        h[:, : self.spec.embedding_dim] += self.weights["none_vector"][None, :]
        return h

    # ---- heads --------------------------------------------------------------------------------------------
    def predict(
        self, user_emb: np.ndarray, coupon_emb: np.ndarray, pair_x: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Every user against every coupon.

        Args:
            user_emb: ``[n_users, d]`` from :meth:`user_embed`.
            coupon_emb: ``[n_coupons, spec.coupon_width]`` from :meth:`coupon_embed`.
            pair_x: ``[n_users, n_coupons, pair_dim]`` from :meth:`pair_x`; required when ``spec.pair_dim``.

        Returns:
            ``p_purchase`` ``[n_users, n_coupons]`` (p(purchase | coupon)), ``p_purchase_none`` ``[n_users]``,
            ``p_redeem`` ``[n_users, n_coupons]`` and ``uplift`` = ``p_purchase - p_purchase_none[:, None]``.
        """
        if self.heads:
            return _mean_of(self._head_outputs(user_emb, coupon_emb, pair_x))
        d = self.spec.embedding_dim
        u = np.asarray(user_emb, np.float32)
        c = np.asarray(coupon_emb, np.float32)
        b0 = self.weights["none_bias"]
        p_none = sigmoid(u @ self.weights["none_vector"] + b0)
        logit = u @ c[:, :d].T + (b0 + c[:, 2 * d])[None, :]
        logit_use = u @ c[:, d : 2 * d].T + c[:, 2 * d + 1][None, :]
        k = self.spec.pair_dim
        if k:
            if pair_x is None:
                raise ValueError("this model has pair features: pass pair_x (NumpyScorer.pair_x or score_frames)")
            phi = np.asarray(pair_x, np.float32)
            big_p, a, q = self._pair_parts(c)
            # sum_k phi_k * (<u, P_ck> + a_ck), one coupon-feature at a time: [n, m] temporaries only
            for i in range(k):
                logit += phi[:, :, i] * (u @ big_p[:, i, :].T + a[None, :, i])
                logit_use += phi[:, :, i] * q[None, :, i]
        p = sigmoid(logit)
        p_use = sigmoid(logit_use)
        return {"p_purchase": p, "p_purchase_none": p_none, "p_redeem": p * p_use, "uplift": p - p_none[:, None]}

    def _head_outputs(
        self, user_emb: np.ndarray, coupon_emb: np.ndarray, pair_x: np.ndarray | None
    ) -> list[dict[str, np.ndarray]]:
        """:meth:`predict` of each head, from the heads' vectors side by side."""
        d, w = self.spec.embedding_dim, self.spec.coupon_width
        return [
            h.predict(user_emb[:, b * d : (b + 1) * d], coupon_emb[:, b * w : (b + 1) * w], pair_x)
            for b, h in enumerate(self.heads)
        ]

    def _pair_parts(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``P`` ``[m, p, d]``, ``a`` and ``q`` ``[m, p]`` from coupon rows of :meth:`coupon_embed`."""
        d, k = self.spec.embedding_dim, self.spec.pair_dim
        o = 2 * d + 2
        return c[:, o : o + k * d].reshape(-1, k, d), c[:, o + k * d : o + k * d + k], c[:, o + k * d + k :]

    def predict_rows(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Row-wise predictions for each row's own arm, like the TensorFlow model's ``call`` (for checks)."""
        if self.heads:
            return _mean_of([h.predict_rows(inputs) for h in self.heads])
        u = self.user_tower(inputs["user_x"], inputs["user_bucket"])
        idx = np.asarray(inputs["coupon_index"], np.int64)
        c = self.coupon_tower(inputs["coupon_x"], idx)
        d = self.spec.embedding_dim
        treated = (idx != 0).astype(np.float32)
        b0 = self.weights["none_bias"]
        logit_none = u @ self.weights["none_vector"] + b0
        logit = np.einsum("nd,nd->n", u, c[:, :d]) + b0 + c[:, 2 * d]
        logit_use = np.einsum("nd,nd->n", u, c[:, d : 2 * d]) + c[:, 2 * d + 1]
        if self.spec.pair_dim:
            phi = np.asarray(inputs["pair_x"], np.float32)
            big_p, a, q = self._pair_parts(c)
            logit = logit + np.sum(phi * (np.einsum("nd,npd->np", u, big_p) + a), axis=1)
            logit_use = logit_use + np.sum(phi * q, axis=1)
        logit = np.where(treated > 0, logit, logit_none)
        p, p_none = sigmoid(logit), sigmoid(logit_none)
        return {
            "p_purchase": p,
            "p_purchase_none": p_none,
            "p_redeem": p * sigmoid(logit_use) * treated,
            "uplift": p - p_none,
        }


def _per_pair(cost: np.ndarray) -> np.ndarray:
    """A cost per coupon ``[m]`` as a row ``[1, m]``; a cost per user and coupon ``[n, m]`` as it is."""
    cost = np.asarray(cost)
    return cost[None, :] if cost.ndim == 1 else cost


def _head_weights(weights: Mapping[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    """Head ``b``'s weights of an ensemble (keys ``head<b>/<name>``), under their plain names."""
    prefix = f"head{b}/"
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def _mean_of(outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The heads' mean probabilities; the uplift is the mean ``p`` less the mean ``p_none``."""
    mean = {k: np.mean([o[k] for o in outs], axis=0) for k in ("p_purchase", "p_purchase_none", "p_redeem")}
    p, p_none = mean["p_purchase"], mean["p_purchase_none"]
    return mean | {"uplift": p - (p_none[:, None] if p.ndim == 2 else p_none)}


def _mlp(h: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    for i, (kernel, bias) in enumerate(layers):
        h = h @ kernel + bias
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h.astype(np.float32, copy=False)
