"""Waking the forward workers: one event per destination, and the earliest due time.

Both queue backends keep, per destination, the clock time of the earliest pending
delivery they know of and an event that workers waiting for work sleep on. A commit, a
retry coming due, a release or a notification from another node sets the event; a
worker never polls. This is that bookkeeping, shared by the backends.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio


class WorkWaiters:
    """``next_due``: destination -> earliest due time (the backend keeps it current);
    ``events``: destination -> the event its idle workers wait on."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.next_due: dict[str, float] = {}
        self.events: dict[str, anyio.Event] = {}

    def set_due(self, dest: str, due: float | None) -> None:
        if due is None:
            self.next_due.pop(dest, None)
        else:
            self.next_due[dest] = due

    def notify(self, dest: str) -> None:
        """Wake whoever waits for work of ``dest``."""
        ev = self.events.pop(dest, None)
        if ev is not None:
            ev.set()

    def notify_all(self) -> None:
        for dest in list(self.events):
            self.notify(dest)

    async def wait(self, dest: str, timeout: float | None) -> bool:
        """True as soon as work may be available for ``dest`` (a notification, or the
        earliest due time reached); False when ``timeout`` seconds passed first.
        Spurious wake-ups are possible: a lease may then return nothing."""
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            due = self.next_due.get(dest)
            now = self.clock()
            if due is not None and due <= now:
                return True
            remaining = math.inf if deadline is None else deadline - anyio.current_time()
            if remaining <= 0:
                return False
            wait = remaining if due is None else min(remaining, due - now)
            ev = self.events.get(dest)
            if ev is None:
                ev = self.events[dest] = anyio.Event()
            with anyio.move_on_after(wait):
                await ev.wait()
                return True
