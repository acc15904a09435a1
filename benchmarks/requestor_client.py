"""Benchmark peer: one association with router.dicom.associate(), c_store of every file.

    python -m benchmarks.requestor_client --port P [--host H] [--called-ae AE] [--wait-go]
        [--rate R] [--acks FILE] PATH...

PATHs are Part-10 files or directories of them. Each data set is sent straight from its
file (source=Path, offset=end of the file meta group), never decoded. With --wait-go it
prints `ready` after its imports and waits for a line on stdin, so the harness times the
work and not the interpreter's start-up; reading the file metas is part of the timed work
(storescu does the same). Exit 0 when every store answered Success, 1 otherwise.

--rate R paces the sends at R instances/s on the one association (storescu cannot): send,
wait for the response, then wait for the next slot of a deadline schedule
(benchmarks/pacing.py), so the mean rate is R as long as one store takes less than 1/R.
--acks FILE writes, after the release, one line per Success: SOP Instance UID, the
time.time() it arrived (the clock file mtimes use) and how late its send went out (s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio

from benchmarks.dicomfiles import FileMeta, read_meta
from benchmarks.pacing import lag, wait_before
from router.dicom import associate


def collect(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if q.is_file()))
        else:
            files.append(p)
    return files


async def send(args: argparse.Namespace) -> int:
    metas: list[FileMeta] = [read_meta(p) for p in collect(args.paths)]
    contexts: dict[str, list[str]] = {}
    for m in metas:
        ts = contexts.setdefault(m.sop_class_uid, [])
        if m.transfer_syntax not in ts:
            ts.append(m.transfer_syntax)
    failed = 0
    acks: list[tuple[str, float, float]] = []  # uid, time.time() of the Success, send lag
    async with associate(
        args.host,
        args.port,
        calling_ae=args.calling_ae,
        called_ae=args.called_ae,
        contexts=list(contexts.items()),
        max_pdu_length=args.pdu,
        connect_timeout=10.0,
        acse_timeout=30.0,
        dimse_timeout=60.0,
        network_timeout=60.0,
        ssl_context=None,
    ) as assoc:
        # the schedule runs on the monotonic clock (a wall-clock step must not bunch or
        # stall the sends); the acknowledgements are stamped with time.time()
        start = time.monotonic()
        for i, m in enumerate(metas):
            late = 0.0
            if args.rate is not None:
                delay = wait_before(time.monotonic(), start, i, args.rate)
                if delay > 0:
                    await anyio.sleep(delay)
                late = lag(time.monotonic(), start, i, args.rate)
            rsp = await assoc.c_store(
                m.sop_class_uid,
                m.sop_instance_uid,
                m.transfer_syntax,
                m.path,
                offset=m.data_offset,
            )
            if rsp.status == 0:
                acks.append((m.sop_instance_uid, time.time(), late))
            else:
                failed += 1
                print(
                    f"{m.path}: status 0x{rsp.status:04X} {rsp.error_comment or ''}",
                    file=sys.stderr,
                )
    print(f"sent {len(metas) - failed}/{len(metas)}", file=sys.stderr)
    if args.acks is not None:
        args.acks.write_text("".join(f"{uid}\t{t:.6f}\t{d:.6f}\n" for uid, t, d in acks))
    return 1 if failed else 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be > 0")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.requestor_client")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--calling-ae", default="BENCHSCU")
    p.add_argument("--called-ae", default="STORESCP")
    p.add_argument("--pdu", type=int, default=16384, help="max PDU length we receive")
    p.add_argument("--rate", type=_positive, metavar="R", help="pace the sends at R per second")
    p.add_argument("--acks", type=Path, metavar="FILE", help="write each Success's arrival time")
    p.add_argument("--wait-go", action="store_true", help="print 'ready', wait for stdin line")
    args = p.parse_args(argv)
    if args.wait_go:
        print("ready", flush=True)
        if not sys.stdin.readline():
            return 2
    return anyio.run(send, args)


if __name__ == "__main__":
    sys.exit(main())
