"""The bookkeeping of a node's own leases (no database)."""

from __future__ import annotations

from router.store.postgres.leases import HeldLeases


def test_tokens_renewal_and_losses() -> None:
    held = HeldLeases(max_hold=100.0)
    held.add(1, token=11, seconds=60.0, now=0.0)
    held.add(2, token=12, seconds=3.0, now=50.0)
    assert held.tokens([1, 2, 3]) == [(1, 11), (2, 12)]
    assert held.token(3) is None
    assert held.renew_interval() == 1.0  # a third of the shortest lease
    assert held.renewable(now=99.0) == [(1, 11, 60.0), (2, 12, 3.0)]
    assert held.renewable(now=100.0) == [(2, 12, 3.0)]  # 1 held max_hold: left to expire
    tried = held.renewable(now=10.0)
    held.add(2, token=13, seconds=3.0, now=10.0)  # leased again meanwhile: not lost
    assert held.lost(tried, renewed=set()) == [1]
    held.forget([1, 2])
    assert len(held) == 0 and held.renew_interval(default=0.01) == 0.05
