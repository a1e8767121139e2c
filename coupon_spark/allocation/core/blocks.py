"""Packed blocks: candidates as numpy arrays per user block, with the dictionaries of ids."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coupon_spark.allocation.core.base import CostBasis
from coupon_spark.allocation.core.hashes import holdout_flags, unit_hash

CANDIDATE_COLUMNS = (
    "user_id",
    "coupon_id",
    "campaign_id",
    "uplift",
    "coupon_cost",
    "expected_cost",
    "expected_profit",
    "model_version",
)


@dataclass(frozen=True)
class Dictionaries:
    """Run-wide codes of the string columns, so blocks carry small integers."""

    coupons: tuple[str, ...]
    campaigns: tuple[str, ...]
    model_versions: tuple[str | None, ...]


@dataclass
class Block:
    """Users that each have exactly ``L`` valid options, as dense ``(n, L)`` arrays (options by coupon id)."""

    block_id: int
    value: np.ndarray  # expected_profit
    exp_cost: np.ndarray
    face_cost: np.ndarray
    uplift: np.ndarray
    campaign: np.ndarray  # int32 codes
    coupon: np.ndarray  # int32 codes
    model_version: np.ndarray  # int32 codes
    holdout: np.ndarray  # (n,) bool
    u_explore: np.ndarray  # (n,) uniform: exploration membership and trimming order
    u_pick: np.ndarray  # (n,) uniform: which option an exploring user gets
    user_ids: pa.Array | None = None

    @property
    def n(self) -> int:
        return int(self.value.shape[0])

    @property
    def width(self) -> int:
        return int(self.value.shape[1])

    def cost(self, basis: CostBasis) -> np.ndarray:
        return self.exp_cost if basis == "expected" else self.face_cost

    def payload(self) -> bytes:
        """The numeric arrays, pickled (protocol 5: raw buffers); user ids travel separately."""
        d = {k: v for k, v in self.__dict__.items() if k != "user_ids"}
        return pickle.dumps(d, protocol=5)

    @classmethod
    def from_payload(cls, data: bytes, user_ids: pa.Array | None = None) -> Block:
        return cls(**pickle.loads(data), user_ids=user_ids)

    def slim(self, basis: CostBasis) -> Block:
        """What the solver's passes read (value, the cost on ``basis``, campaign, the per-user draws), without
        the output-only columns: the form kept in the Spark workers' block cache. Not for :func:`decide_block`.
        """
        cost = self.cost(basis)
        empty = np.zeros((self.n, 0), dtype=np.int32)
        return Block(
            block_id=self.block_id,
            value=self.value,
            exp_cost=cost,
            face_cost=cost,
            uplift=np.zeros((self.n, 0)),
            campaign=self.campaign,
            coupon=empty,
            model_version=empty,
            holdout=self.holdout,
            u_explore=self.u_explore,
            u_pick=self.u_pick,
        )


@dataclass(frozen=True)
class PackSettings:
    """What packing needs to know: hashing salts and shares, and the block size."""

    holdout_share: float
    holdout_salt: str
    explore_salt: str
    pick_salt: str
    block_rows: int = 500_000


def valid_rows(table: pa.Table) -> pa.Array:
    """Rows the allocator can use: ids present, finite profit, finite non-negative costs."""
    ok = pc.and_(pc.is_valid(table["user_id"]), pc.is_valid(table["coupon_id"]))
    ok = pc.and_(ok, pc.is_valid(table["campaign_id"]))
    for name in ("expected_profit", "expected_cost", "coupon_cost"):
        col = table[name]
        ok = pc.and_(ok, pc.fill_null(pc.is_finite(col), False))
    ok = pc.and_(ok, pc.greater_equal(table["expected_cost"], 0.0))
    ok = pc.and_(ok, pc.greater_equal(table["coupon_cost"], 0.0))
    return pc.fill_null(ok, False)


def _codes(col: pa.ChunkedArray, values: Sequence[str | None]) -> np.ndarray:
    idx = pc.index_in(col, value_set=pa.array(list(values), type=pa.string()))
    return np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int32)


def pack_table(
    table: pa.Table, dicts: Dictionaries, settings: PackSettings, block_id_base: int = 0
) -> tuple[list[Block], int]:
    """Pack candidate rows sorted by (user_id, coupon_id) into blocks; every user's rows must all be here.

    Returns:
        The blocks (one or more per distinct number of options) and the number of invalid rows dropped.
    """
    mask = valid_rows(table)
    n_invalid = table.num_rows - pc.sum(mask.cast(pa.int64())).as_py() if table.num_rows else 0
    if n_invalid:
        table = table.filter(mask)
    if table.num_rows == 0:
        return [], int(n_invalid)
    users = table["user_id"].combine_chunks()
    change = np.asarray(pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False), dtype=bool)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
    counts = np.diff(np.concatenate([starts, [table.num_rows]]))
    first_ids = users.take(pa.array(starts))
    id_list = first_ids.to_pylist()
    holdout = holdout_flags(id_list, settings.holdout_share, settings.holdout_salt)
    u_explore = unit_hash(id_list, settings.explore_salt)
    u_pick = unit_hash(id_list, settings.pick_salt)
    cols = {
        "value": np.asarray(table["expected_profit"].to_numpy(), dtype=np.float64),
        "exp_cost": np.asarray(table["expected_cost"].to_numpy(), dtype=np.float64),
        "face_cost": np.asarray(table["coupon_cost"].to_numpy(), dtype=np.float64),
        "uplift": np.asarray(pc.fill_null(table["uplift"], float("nan")).to_numpy(), dtype=np.float64),
        "campaign": _codes(table["campaign_id"], dicts.campaigns),
        "coupon": _codes(table["coupon_id"], dicts.coupons),
        "model_version": _codes(table["model_version"], dicts.model_versions),
    }
    blocks: list[Block] = []
    for width in np.unique(counts):
        sel = np.flatnonzero(counts == width)
        per_block = max(1, settings.block_rows // int(width))
        for lo in range(0, len(sel), per_block):
            part = sel[lo : lo + per_block]
            rows = starts[part][:, None] + np.arange(width)[None, :]
            blocks.append(
                Block(
                    block_id=block_id_base + len(blocks),
                    **{k: v[rows] for k, v in cols.items()},
                    holdout=holdout[part],
                    u_explore=u_explore[part],
                    u_pick=u_pick[part],
                    user_ids=first_ids.take(pa.array(part)),
                )
            )
    return blocks, int(n_invalid)
