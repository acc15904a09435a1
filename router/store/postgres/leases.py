"""The leases one node holds: the fencing token of each (an outcome is recorded with
it, so it applies only while the lease is still this node's), and what renewing needs.

A live node renews its leases every third of their length, so a lease expires only when
its node falls silent (dead, hung, cut off from the database), not because a send is
slow; renewal stops ``max_hold`` seconds after the lease began, so a delivery whose
worker vanished without an outcome is not held for ever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HeldLeases"]


@dataclass(frozen=True, slots=True)
class _Held:
    token: int
    seconds: float
    since: float  # monotonic (anyio.current_time())


class HeldLeases:
    """Pure bookkeeping, no I/O: delivery id -> this node's lease of it."""

    def __init__(self, max_hold: float) -> None:
        self.max_hold = max_hold
        self._held: dict[int, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def add(self, id: int, token: int, seconds: float, now: float) -> None:
        self._held[id] = _Held(token, seconds, now)

    def token(self, id: int) -> int | None:
        held = self._held.get(id)
        return None if held is None else held.token

    def tokens(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """(id, token) of those of ``ids`` this node holds."""
        return [(i, self._held[i].token) for i in ids if i in self._held]

    def forget(self, ids: Sequence[int]) -> None:
        for i in ids:
            self._held.pop(i, None)

    def renewable(self, now: float) -> list[tuple[int, int, float]]:
        """(id, token, seconds) of the leases to renew now (begun < max_hold ago)."""
        return [
            (i, h.token, h.seconds) for i, h in self._held.items() if now - h.since < self.max_hold
        ]

    def lost(self, tried: Sequence[tuple[int, int, float]], renewed: set[int]) -> list[int]:
        """Of the leases ``tried``, those not renewed and not changed meanwhile (an
        outcome or a new lease of the same delivery): taken over by another node."""
        return [i for i, token, _ in tried if i not in renewed and self.token(i) == token]

    def renew_interval(self, default: float = 1.0) -> float:
        shortest = min((h.seconds for h in self._held.values()), default=default)
        return max(shortest / 3, 0.05)
