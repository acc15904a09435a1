"""Async helpers shared by the in-process tests: polling with a deadline and a DCMTK
storescp that is ready when it accepts connections."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk_env(nodelay: bool = True) -> dict[str, str]:
    """The environment for a DCMTK tool: TCP_NODELAY=1, or without it DCMTK's own
    default (Nagle on, as in many hospital peers)."""
    return DCMTK_ENV if nodelay else {k: v for k, v in DCMTK_ENV.items() if k != "TCP_NODELAY"}


async def until(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.01) -> None:
    """Poll ``predicate()`` until it is true; TimeoutError after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(step)


async def until_awaited(
    check: Callable[[], Awaitable[object]], timeout: float = 10.0, step: float = 0.01
) -> None:
    """Await ``check()`` until it is true; TimeoutError after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(step)


@asynccontextmanager
async def storescp(
    port: int, outdir: Path, *extra: str, nodelay: bool = True
) -> AsyncIterator[anyio.abc.Process]:
    """DCMTK storescp on ``port`` writing into ``outdir``; with TCP_NODELAY=1 unless
    ``nodelay`` is false (DCMTK's own default: Nagle on, as in many PACS)."""
    outdir.mkdir(parents=True, exist_ok=True)
    proc = await anyio.open_process(
        ["storescp", "-aet", "STORESCP", "-od", str(outdir), *extra, str(port)],
        env=dcmtk_env(nodelay),
    )

    async def accepts() -> bool:
        assert proc.returncode is None, "storescp exited"
        try:
            s = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            return False
        await s.aclose()
        return True

    try:
        await until_awaited(accepts, 10, 0.02)
        yield proc
    finally:
        proc.terminate()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await proc.wait()
        await proc.aclose()
