"""The model's architecture and id vocabularies: plain data, shared by TensorFlow and the numpy scorer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

NONE_INDEX = 0
"""Coupon index of the "no coupon" arm (``coupon_id`` null)."""
UNKNOWN_INDEX = 1
"""Coupon index of a coupon id the model has not seen in training (its id embedding is zero)."""
FIRST_COUPON_INDEX = 2

_HASH_KEY = "coupon-spark-uid"  # pandas' siphash needs a 16-character key


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network, besides its weights.

    Attributes:
        user_dim: Width of the transformed user feature matrix.
        coupon_dim: Width of the transformed coupon feature matrix.
        embedding_dim: Dimension d of the shared space.
        hidden_units: Hidden ReLU layers of each tower.
        id_embedding_dim: Width of the user-id and coupon-id embeddings.
        user_id_buckets: Hash buckets of the user-id embedding (0: none).
        coupon_ids: Coupon ids seen in training; id ``coupon_ids[i]`` has index ``FIRST_COUPON_INDEX + i``.
        pair_dim: Number of pair features (:data:`coupon_spark.model.pair.PAIR_FEATURES`); 0: none (a model
            of the towers alone).
        default_basket_eur: Basket the pair features assume for a user without orders.
        heads: Two-tower models trained side by side, each on its own bootstrap weights of the same batches:
            the model's estimate is their mean, their spread its uncertainty (1: a single model).
    """

    user_dim: int
    coupon_dim: int
    embedding_dim: int = 16
    hidden_units: list[int] = field(default_factory=lambda: [64])
    id_embedding_dim: int = 8
    user_id_buckets: int = 0
    coupon_ids: list[str] = field(default_factory=list)
    pair_dim: int = 0
    default_basket_eur: float = 40.0
    heads: int = 1

    @property
    def coupon_width(self) -> int:
        """Width of the coupon tower's output: ``t`` and ``r`` (d each), ``b``, ``b_use``, then per pair feature
        a direction ``P_k`` (d), a bias ``a_k`` and a redemption weight ``q_k``."""
        return 2 * self.embedding_dim + 2 + self.pair_dim * (self.embedding_dim + 2)

    @property
    def n_coupon_ids(self) -> int:
        """Rows of the coupon-id embedding: none, unknown, then the known coupons."""
        return FIRST_COUPON_INDEX + len(self.coupon_ids)

    def user_buckets(self, user_ids: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """Hash bucket of each user id (int64), stable across processes, machines and runs."""
        return hash_buckets(user_ids, self.user_id_buckets)

    def coupon_index(self, coupon_ids: Sequence[str | None] | pd.Series | np.ndarray) -> np.ndarray:
        """Index of each coupon id (int64): ``NONE_INDEX`` for null, ``UNKNOWN_INDEX`` for an unseen id."""
        ids = pd.Series(coupon_ids, dtype=object)
        codes = pd.Categorical(ids, categories=self.coupon_ids).codes.astype(np.int64)
        out = np.where(codes >= 0, codes + FIRST_COUPON_INDEX, UNKNOWN_INDEX)
        return np.where(ids.isna().to_numpy(), NONE_INDEX, out).astype(np.int64)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls(**json.loads(text))


def hash_buckets(values: Sequence[str] | pd.Series | np.ndarray, buckets: int) -> np.ndarray:
    """``siphash(value) mod buckets`` for each string (vectorised; 0 everywhere when ``buckets`` is 0)."""
    arr = np.asarray(pd.Series(values, dtype=object).fillna("").astype(str).to_numpy(), dtype=object)
    if buckets <= 0:
        return np.zeros(len(arr), dtype=np.int64)
    h = pd.util.hash_array(arr, hash_key=_HASH_KEY, categorize=False)
    return (h % np.uint64(buckets)).astype(np.int64)
