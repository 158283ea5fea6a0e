"""The A/B split: which variant answers a customer.

A customer's bucket is a hash of the test's key (the challenger's version) and the customer_id,
read as a number in [0, 1); buckets below the weight go to the challenger. The same customer
gets the same variant on every request of one test, on every replica (nothing is stored), and
a new test reshuffles who is in it.
"""

from __future__ import annotations

import hashlib

import numpy as np

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"


def bucket(key: str, customer_id: int) -> float:
    """The customer's place in [0, 1) for the test named `key`."""
    digest = hashlib.blake2b(f"{key}:{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def challenger_mask(key: str, customer_ids: list[int], weight: float) -> np.ndarray:
    """True for each customer the challenger answers (or, in shadow mode, also scores)."""
    if weight <= 0:
        return np.zeros(len(customer_ids), dtype=bool)
    return np.array([bucket(key, c) < weight for c in customer_ids], dtype=bool)
