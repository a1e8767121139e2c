"""Stable hashes: the holdout and exploration draws, the same on every pass and every machine."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np


def unit_hash(keys: Iterable[str], salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per key, stable across runs, machines and versions.

    ``blake2b(f"{salt}:{key}", digest_size=8)`` read big-endian, top 53 bits divided by 2**53. The evaluation
    (or anyone) recomputes it from the user id and the salt alone.
    """
    blake = hashlib.blake2b
    out = np.fromiter(
        (int.from_bytes(blake(f"{salt}:{k}".encode(), digest_size=8).digest(), "big") >> 11 for k in keys),
        dtype=np.float64,
    )
    return out * (1.0 / (1 << 53))


def holdout_flags(user_ids: Sequence[str], share: float, salt: str) -> np.ndarray:
    """Whether each user is in the holdout: ``unit_hash(user_id, salt) < share`` (no run date: stable)."""
    if share <= 0:
        return np.zeros(len(user_ids), dtype=bool)
    return unit_hash(user_ids, salt) < share


def exploration_salts(seed: int, run_date: str) -> tuple[str, str]:
    """The salts of the exploration draw (who explores, which option) for one run: new each day and seed."""
    return f"explore:{seed}:{run_date}", f"pick:{seed}:{run_date}"
