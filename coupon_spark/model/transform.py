"""The feature transformation of ``feature_stats``, applied in numpy (training ranks and the scoring UDF alike).

Training and scoring must turn raw feature columns into exactly the same matrix: the transformation is read
once from the ``feature_stats`` table, stored with the model (``transform.json``) and applied by this one
vectorised implementation everywhere. Feature columns are found by prefix (``coupon_spark.schemas``):
``uf_*``/``uc_*`` make the user matrix, ``cf_*``/``cc_*`` the coupon matrix, each in sorted feature order.

Example:
    >>> t = FeatureTransform.from_stats(stats_pdf)        # rows of feature_stats for one as_of_date
    >>> x_user = t.user_matrix(users_pdf)                 # float32 [n_users, t.user_dim]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from coupon_spark.schemas import COUPON_FEATURE_PREFIXES, USER_FEATURE_PREFIXES

NUMERIC_TRANSFORMS = ("standard", "log1p_standard")


class FeatureStatsError(ValueError):
    """``feature_stats`` rows that the model cannot use (unknown transform, missing vocabulary, no features)."""


class MissingFeatureColumnsError(ValueError):
    """A frame lacks feature columns that the transformation needs."""


@dataclass(frozen=True)
class FeatureSpec:
    """How one feature column becomes one (numeric) or ``len(vocabulary) + 1`` (one-hot, last slot: out of
    vocabulary) columns of the model's input."""

    name: str
    transform: str
    center: float = 0.0
    scale: float = 1.0
    vocabulary: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return len(self.vocabulary) + 1 if self.transform == "onehot" else 1

    def apply(self, values: pd.Series) -> np.ndarray:
        """The transformed column(s) of ``values``, float32 ``[n, width]``. Nulls: 0 (numeric) or OOV."""
        n = len(values)
        if self.transform == "onehot":
            codes = pd.Categorical(values.astype(object), categories=self.vocabulary).codes.astype(np.int64)
            codes[codes < 0] = len(self.vocabulary)
            out = np.zeros((n, self.width), dtype=np.float32)
            out[np.arange(n), codes] = 1.0
            return out
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if self.transform == "log1p_standard":
            x = np.log1p(np.maximum(x, 0.0))
        scale = self.scale if self.scale and np.isfinite(self.scale) else 1.0
        z = (x - self.center) / scale
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)[:, None]


@dataclass(frozen=True)
class FeatureTransform:
    """The user and coupon feature transformations, in the order the model's input columns follow.

    Attributes:
        user: Specs of the ``uf_*``/``uc_*`` features, sorted by name.
        coupon: Specs of the ``cf_*``/``cc_*`` features, sorted by name.
        as_of_date: The ``feature_stats`` partition it was read from (ISO date), for the registry.
        source_version: The Delta version of the feature table the statistics were computed from.
    """

    user: list[FeatureSpec]
    coupon: list[FeatureSpec]
    as_of_date: str = ""
    source_version: int | None = None

    @classmethod
    def from_stats(cls, stats: pd.DataFrame | Iterable[Mapping[str, Any]]) -> FeatureTransform:
        """Build from rows of ``feature_stats`` (one ``as_of_date``).

        Raises:
            FeatureStatsError: An unknown ``kind``/``transform``, a one-hot feature without a vocabulary, or
                no user feature at all.
        """
        records = stats.to_dict("records") if isinstance(stats, pd.DataFrame) else stats
        rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in records]
        user: list[FeatureSpec] = []
        coupon: list[FeatureSpec] = []
        for r in sorted(rows, key=lambda r: str(r["feature"])):
            name = str(r["feature"])
            transform = str(r["transform"])
            if transform in NUMERIC_TRANSFORMS:
                center = r.get("center")
                scale = r.get("scale")
                spec = FeatureSpec(
                    name,
                    transform,
                    float(center if center is not None else 0.0),
                    float(scale if scale is not None else 1.0),
                )
            elif transform == "onehot":
                vocab = r.get("vocabulary")
                if vocab is None:
                    raise FeatureStatsError(
                        f"feature_stats: {name!r} is one-hot but has no vocabulary: rerun `coupon-spark features` "
                        "for the run date to rewrite the statistics"
                    )
                spec = FeatureSpec(name, transform, vocabulary=[str(v) for v in vocab])
            else:
                raise FeatureStatsError(
                    f"feature_stats: {name!r} has transform {transform!r}; expected one of "
                    f"{', '.join((*NUMERIC_TRANSFORMS, 'onehot'))}"
                )
            if name.startswith(USER_FEATURE_PREFIXES):
                user.append(spec)
            elif name.startswith(COUPON_FEATURE_PREFIXES):
                coupon.append(spec)
        if not user:
            raise FeatureStatsError(
                "feature_stats: no user feature (uf_*/uc_*): run `coupon-spark features` for the run date first"
            )
        dates = {str(r.get("as_of_date", "")) for r in rows}
        versions = [int(r["source_version"]) for r in rows if r.get("source_version") is not None]
        return cls(
            user, coupon, as_of_date=max(dates) if dates else "", source_version=max(versions) if versions else None
        )

    @property
    def user_columns(self) -> list[str]:
        return [s.name for s in self.user]

    @property
    def coupon_columns(self) -> list[str]:
        return [s.name for s in self.coupon]

    @property
    def user_dim(self) -> int:
        return sum(s.width for s in self.user)

    @property
    def coupon_dim(self) -> int:
        return sum(s.width for s in self.coupon)

    def user_matrix(self, df: pd.DataFrame) -> np.ndarray:
        """``float32 [len(df), user_dim]`` from the ``uf_*``/``uc_*`` columns of ``df``."""
        return _matrix(self.user, df, "user")

    def coupon_matrix(self, df: pd.DataFrame) -> np.ndarray:
        """``float32 [len(df), coupon_dim]`` from the ``cf_*``/``cc_*`` columns of ``df``."""
        return _matrix(self.coupon, df, "coupon")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureTransform:
        d = json.loads(text)
        return cls(
            user=[FeatureSpec(**s) for s in d["user"]],
            coupon=[FeatureSpec(**s) for s in d["coupon"]],
            as_of_date=d.get("as_of_date", ""),
            source_version=d.get("source_version"),
        )


def _matrix(specs: list[FeatureSpec], df: pd.DataFrame, what: str) -> np.ndarray:
    missing = [s.name for s in specs if s.name not in df.columns]
    if missing:
        raise MissingFeatureColumnsError(
            f"the {what} features {missing} are not in the frame (found {sorted(df.columns)}); the model was "
            "trained on them: pass the feature table's columns as the features stage wrote them"
        )
    if not specs:
        return np.zeros((len(df), 0), dtype=np.float32)
    return np.concatenate([s.apply(df[s.name]) for s in specs], axis=1)
