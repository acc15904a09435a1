"""Graceful stop: stop accepting, let in-flight associations finish, drain."""

from __future__ import annotations

import anyio
import pytest
from dicom_helpers import VERIFICATION, RecordingHandler, config, echo, running, wait_for

from router.dicom import (
    Acceptor,
    AssociationAborted,
    AssociationRejected,
    ConnectError,
    associate,
)

pytestmark = pytest.mark.asyncio

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


async def test_stop_accepting_then_drain(handler: RecordingHandler) -> None:
    acceptor = Acceptor(config(), handler)
    async with running(acceptor) as port:
        assoc = await associate(
            "127.0.0.1",
            port,
            calling_ae="SCU",
            called_ae="ROUTER",
            contexts=[(VERIFICATION, ["1.2.840.10008.1.2"]), (CT, [EXPLICIT])],
        )
        assert acceptor.active == 1
        acceptor.stop_accepting()
        with anyio.fail_after(10):
            while True:  # the listener closes: new connections are refused
                try:
                    await echo(port)
                except ConnectError:
                    break
                except (AssociationRejected, AssociationAborted):
                    pass  # a connection caught while the listener closes
                await anyio.sleep(0.01)
        # the association in flight goes on
        assert (await assoc.c_store(CT, "1.2.3", EXPLICIT, b"\x08\x00" * 100)).status == 0
        async with anyio.create_task_group() as tg:
            drained: list[bool] = []

            async def drain() -> None:
                drained.append(await acceptor.drain(10))

            tg.start_soon(drain)
            # drain is waiting (every task blocked) while the association is in flight
            await anyio.wait_all_tasks_blocked()
            assert drained == []
            assert acceptor.active == 1
            await assoc.release()
        assert drained == [True]
        assert acceptor.active == 0
        assert handler.closed[-1][1] == "released"


async def test_drain_timeout_aborts_the_rest(handler: RecordingHandler) -> None:
    acceptor = Acceptor(config(), handler)
    async with running(acceptor) as port:
        assoc = await associate(
            "127.0.0.1",
            port,
            calling_ae="SCU",
            called_ae="ROUTER",
            contexts=[(VERIFICATION, ["1.2.840.10008.1.2"])],
        )
        acceptor.stop_accepting()
        assert await acceptor.drain(0.2) is False
        await wait_for(lambda: not acceptor.active, 10)
        assert handler.closed[-1][1] == "aborted"
        with pytest.raises(AssociationAborted) as aborted:
            await assoc.c_echo()
        assert aborted.value.source == 2  # the acceptor (service provider) aborted
        await assoc.abort()
