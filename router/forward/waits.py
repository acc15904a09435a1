"""Waiting for the first of several things: a worker sleeps until work, a config change
or the stop, whichever comes first, without polling any of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


async def first_of(timeout: float, *waits: Callable[[], Awaitable[object]]) -> None:
    """Return when the first of ``waits`` returns, or after ``timeout`` seconds; the
    others are cancelled."""
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:

            async def one(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                tg.cancel_scope.cancel()

            for wait in waits:
                tg.start_soon(one, wait)
