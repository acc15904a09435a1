"""What only the SQLite backend has: numbered schema migrations, the storage lock, and
its DB thread's failure handling."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import router.store.sqlite.executor as executor
from router.cli import main
from router.holds import Hold, HoldUntil
from router.store.admin import open_admin, read_counts
from router.store.records import (
    Filter,
    InstanceRecord,
    QueueClosed,
    RouterRunning,
    SchemaError,
    State,
)
from router.store.spool import new_id
from router.store.sqlite import DB_NAME, SqliteQueue
from router.store.sqlite.schema import VERSION
from tests.async_peers import until, until_awaited
from tests.store.helpers import (
    CT,
    EXPLICIT,
    INLINE_MAX,
    Req,
    backend_named,
    commit,
    data_gone,
    payload,
    read_source,
)

SQLITE = backend_named("sqlite")

#: The schema exactly as routers before numbered migrations created it (at every open).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS instance (
    id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    study_uid TEXT,
    calling_ae TEXT NOT NULL DEFAULT '',
    called_ae TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    data_offset INTEGER NOT NULL,
    data BLOB,
    spooled INTEGER NOT NULL,
    unrouted INTEGER NOT NULL DEFAULT 0,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS instance_study ON instance(study_uid);
CREATE INDEX IF NOT EXISTS instance_done ON instance(done_at) WHERE done_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS instance_unrouted ON instance(received_at) WHERE unrouted = 1;
CREATE TABLE IF NOT EXISTS delivery (
    id INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instance(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (instance_id, destination)
);
CREATE INDEX IF NOT EXISTS delivery_due ON delivery(destination, state, due_at);
CREATE INDEX IF NOT EXISTS delivery_age ON delivery(destination, state, created_at);
PRAGMA user_version = 1;
"""

INLINE = b"\x00" * 128 + b"DICM" + b"inline data set"


def make_old_database(storage: Path, *, with_digest: bool) -> None:
    """A version-1 queue with an inline instance for two destinations (one failed)
    and an unrouted one; ``with_digest``: as the ad-hoc ALTER TABLE left it."""
    conn = sqlite3.connect(storage / DB_NAME)
    try:
        conn.executescript(OLD_SCHEMA)
        if with_digest:
            conn.execute("ALTER TABLE instance ADD COLUMN digest TEXT")
        conn.executemany(
            "INSERT INTO instance (id, received_at, sop_class_uid, sop_instance_uid,"
            " transfer_syntax, study_uid, size, data_offset, data, spooled, unrouted)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                ("0000000001aa", 100.0, CT, "1.2.3.1", EXPLICIT, "1.9", len(INLINE), 132,
                 INLINE, 0, 0),
                ("0000000002aa", 200.0, CT, "1.2.3.2", EXPLICIT, "1.9", len(INLINE), 132,
                 INLINE, 0, 1),
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO delivery (instance_id, destination, state, due_at, created_at,"
            " updated_at, attempts, last_status) VALUES (?,?,?,?,?,?,?,?)",
            [
                ("0000000001aa", "pacs", "pending", 100.0, 100.0, 100.0, 0, None),
                ("0000000001aa", "ai", "failed", 100.0, 100.0, 150.0, 3, 0xA700),
            ],
        )
        conn.commit()
    finally:
        conn.close()


def user_version(storage: Path) -> int:
    conn = sqlite3.connect(storage / DB_NAME)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("with_digest", [False, True], ids=["v1", "v1-with-digest"])
@pytest.mark.asyncio
async def test_a_version_1_database_is_upgraded_and_keeps_its_rows(
    storage: Path, with_digest: bool
) -> None:
    make_old_database(storage, with_digest=with_digest)
    # reading does not migrate (it must not write next to a running router)
    assert read_counts(storage).by_state() == {("pacs", "pending"): 1, ("ai", "failed"): 1}
    assert user_version(storage) == 1
    async with SQLITE.running(storage) as q:
        assert user_version(storage) == VERSION == 3
        assert q.stats().counts == {("pacs", "pending"): 1, ("ai", "failed"): 1}
        assert q.stats().unrouted == 1 and q.stats().instances == 2
        (le,) = await q.lease("pacs", 10, 30)
        assert (le.instance_id, le.attempt, read_source(le)) == ("0000000001aa", 1, INLINE[132:])
        (dead,) = await q.list_deliveries(Filter(state=State.FAILED))
        assert (dead.attempts, dead.last_status) == (3, 0xA700)
        # the digest column of version 2 works: an identical instance is not queued again
        rec = InstanceRecord(CT, "1.2.3.9", EXPLICIT, digest="d1")
        for _ in range(2):
            sink = q.new_sink(Req(sop_instance_uid="1.2.3.9"))
            sink.write(payload(10))
            result = await q.commit(rec, sink, ["pacs"])
        assert not result.stored and result.dropped == ("pacs",)
        # version 3: the rebuilt delivery table takes held deliveries
        q.set_holds({"ai": Hold(HoldUntil.SERIES, 30.0, 60.0)})
        await commit(q, 10, ["ai"], seed=5)
        assert q.stats().counts[("ai", "held")] == 1
    conn = sqlite3.connect(storage / DB_NAME)
    try:
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(instance)")}
        delivery_indexes = {r[1] for r in conn.execute("PRAGMA index_list(delivery)")}
        kept = conn.execute(
            "SELECT id, destination, state, attempts, last_status FROM delivery"
            " WHERE instance_id = '0000000001aa' ORDER BY id"
        ).fetchall()
        (fk,) = conn.execute("PRAGMA foreign_key_list(delivery)").fetchall()
    finally:
        conn.close()
    assert "instance_digest" in indexes
    assert {"delivery_due", "delivery_age", "delivery_hold"} <= delivery_indexes
    assert kept == [(1, "pacs", "leased", 1, None), (2, "ai", "failed", 3, 0xA700)]  # same ids
    assert (fk[2], fk[3], fk[4]) == ("instance", "instance_id", "id")


