"""Sticky buckets: a user's place in 0..9999 for one rollout.

The rule is fixed and language-independent, so any client, dashboard or batch job can recompute it::

    bucket = (murmur3_x86_32(f"{salt}:{key}", seed=0, unsigned) * 10000) >> 32

The multiply-shift maps the 32-bit hash onto 0..9999 without modulo bias. A request goes to the
candidate iff ``bucket < threshold(share)``, so raising the share only ever adds buckets: a user who
got the candidate keeps it. A different salt gives an independent bucket.

The hash is taken over bytes: the UTF-8 encoding of the text, where the bytes of a key that was
not valid UTF-8 on the wire come back as they were received (the HTTP layer decodes such bytes
as surrogate escapes). Any byte string is a key; none can crash the hash.
"""

from __future__ import annotations

import mmh3

BUCKETS = 10_000


def bucket(salt: str, key: str) -> int:
    """The bucket (0..9999) of cohort `key` under `salt`.

    >>> bucket("sentiment-v2", "user-42")
    6725
    """
    data = f"{salt}:{key}".encode("utf-8", "surrogateescape")
    return (mmh3.hash(data, 0, signed=False) * BUCKETS) >> 32


def threshold(share: float) -> int:
    """Buckets below this number go to the candidate: ``round(share * 10000)``.

    >>> threshold(0.05), threshold(0.29), threshold(1.0)
    (500, 2900, 10000)
    """
    return round(share * BUCKETS)
