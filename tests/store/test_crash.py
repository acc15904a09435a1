"""Invariant 1 under SIGKILL: every commit that returned survives, nothing half-made does."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from router.store.queue import DB_NAME, Filter, Queue

CHILD = r"""
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio

from router.store.queue import InstanceRecord, Queue

CT = "1.2.840.10008.5.1.4.1.1.2"
TS = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Req:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def payload(seed: int) -> bytes:
    size = 300 if seed % 2 else 40_000
    return bytes((i * 31 + seed) & 0xFF for i in range(size))


def dests(seed: int) -> list[str]:
    return [[], ["pacs"], ["pacs", "ai"]][seed % 3]


async def main(storage: Path) -> None:
    q = Queue(storage, inline_max=4096, max_queue_instances=10**9)
    async with anyio.create_task_group() as tg:
        await tg.start(q.run)

        async def committer(k: int) -> None:
            seed = k
            while True:
                uid = f"1.2.3.{seed}"
                sink = q.new_sink(Req(CT, uid, TS))
                data = payload(seed)
                for i in range(0, len(data), 8192):
                    sink.write(data[i : i + 8192])
                ident = await q.commit_instance(InstanceRecord(CT, uid, TS), sink, dests(seed))
                sys.stdout.write(f"{ident} {seed}\n")
                sys.stdout.flush()
                seed += 4

        for k in range(4):
            tg.start_soon(committer, k)


anyio.run(main, Path(sys.argv[1]))
"""


def payload(seed: int) -> bytes:
    size = 300 if seed % 2 else 40_000
    return bytes((i * 31 + seed) & 0xFF for i in range(size))


def dests(seed: int) -> list[str]:
    return [[], ["pacs"], ["pacs", "ai"]][seed % 3]


def expected(seed: int) -> list[str | None]:
    """Destinations listed for an instance: None is the unrouted entry."""
    return sorted(dests(seed), key=str) or [None]


def run_and_kill(
    script: Path, storage: Path, root: Path, env: dict[str, str], acks: int, acked: dict[str, int]
) -> None:
    """Start the committing child, SIGKILL it after ``acks`` acknowledgements."""
    seen = 0
    with subprocess.Popen(
        [sys.executable, str(script), str(storage)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    ) as child:
        assert child.stdout is not None
        while seen < acks:
            line = child.stdout.readline()
            assert line, f"child died early (rc={child.poll()})"
            ident, seed = line.split()
            acked[ident] = int(seed)
            seen += 1
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        # what the child printed after our count is acknowledged too
        for line in child.stdout.read().splitlines():
            ident, seed = line.split()
            acked[ident] = int(seed)


@pytest.mark.parametrize(("acks", "rounds"), [(1, 1), (150, 3)])
def test_sigkill_mid_stream_loses_no_acknowledged_commit(
    tmp_path: Path, storage: Path, acks: int, rounds: int
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    acked: dict[str, int] = {}
    for _ in range(rounds):  # each round restarts on the storage the last one crashed
        run_and_kill(script, storage, root, env, acks, acked)

    async def check() -> None:
        q = Queue(storage, inline_max=4096, max_queue_instances=10**9)
        async with anyio.create_task_group() as tg:
            await tg.start(q.run)
            entries = await q.list_deliveries(Filter())
            tg.cancel_scope.cancel()
        by_instance: dict[str, list[str | None]] = {}
        for e in entries:
            by_instance.setdefault(e.instance_id, []).append(e.destination)
            assert e.state in ("pending", "unrouted")
        # every acknowledged commit is there with all its deliveries
        for ident, seed in acked.items():
            assert sorted(by_instance.get(ident, []), key=str) == expected(seed), ident
        # no half rows: every stored instance (acknowledged or not) is whole
        conn = sqlite3.connect(storage / DB_NAME)
        try:
            rows = conn.execute(
                "SELECT id, sop_instance_uid, spooled, data, data_offset, size FROM instance"
            ).fetchall()
        finally:
            conn.close()
        spooled_ids = set()
        for ident, uid, spooled, data, offset, size in rows:
            seed = int(uid.rsplit(".", 1)[1])
            assert sorted(by_instance[ident], key=str) == expected(seed)
            if spooled:
                spooled_ids.add(ident)
                raw = q.spool.path_for(ident).read_bytes()
            else:
                raw = data
            assert len(raw) == size and raw[offset:] == payload(seed)
        assert set(q.spool.iter_ids()) == spooled_ids  # no file without a row
        assert os.listdir(storage / "tmp") == []
        assert set(acked) <= {r[0] for r in rows}

    anyio.run(check)
