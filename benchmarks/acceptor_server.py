"""Benchmark peer: router.dicom.Acceptor writing each data set with FileSink, answering Success.

    python -m benchmarks.acceptor_server --dir OUT [--port 0] [--pdu 16384] [--ae BENCHSCP]

Prints `listening <port>` on stdout once it accepts connections; runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import anyio

from router.dicom import (
    Acceptor,
    AcceptorConfig,
    AssociationInfo,
    FileSink,
    Sink,
    Status,
    StoreHandler,
    StoreRequest,
)


class WriteFiles(StoreHandler):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def open_store(self, info: AssociationInfo, req: StoreRequest) -> Sink:
        return FileSink(self.directory)

    async def finish_store(self, info: AssociationInfo, req: StoreRequest, sink: Sink) -> int:
        assert isinstance(sink, FileSink)
        sink.close()
        return int(Status.SUCCESS)


def _config(args: argparse.Namespace) -> AcceptorConfig:
    return AcceptorConfig(
        ae_title=args.ae,
        host=args.host,
        port=args.port,
        max_associations=4,
        max_pdu_length=args.pdu,
        calling_ae_titles=None,
        check_called_ae=False,
        accept_unknown_sop_classes=False,
        acse_timeout=30.0,
        network_timeout=60.0,
        dimse_timeout=60.0,
        ssl_context=None,
        tls_handshake_timeout=10.0,
    )


async def serve(args: argparse.Namespace) -> None:
    args.dir.mkdir(parents=True, exist_ok=True)
    acceptor = Acceptor(_config(args), WriteFiles(args.dir))
    async with anyio.create_task_group() as tg:
        port = await tg.start(acceptor.serve)
        print(f"listening {port}", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.acceptor_server")
    p.add_argument("--dir", type=Path, required=True, help="where FileSink writes data sets")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--pdu", type=int, default=16384, help="max PDU length we receive")
    p.add_argument("--ae", default="BENCHSCP")
    args = p.parse_args(argv)
    anyio.run(serve, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
