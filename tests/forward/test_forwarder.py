"""The Forwarder in process against the router's own Acceptor: batches and sessions,
idle release, outcomes (retry with backoff and jitter, dead letters), the circuit
breaker, presentation contexts and conversion, and reload."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sized
from pathlib import Path

import anyio
import pytest

from router.dicom import Acceptor, AcceptorConfig, Rejection
from router.forward import destination
from router.forward.kind import TransportError
from router.forward.outcome import TransportFailure
from router.forward.worker import LINGER
from router.store.queue import Entry, Filter, Queue
from tests.async_peers import until, until_awaited
from tests.forward.peer import (
    CT,
    EXPLICIT,
    IMPLICIT,
    ScriptedHandler,
    acceptor,
    commit,
    config,
    rig,
)

PRIVATE_SOP = "1.2.826.0.1.3680043.9.9999.1"


def has(items: Sized, n: int) -> bool:
    return len(items) == n


async def rows(q: Queue, uid: str) -> list[Entry]:
    return [e for e in await q.list_deliveries(Filter()) if e.sop_instance_uid == uid]


async def one_row(q: Queue, uid: str) -> Entry:
    found = await rows(q, uid)
    assert len(found) == 1
    return found[0]


async def until_row(q: Queue, uid: str, state: str, attempts: int | None = None) -> Entry:
    found: list[Entry] = []

    async def there() -> bool:
        found[:] = await rows(q, uid)
        return bool(found) and found[0].state == state and attempts in (None, found[0].attempts)

    await until_awaited(there)
    return found[0]


@pytest.mark.asyncio
async def test_a_batch_goes_on_one_association_in_queue_order_bytes_as_received(
    tmp_path: Path,
) -> None:
    handler = ScriptedHandler()
    async with acceptor(handler) as port:
        empty = config(tmp_path, {})
        with_pacs = config(tmp_path, {"pacs": {"port": port, "batch_size": 3}})
        async with rig(tmp_path, empty) as r:
            sent = [await commit(r.queue, ["pacs"]) for _ in range(7)]
            r.forwarder.reconfigure(empty, with_pacs)  # a destination added: started
            await until(lambda: len(handler.received) == 7)
    assert [x.sop_instance_uid for x in handler.received] == [uid for uid, _ in sent]
    assert [x.data for x in handler.received] == [data for _, data in sent]
    assert {x.transfer_syntax for x in handler.received} == {EXPLICIT}
    assert len(handler.opened) == 1  # three leases on the same association
    assert r.leased == [3, 3, 1]


@pytest.mark.asyncio
async def test_a_stream_with_gaps_shorter_than_idle_release_uses_one_association(
    tmp_path: Path,
) -> None:
    handler = ScriptedHandler()
    async with acceptor(handler) as port:
        cfg = config(tmp_path, {"pacs": {"port": port, "idle_release": "5s"}})
        async with rig(tmp_path, cfg) as r:
            for n in range(1, 6):
                await commit(r.queue, ["pacs"])
                await until(functools.partial(has, handler.received, n))  # caught up each time
            assert handler.closed == []  # still open, waiting for more
    assert len(handler.opened) == 1


@pytest.mark.asyncio
async def test_an_idle_association_is_released_after_idle_release(tmp_path: Path) -> None:
    handler = ScriptedHandler()
    async with acceptor(handler) as port:
        cfg = config(tmp_path, {"pacs": {"port": port, "idle_release": "100ms"}})
        async with rig(tmp_path, cfg) as r:
            for n in range(1, 4):
                await commit(r.queue, ["pacs"])
                await until(functools.partial(has, handler.closed, n))
    assert handler.closed == ["released"] * 3
    assert len(handler.opened) == 3


@pytest.mark.asyncio
async def test_transient_status_is_retried_after_backoff_with_jitter(tmp_path: Path) -> None:
    answers = iter([0xA700, 0x0000])
    handler = ScriptedHandler(answer=lambda req: next(answers))
    async with acceptor(handler) as port:
        retry = {"initial_backoff": "2s", "max_backoff": "10s", "jitter": 0.5}
        cfg = config(tmp_path, {"pacs": {"port": port, "retry": retry}})
        async with rig(tmp_path, cfg, rand=0.5) as r:
            t0 = r.clock.t
            uid, _ = await commit(r.queue, ["pacs"])
            row = await until_row(r.queue, uid, "pending", attempts=1)
            assert row.last_status == 0xA700
            assert row.due_at == pytest.approx(t0 + 2.0 * (1 - 0.5 * 0.5))  # 1.5 s
            assert handler.received == []
            r.clock.t += 1.5
            r.queue.wake("pacs")
            await until(lambda: len(handler.received) == 1)
    assert handler.calls == [uid, uid]


@pytest.mark.asyncio
async def test_dead_letters_permanent_status_and_exhausted_attempts(tmp_path: Path) -> None:
    statuses: dict[str, int] = {}
    handler = ScriptedHandler(answer=lambda req: statuses[req.sop_instance_uid])
    async with acceptor(handler) as port:
        retry = {"max_attempts": 2, "initial_backoff": "1s", "jitter": 0}
        cfg = config(tmp_path, {"pacs": {"port": port, "retry": retry}})
        empty = config(tmp_path, {})
        async with rig(tmp_path, empty) as r:
            bad, _ = await commit(r.queue, ["pacs"])
            busy, _ = await commit(r.queue, ["pacs"])
            warn, _ = await commit(r.queue, ["pacs"])
            statuses.update({bad: 0xC000, busy: 0xA700, warn: 0xB000})
            r.forwarder.reconfigure(empty, cfg)
            row = await until_row(r.queue, bad, "failed")
            assert row.last_status == 0xC000 and row.attempts == 1
            assert "permanent failure" in (row.last_error or "")
            await until_row(r.queue, busy, "pending", attempts=1)
            r.clock.t += 1.0
            r.queue.wake("pacs")
            row = await until_row(r.queue, busy, "failed")
            assert row.attempts == 2 and "gave up after 2 attempts" in (row.last_error or "")
    assert [x.sop_instance_uid for x in handler.received] == [warn]


@pytest.mark.asyncio
async def test_breaker_opens_probes_no_later_than_max_backoff_and_closes(tmp_path: Path) -> None:
    handler = ScriptedHandler(refuse=Rejection.too_many_associations())
    async with acceptor(handler) as port:
        dest = {
            "port": port,
            "retry": {"initial_backoff": "1s", "max_backoff": "4s", "jitter": 0},
            "circuit_breaker": {"failures": 2, "probe_interval": "30s"},
        }
        async with rig(tmp_path, config(tmp_path, {"pacs": dest})) as r:
            uid, _ = await commit(r.queue, ["pacs"])
            await until_row(r.queue, uid, "pending", attempts=1)
            r.clock.t += 1.0
            r.queue.wake("pacs")
            await until_row(r.queue, uid, "pending", attempts=2)
            breaker = r.forwarder.breaker("pacs")
            assert breaker is not None
            await until(lambda: breaker.consecutive_failures == 2)
            opened_at = r.clock.t
            assert breaker.next_probe_at() == opened_at + 4.0  # not + 30 s
            assert not breaker.allow(opened_at + 3.9)
            handler.refuse = None  # the destination is back
            r.clock.t = opened_at + 4.0
            r.forwarder.notify("pacs")
            await until(lambda: breaker.consecutive_failures == 0)  # the probe closed it
            r.clock.t += 4.0  # the delivery's retry is due
            r.queue.wake("pacs")
            await until(lambda: len(handler.received) == 1)
    assert handler.received[0].sop_instance_uid == uid


@pytest.mark.asyncio
async def test_a_stalled_store_times_out_and_is_retried(tmp_path: Path) -> None:
    handler = ScriptedHandler(stall=True)
    async with acceptor(handler) as port:
        cfg = config(tmp_path, {"pacs": {"port": port, "dimse_timeout": "300ms"}})
        async with rig(tmp_path, cfg) as r:
            uid, _ = await commit(r.queue, ["pacs"])
            row = await until_row(r.queue, uid, "pending", attempts=1)
            handler.release_stall.set()
    assert row.last_error == "no data from peer for 0.3 s"  # our DIMSE timeout
    assert row.due_at is not None and row.due_at > r.clock.t  # retried after a backoff
    assert handler.calls == [uid]


@pytest.mark.asyncio
async def test_conversion_when_transcode_to_is_accepted_else_bytes_as_received(
    tmp_path: Path,
) -> None:
    handler = ScriptedHandler()
    async with acceptor(handler) as port:
        cfg = config(
            tmp_path,
            {
                "conv": {"port": port, "transcode_to": "ImplicitVRLittleEndian"},
                "plain": {"port": port},
            },
        )
        async with rig(tmp_path, cfg) as r:
            uid, data = await commit(r.queue, ["conv", "plain"])
            await until(lambda: len(handler.received) == 2)
    by_ts = {x.transfer_syntax: x for x in handler.received}
    assert set(by_ts) == {IMPLICIT, EXPLICIT}
    assert by_ts[EXPLICIT].data == data  # untouched
    assert by_ts[IMPLICIT].data != data and by_ts[IMPLICIT].sop_instance_uid == uid


@pytest.mark.asyncio
async def test_an_instance_without_an_accepted_context_is_a_dead_letter(tmp_path: Path) -> None:
    handler = ScriptedHandler()
    async with acceptor(handler, accept_unknown_sop_classes=False) as port:
        empty = config(tmp_path, {})
        cfg = config(tmp_path, {"pacs": {"port": port}})
        async with rig(tmp_path, empty) as r:
            private, _ = await commit(r.queue, ["pacs"], sop_class=PRIVATE_SOP)
            ct, _ = await commit(r.queue, ["pacs"], sop_class=CT)
            r.forwarder.reconfigure(empty, cfg)
            row = await until_row(r.queue, private, "failed")
            await until(lambda: len(handler.received) == 1)
    assert (row.last_error or "").startswith("PACS: destination refuses")
    assert handler.received[0].sop_instance_uid == ct
    assert len(handler.opened) == 1


@pytest.mark.asyncio
async def test_reload_removes_a_destination_and_changes_its_worker_count(tmp_path: Path) -> None:
    handler = ScriptedHandler()
    async with acceptor(handler) as port:
        one = config(tmp_path, {"pacs": {"port": port}})
        three = config(tmp_path, {"pacs": {"port": port, "max_associations": 3}})
        none = config(tmp_path, {})
        async with rig(tmp_path, one) as r:
            await until(lambda: r.forwarder.workers("pacs") == 1)
            r.forwarder.reconfigure(one, three)
            await until(lambda: r.forwarder.workers("pacs") == 3)
            r.forwarder.reconfigure(three, one)
            await until(lambda: r.forwarder.workers("pacs") == 1)
            r.forwarder.reconfigure(one, none)
            await until(lambda: r.forwarder.workers("pacs") == 0)
            uid, _ = await commit(r.queue, ["pacs"])
            assert (await one_row(r.queue, uid)).state == "pending"  # kept, visible
            r.forwarder.reconfigure(none, one)  # back: its deliveries go out
            r.forwarder.reconfigure(one, three)  # and again before its task began
            await until(lambda: len(handler.received) == 1)
            await until(lambda: r.forwarder.workers("pacs") == 3)
    assert handler.received[0].sop_instance_uid == uid


@pytest.mark.asyncio
async def test_echo_through_the_destination_settings(tmp_path: Path) -> None:
    handler = ScriptedHandler()
    async with acceptor(handler) as port:
        cfg = config(tmp_path, {"pacs": {"port": port}})
        echo = await destination.echo(cfg, "pacs")
        assert echo.ok and echo.detail == "status 0000"
        handler.refuse = Rejection.calling_ae_not_recognized()
        with pytest.raises(TransportError) as e:
            await destination.echo(cfg, "pacs")
    assert e.value.failure is TransportFailure.REJECTED_PERMANENT


@pytest.mark.asyncio
async def test_an_association_lost_mid_store_retries_the_instance_in_flight_only(
    tmp_path: Path,
) -> None:
    handler = ScriptedHandler(stall=True)
    acc = Acceptor(AcceptorConfig(ae_title="PACS", host="127.0.0.1", port=0), handler)
    empty = config(tmp_path, {})
    async with rig(tmp_path, empty) as r:
        sent = [await commit(r.queue, ["pacs"]) for _ in range(3)]
        async with anyio.create_task_group() as peer:
            port = await peer.start(acc.serve)
            r.forwarder.reconfigure(empty, config(tmp_path, {"pacs": {"port": port}}))
            await until(lambda: len(handler.calls) == 1)
            peer.cancel_scope.cancel()  # the destination goes away mid C-STORE
        first = await until_row(r.queue, sent[0][0], "pending", attempts=1)
        # the rest went back unattempted; the next association finds nobody listening
        rest = [await until_row(r.queue, uid, "pending", attempts=1) for uid, _ in sent[1:]]
        breaker = r.forwarder.breaker("pacs")
        assert breaker is not None
        await until(lambda: breaker.consecutive_failures == 2)
    assert handler.calls == [sent[0][0]]
    assert {row.last_error for row in rest} == {rest[0].last_error}
    assert (rest[0].last_error or "").startswith("cannot connect")
    assert first.last_error != rest[0].last_error


@pytest.mark.asyncio
async def test_an_idle_association_the_peer_closed_is_replaced_without_a_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.forward")
    handler = ScriptedHandler()
    async with acceptor(handler, network_timeout=0.2) as port:  # the PACS's idle timeout
        cfg = config(tmp_path, {"pacs": {"port": port, "idle_release": "30s"}})
        async with rig(tmp_path, cfg) as r:
            first, _ = await commit(r.queue, ["pacs"])
            await until(lambda: len(handler.received) == 1)
            await until(lambda: len(handler.closed) == 1)  # the peer gave up on it
            second, _ = await commit(r.queue, ["pacs"])
            await until(lambda: len(handler.received) == 2)
            breaker = r.forwarder.breaker("pacs")
            assert breaker is not None and breaker.consecutive_failures == 0
    assert [x.sop_instance_uid for x in handler.received] == [first, second]
    assert len(handler.opened) == 2
    assert "idle_association_lost" in caplog.messages
    assert "retry_scheduled" not in caplog.messages


@pytest.mark.asyncio
async def test_a_caught_up_worker_lingers_so_instances_arriving_meanwhile_share_a_lease(
    tmp_path: Path,
) -> None:
    handler = ScriptedHandler()
    pauses: list[float] = []
    arrived: list[str] = []
    queue_of: list[Queue] = []

    async def linger(seconds: float) -> None:  # three instances arrive while it lingers
        pauses.append(seconds)
        if len(pauses) == 1:
            for _ in range(3):
                uid, _ = await commit(queue_of[0], ["pacs"])
                arrived.append(uid)

    async with acceptor(handler) as port:
        cfg = config(tmp_path, {"pacs": {"port": port, "batch_size": 10}})
        async with rig(tmp_path, cfg, linger=linger) as r:
            queue_of.append(r.queue)
            first, _ = await commit(r.queue, ["pacs"])
            await until(lambda: len(handler.received) == 4)
    assert pauses[0] == LINGER
    assert r.leased[:2] == [1, 3]  # one lease for the three, not three
    assert [x.sop_instance_uid for x in handler.received] == [first, *arrived]
    assert len(handler.opened) == 1