@pytest.mark.asyncio
async def test_a_new_database_starts_at_the_current_version(storage: Path) -> None:
    async with SQLITE.running(storage) as q:
        await commit(q, 10, ["pacs"])
    assert user_version(storage) == VERSION
    async with SQLITE.running(storage) as q:  # reopening changes nothing
        assert q.stats().counts == {("pacs", "pending"): 1}
    assert user_version(storage) == VERSION


def _make_newer(storage: Path) -> None:
    conn = sqlite3.connect(storage / DB_NAME)
    try:
        conn.executescript(OLD_SCHEMA)
        conn.execute(f"PRAGMA user_version = {VERSION + 1}")
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_a_newer_database_is_refused_with_a_clear_message(storage: Path) -> None:
    _make_newer(storage)
    q = SqliteQueue(storage, inline_max=4096, max_queue_instances=10)
    with pytest.raises(SchemaError) as e:
        await q.run()
    message = str(e.value)
    assert f"version {VERSION + 1}" in message and "newer dicom-router" in message
    assert str(storage / DB_NAME) in message
    for write in (False, True):
        with pytest.raises(SchemaError, match="newer"):
            open_admin(storage, write=write)
    assert user_version(storage) == VERSION + 1  # untouched


def test_the_command_line_answers_a_newer_database_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    _make_newer(storage)
    config = tmp_path / "router.yaml"
    config.write_text(
        "ae_title: ROUTER\nstorage: {path: ./storage, min_free_bytes: 0}\n"
        "listen: {host: 127.0.0.1, port: 0}\nhttp: {enabled: false}\n"
        "destinations:\n  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}\n"
        "rules:\n  - {name: all, forward: [pacs]}\n"
    )
    capsys.readouterr()
    assert main(["queue", "status", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer dicom-router" in err, err
    run = subprocess.run(
        [sys.executable, "-m", "router", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run.stderr
    assert "cannot start" in run.stderr and "newer dicom-router" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.asyncio
async def test_writes_are_refused_while_a_router_holds_the_storage(storage: Path) -> None:
    async with SQLITE.running(storage) as q:
        await commit(q, 10, ["pacs"])
        with pytest.raises(RouterRunning):
            open_admin(storage, write=True)
        with pytest.raises(RouterRunning):
            await SqliteQueue(storage, inline_max=4096, max_queue_instances=10).run()
        with open_admin(storage, write=False) as reader:  # reading is fine
            assert reader.counts().by_state() == {("pacs", "pending"): 1}
    with open_admin(storage, write=True) as admin:  # stopped: writes work
        assert admin.purge(Filter()) == 1


@pytest.mark.asyncio
async def test_a_failing_batch_fails_its_callers_instead_of_hanging_them(
    storage: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the DB thread's batch (not an SQL error, which fails one job) must reach
    every caller of the batch: they wait shielded from cancellation, so a batch that
    never answered would hang the router's shutdown for ever."""
    real = executor.run_batch

    def broken(core: Any, jobs: Any) -> Any:
        raise RuntimeError("bug in the batch")

    async with SQLITE.running(storage) as q:
        monkeypatch.setattr(executor, "run_batch", broken)
        with caplog.at_level(logging.ERROR, "router.store.queue"):
            with anyio.fail_after(10):
                with pytest.raises(RuntimeError, match="bug in the batch"):
                    await commit(q, 10, ["pacs"])
                with pytest.raises(RuntimeError, match="bug in the batch"):
                    await q.lease("pacs", 1, 30)
        assert "queue batch failed" in caplog.text
        monkeypatch.setattr(executor, "run_batch", real)
        ok = await commit(q, 10, ["pacs"], seed=1)  # the queue goes on
        assert [e.instance_id for e in await q.list_deliveries()] == [ok]


def _spilled(q: SqliteQueue, seed: int) -> tuple[InstanceRecord, Any]:
    sink = q.new_sink(Req(sop_instance_uid=f"1.2.3.{seed}"))
    data = payload(INLINE_MAX * 3, seed)
    for i in range(0, len(data), 4096):
        sink.write(data[i : i + 4096])
    assert sink.spilled
    return InstanceRecord(CT, f"1.2.3.{seed}", EXPLICIT, "1.2.9", "MOD", "ROUTER"), sink


@pytest.mark.asyncio
async def test_a_spilled_data_set_that_cannot_be_installed_fails_its_commit_alone(
    storage: Path,
) -> None:
    """The installer thread that fails hands the error back to the one waiting commit,
    leaves nothing behind, and goes on installing for the others."""
    async with SQLITE.running(storage) as q:
        assert isinstance(q, SqliteQueue)
        rec, sink = _spilled(q, 7)
        sink.tmp_path.unlink()  # gone under the router: its rename into the spool fails
        with anyio.fail_after(10):
            with pytest.raises(FileNotFoundError):
                await q.commit_instance(rec, sink, ["pacs"])
        assert sink.aborted
        assert (q.stats().instances, q.stats().committing) == (0, 0)
        assert q.spool.iter_ids() == []
        ok = await commit(q, INLINE_MAX * 2, ["pacs"], seed=1)
        assert [e.instance_id for e in await q.list_deliveries()] == [ok]
        assert q.spool.iter_ids() == [ok]


@pytest.mark.asyncio
async def test_a_stop_with_installs_in_flight_answers_each_commit_truly(storage: Path) -> None:
    """Stopping the queue while spilled commits are in the installer threads: each
    commit either returns (and its instance is there after a restart, data included) or
    fails (and nothing of it is); none hangs."""
    done: list[str] = []
    refused = 0
    handed = 0

    async def one(q: SqliteQueue, seed: int) -> None:
        nonlocal refused, handed
        rec, sink = _spilled(q, seed)
        handed += 1  # the commit hands its job over before its first suspension
        try:
            done.append(await q.commit_instance(rec, sink, ["pacs"]))
        except QueueClosed:
            refused += 1

    with anyio.fail_after(30):
        async with anyio.create_task_group() as outer, SQLITE.running(storage) as q:
            assert isinstance(q, SqliteQueue)
            for seed in range(40):
                outer.start_soon(one, q, seed)

            async def all_handed() -> bool:
                return handed == 40

            await until_awaited(all_handed)  # then it stops, with installs in flight
    assert len(done) + refused == 40 and done
    async with SQLITE.running(storage) as q:
        listed = {e.instance_id for e in await q.list_deliveries()}
        assert listed == set(done)
        for le in await q.lease("pacs", 40, 30):
            assert read_source(le) == payload(INLINE_MAX * 3, int(le.sop_instance_uid[6:]))


@pytest.mark.asyncio
async def test_a_stop_removes_the_files_of_every_instance_delivered_before_it(
    storage: Path,
) -> None:
    """The files of removed instances are unlinked by a thread of their own, after the
    commit; a stop waits for it, so none of them outlives the queue."""
    async with SQLITE.running(storage) as q:
        for seed in range(30):
            await commit(q, INLINE_MAX * 4, ["pacs"], seed=seed)
        assert len(q.spool.iter_ids()) == 30
        leased = await q.lease("pacs", 30, 30)
        await q.delivered([le.delivery_id for le in leased])
    assert q.spool.iter_ids() == []
    assert read_counts(storage).instances == 0


@pytest.mark.asyncio
async def test_a_spool_file_that_cannot_be_removed_is_logged_and_the_queue_goes_on(
    storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unlink that fails after the commit (here: a directory where the file was,
    which even root cannot unlink) is one warning naming the instance; the rows are
    gone, and later removals go on."""
    caplog.set_level(logging.WARNING, logger="router.store.spool")
    async with SQLITE.running(storage) as q:
        stuck = await commit(q, INLINE_MAX * 2, ["pacs"], seed=1)
        path = q.spool.path_for(stuck)
        path.unlink()
        (path / "x").mkdir(parents=True)
        (le,) = await q.lease("pacs", 1, 30)
        await q.delivered([le.delivery_id])

        def warned() -> bool:
            return any(stuck in r.getMessage() for r in caplog.records)

        await until(warned)
        assert q.stats().instances == 0
        other = await commit(q, INLINE_MAX * 2, ["pacs"], seed=2)
        (le,) = await q.lease("pacs", 1, 30)
        assert le.instance_id == other
        await q.delivered([le.delivery_id])
        assert await data_gone(q, other)


@pytest.mark.asyncio
async def test_an_orphan_that_cannot_be_removed_does_not_stop_the_start(
    storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The start-up sweep of spool files without rows warns about one it cannot unlink
    (a directory in its place) and starts all the same."""
    caplog.set_level(logging.WARNING, logger="router.store.spool")
    async with SQLITE.running(storage) as q:
        orphan = new_id()
        (q.spool.path_for(orphan) / "x").mkdir(parents=True)
    async with SQLITE.running(storage) as q:
        assert any(orphan in r.getMessage() for r in caplog.records)
        kept = await commit(q, INLINE_MAX * 2, ["pacs"], seed=3)
        assert kept in q.spool.iter_ids()
