"""The two-tower uplift model: feature transformation, architecture, numpy scorer, registry, training.

Importing this package does not import TensorFlow: the scoring side (:class:`NumpyScorer`) needs numpy and
pandas only. The TensorFlow model is in :mod:`coupon_spark.model.network`, the training loop in
:mod:`coupon_spark.model.loop` and the ``train`` stage in :mod:`coupon_spark.model.train`.
"""

from __future__ import annotations

from coupon_spark.model.registry import ModelNotFoundError, Registry
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.model.spec import NONE_INDEX, UNKNOWN_INDEX, ModelSpec
from coupon_spark.model.transform import FeatureStatsError, FeatureTransform, MissingFeatureColumnsError

__all__ = [
    "NONE_INDEX",
    "UNKNOWN_INDEX",
    "FeatureStatsError",
    "FeatureTransform",
    "MissingFeatureColumnsError",
    "ModelNotFoundError",
    "ModelSpec",
    "NumpyScorer",
    "Registry",
]
