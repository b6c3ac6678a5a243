"""Per-key token buckets that count what they hold back (pure: the caller gives time).

A key (container, rule) may emit `max_burst` alerts at once, then `rate` per
second. `admit` returns how many were held back since the key's previous emitted
alert, so that alert can report it; `due` hands back, for keys that stayed quiet
for `summary_ns` with a count pending, the latest held-back payload and its count.

A bucket lives while it holds something back or has not refilled: `prune` drops
the others (a full, empty bucket is the same as none), so the table follows the
containers that alert now. `capacity` bounds it in between; keys evicted with
held-back alerts pending are counted in `evicted_held`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")


@dataclass(slots=True)
class _Bucket(Generic[P]):
    tokens: float
    last_ns: int
    held: int = 0
    held_since_ns: int = 0
    payload: P | None = None


class RateLimiter(Generic[K, P]):
    def __init__(self, rate: float, max_burst: int, summary_ns: int, capacity: int = 16384) -> None:
        self._per_ns = rate / 1e9
        self._burst = float(max_burst)
        self._summary_ns = summary_ns
        self._capacity = capacity
        self._buckets: OrderedDict[K, _Bucket[P]] = OrderedDict()
        self._held: dict[K, None] = {}  # keys with a pending count
        self.evicted_held = 0  # held-back alerts forgotten because the table was full

    def admit(self, key: K, now_ns: int) -> int | None:
        """None: held back (call `hold` with its payload). Else the count to report."""
        b = self._buckets.get(key)
        if b is None:
            b = _Bucket(self._burst, now_ns)
            self._buckets[key] = b
            if len(self._buckets) > self._capacity:
                self._evict()
        else:
            self._buckets.move_to_end(key)
            if now_ns > b.last_ns:
                b.tokens = min(self._burst, b.tokens + (now_ns - b.last_ns) * self._per_ns)
                b.last_ns = now_ns
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            held, b.held, b.payload = b.held, 0, None
            if held:
                self._held.pop(key, None)
            return held
        return None

    def hold(self, key: K, now_ns: int, payload: P) -> None:
        b = self._buckets[key]
        if not b.held:
            b.held_since_ns = now_ns
            self._held[key] = None
        b.held += 1
        b.payload = payload

    def due(self, now_ns: int) -> list[tuple[K, int, P]]:
        """Release the latest held-back payload of keys pending for `summary_ns`:
        (key, how many others were held back, payload)."""
        out: list[tuple[K, int, P]] = []
        for key in list(self._held):
            b = self._buckets[key]
            if now_ns - b.held_since_ns >= self._summary_ns and b.payload is not None:
                out.append((key, b.held - 1, b.payload))
                b.held, b.payload = 0, None
                del self._held[key]
        return out

    def prune(self, now_ns: int) -> int:
        """Drop buckets that have refilled and hold nothing back; returns how many."""
        full = [
            key
            for key, b in self._buckets.items()
            if not b.held and b.tokens + (now_ns - b.last_ns) * self._per_ns >= self._burst
        ]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)

    def _evict(self) -> None:
        while len(self._buckets) > self._capacity:
            key, b = self._buckets.popitem(last=False)
            if b.held:
                self.evicted_held += b.held
                self._held.pop(key, None)
