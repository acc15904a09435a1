"""Composition root: config -> objects -> one task group; signals.

One anyio task group owns every task of a running router: the queue's commit loop, the
HTTP endpoint, the forward workers, the DICOM acceptor and the signal handler. SIGTERM
and SIGINT stop gracefully (no new associations, in-flight C-STOREs finish and are
acknowledged, workers stop after their current send, then the queue closes). SIGHUP
reloads the config: validated in full, then swapped atomically; a bad one is logged
with the same lines as ``check`` and the old one keeps running.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import anyio
import anyio.abc

from router import __version__, logs
from router.config import Config, load_config
from router.dicom import Acceptor, AcceptorConfig
from router.forward.worker import Forwarder
from router.http import HttpServer
from router.ingest import Ingest
from router.metrics import Metrics, QueueSnapshot, disk_free_bytes
from router.rules.model import ConfigError
from router.store.queue import Queue
from router.tls import server_context

log = logging.getLogger("router.app")

# Settings a reload cannot change in a running process (they need a restart).
_RESTART_ONLY = ("storage", "listen", "http")


def acceptor_config(cfg: Config) -> AcceptorConfig:
    listen = cfg.listen
    return AcceptorConfig(
        ae_title=cfg.ae_title,
        host=listen.host,
        port=listen.port,
        max_associations=listen.max_associations,
        max_pdu_length=listen.max_pdu_length,
        calling_ae_titles=cfg.accept.calling_ae_set,
        check_called_ae=cfg.accept.check_called_ae,
        accept_unknown_sop_classes=cfg.accept.accept_unknown_sop_classes,
        acse_timeout=listen.acse_timeout,
        network_timeout=listen.network_timeout,
        dimse_timeout=listen.dimse_timeout,
        ssl_context=server_context(listen.tls) if listen.tls is not None else None,
        tls_handshake_timeout=listen.tls_handshake_timeout,
    )


class Router:
    """A router built from a config file; :meth:`run` serves until stopped."""

    def __init__(self, config_path: Path, config: Config, *, shutdown_grace: float = 30.0):
        self.config_path = config_path
        self.config = config
        self.shutdown_grace = shutdown_grace
        storage = config.storage
        self.storage_dir = Path(storage.path)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(version=__version__)
        self.queue = Queue(
            self.storage_dir,
            inline_max=storage.inline_max_bytes,
            max_queue_instances=storage.max_queue_instances,
            retention=storage.retention,
        )
        self.ingest = Ingest(lambda: self.config, self.queue, self.metrics, self.free_bytes)
        self.acceptor = Acceptor(acceptor_config(config), self.ingest)
        self.forwarder = Forwarder(lambda: self.config, self.queue, self.metrics)
        self.http = HttpServer(config.http.host, config.http.port, self.metrics, self.readiness)
        self.metrics.set_snapshot_source(self.snapshot)
        self.metrics.set_destinations(config.destinations)
        self.metrics.set_rules(config.rules.names)
        self.metrics.config_loaded()
        self.dicom_port: int | None = None
        self.http_port: int | None = None
        self._workers: set[tuple[str, int]] = set()
        self._workers_gone = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._queue_running = False
        self.stopped = anyio.Event()

    # -- observability

    def free_bytes(self) -> int:
        return disk_free_bytes(self.storage_dir)

    def snapshot(self) -> QueueSnapshot:
        stats = self.queue.stats()
        return QueueSnapshot(
            instances=stats.counts,
            oldest_age_seconds=stats.oldest_pending_age,
            storage_free_bytes=self.free_bytes(),
        )

    def readiness(self) -> list[str]:
        problems = []
        if self.dicom_port is None:
            problems.append("the DICOM listener is not accepting associations")
        if not self._queue_running:
            problems.append("the queue database is not open")
        if not os.access(self.storage_dir, os.W_OK):
            problems.append(f"storage {self.storage_dir} is not writable")
        elif self.free_bytes() < self.config.storage.min_free_bytes:
            problems.append(
                f"storage {self.storage_dir} has less free space than "
                f"min_free_bytes ({self.config.storage.min_free_bytes}): new instances get A700"
            )
        return problems

    # -- lifecycle

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self.queue.run)
            self._queue_running = True
            if self.config.http.enabled:
                self.http_port = await tg.start(self.http.serve)
            self._start_workers()
            self.dicom_port = await tg.start(self.acceptor.serve)
            tg.start_soon(self._signals)
            self._banner()
            task_status.started(self.dicom_port)
            await self.stopped.wait()
            await self._graceful_stop()
            tg.cancel_scope.cancel()
        self._queue_running = False
        logs.event(log, logging.INFO, "stopped")

    def stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        self.stopped.set()

    async def _graceful_stop(self) -> None:
        logs.event(log, logging.INFO, "stopping", grace=self.shutdown_grace)
        self.dicom_port = None
        self.acceptor.stop_accepting()
        with anyio.move_on_after(self.shutdown_grace):
            await self.acceptor.drain(self.shutdown_grace)
        self.forwarder.stopping.set()
        with anyio.move_on_after(self.shutdown_grace):
            if self._workers:
                await self._workers_gone.wait()  # each finishes its current send first

    def _banner(self) -> None:
        cfg = self.config
        logs.event(
            log,
            logging.INFO,
            "started",
            version=__version__,
            ae_title=cfg.ae_title,
            dicom=f"{cfg.listen.host}:{self.dicom_port}",
            tls=cfg.listen.tls is not None,
            http=f"{cfg.http.host}:{self.http_port}" if self.http_port else "off",
            storage=str(self.storage_dir),
            rules=len(cfg.rules),
            destinations=",".join(
                f"{n}={d.ae_title}@{d.host}:{d.port}" for n, d in cfg.destinations.items()
            )
            or "-",
        )

    def _start_workers(self) -> None:
        assert self._tg is not None
        for name, dest in self.config.destinations.items():
            for index in range(dest.max_associations):
                if (name, index) not in self._workers:
                    self._workers.add((name, index))
                    self._tg.start_soon(self._worker, name, index)

    async def _worker(self, name: str, index: int) -> None:
        try:
            await self.forwarder.worker(name, index)
        finally:
            self._workers.discard((name, index))
            if not self._workers and self.forwarder.stopping.is_set():
                self._workers_gone.set()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                if sig == signal.SIGHUP:
                    await self.reload()
                else:
                    logs.event(log, logging.INFO, "signal", signal=signal.Signals(sig).name)
                    self.stop()
                    return

    async def reload(self) -> bool:
        """Load the config file again; swap it in when valid. Returns success."""
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
        except ConfigError as e:
            for p in e.problems:
                logs.event(log, logging.ERROR, "config_reload_problem", problem=str(p))
            self.metrics.config_reloaded(False)
            logs.event(log, logging.ERROR, "config_reload_refused", problems=len(e.problems))
            return False
        except OSError as e:
            self.metrics.config_reloaded(False)
            logs.event(log, logging.ERROR, "config_reload_refused", error=str(e))
            return False
        kept = {k: getattr(self.config, k) for k in _RESTART_ONLY}
        changed = [k for k in _RESTART_ONLY if getattr(new, k) != kept[k]]
        if changed:
            logs.event(
                log, logging.WARNING, "config_reload_needs_restart", sections=",".join(changed)
            )
            new = new.model_copy(update=kept)
        self.config = new
        self.acceptor.update(acceptor_config(new))
        self.metrics.set_destinations(new.destinations)
        self.metrics.set_rules(new.rules.names)
        self.metrics.config_reloaded(True)
        self._start_workers()
        logs.event(
            log,
            logging.INFO,
            "config_reloaded",
            rules=len(new.rules),
            destinations=len(new.destinations),
        )
        return True


async def serve(config_path: Path) -> int:
    config = load_config(config_path)
    logs.setup(config.logging.format, config.logging.level)
    router = Router(config_path, config)
    await router.run()
    return 0
