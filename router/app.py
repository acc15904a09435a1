"""Composition root: config -> objects -> one task group; signals.

One anyio task group owns every task of a running router: the queue's commit loop, the
HTTP endpoint, the forwarder (which owns its destinations' workers), the DICOM acceptor
and the signal handler. SIGTERM
and SIGINT stop gracefully (no new associations, in-flight C-STOREs finish and are
acknowledged, workers stop after their current send, then the queue closes). SIGHUP
reloads the config, and so does a change of the config or rule files (polled by
:class:`router.reload.ConfigWatcher`): validated in full, then swapped atomically; a bad
one is logged with the same lines as ``check`` and the old one keeps running; the new
one goes to every :class:`router.reload.Reconfigurable` part in one loop. The
operator API (:mod:`router.api`) serves the queue commands on the HTTP server.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import anyio
import anyio.abc

from router import __version__, logs
from router.api import OperatorApi
from router.config import Config, load_config
from router.dicom import Acceptor, AcceptorConfig
from router.forward.worker import Forwarder
from router.http import HttpServer
from router.ingest import Ingest
from router.metrics import Metrics, QueueSnapshot, disk_free_bytes
from router.problems import ConfigError
from router.reload import (
    ConfigWatcher,
    Reconfigurable,
    apply,
    keep_restart_only,
    runtime_problems,
    watched_paths,
)
from router.store.backend import QueueBackend
from router.store.records import StoreError
from router.store.sqlite import SqliteQueue
from router.tls import server_context

log = logging.getLogger("router.app")

#: How often the config and rule files are checked for changes (seconds); the
#: environment variable DICOM_ROUTER_WATCH_INTERVAL overrides it, 0 turns it off.
WATCH_INTERVAL = 2.0


def _watch_interval() -> float:
    try:
        return float(os.environ.get("DICOM_ROUTER_WATCH_INTERVAL", WATCH_INTERVAL))
    except ValueError:
        return WATCH_INTERVAL


#: Environment variable: seconds after which a spool file no row names, or a partial
#: receipt nobody writes to, is removed on a cluster node (default a day). For tests.
ENV_ORPHAN_GRACE = "DICOM_ROUTER_ORPHAN_GRACE"
ORPHAN_GRACE = 86_400.0


def _orphan_grace() -> float:
    try:
        return float(os.environ.get(ENV_ORPHAN_GRACE, ORPHAN_GRACE))
    except ValueError:
        return ORPHAN_GRACE


def build_queue(config: Config) -> QueueBackend:
    """The queue the config names: SQLite in ``storage.path``, or the PostgreSQL queue
    shared by the cluster's nodes (files still in ``storage.path``, a shared volume).
    StoreError when the DSN cannot be read or parsed."""
    storage = config.storage
    if config.queue.backend == "postgresql":
        from router.store.postgres import PgQueue, check_conninfo

        try:
            conninfo = check_conninfo(config.queue.conninfo())
        except ValueError as e:
            raise StoreError(str(e)) from None
        return PgQueue(
            conninfo,
            Path(storage.path),
            node_id=config.node_id,
            inline_max=storage.inline_max_bytes,
            max_queue_instances=storage.max_queue_instances,
            retention=storage.retention,
            orphan_age=_orphan_grace(),
            wait_at_start=True,
        )
    return SqliteQueue(
        Path(storage.path),
        inline_max=storage.inline_max_bytes,
        max_queue_instances=storage.max_queue_instances,
        retention=storage.retention,
    )


def acceptor_config(cfg: Config, *, tls: bool = True) -> AcceptorConfig:
    """The acceptor's settings; ``tls=False`` leaves the TLS context out (a reload keeps
    the running one, so it is not loaded again)."""
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
        ssl_context=server_context(listen.tls) if tls and listen.tls is not None else None,
        tls_handshake_timeout=listen.tls_handshake_timeout,
    )


class Router:
    """A router built from a config file; :meth:`run` serves until stopped."""

    def __init__(
        self, config_path: Path, config: Config, *, shutdown_grace: float | None = None
    ) -> None:
        self.config_path = config_path
        self.config = config
        self._shutdown_grace = shutdown_grace  # None: the config's shutdown_grace
        storage = config.storage
        self.storage_dir = Path(storage.path)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(version=__version__)
        self.queue: QueueBackend = build_queue(config)
        self.queue.set_holds(config.holds)
        self.ingest = Ingest(lambda: self.config, self.queue, self.metrics, self.free_bytes)
        self.acceptor = Acceptor(acceptor_config(config), self.ingest)
        self.forwarder = Forwarder(config, self.queue, self.metrics)
        self.http = HttpServer(config.http.host, config.http.port, self.metrics, self.readiness)
        self.api = OperatorApi(
            self.queue, lambda: self.config, self.storage_dir, config_path, self.reload_problems
        )
        self.api.install(self.http)
        self.watcher = ConfigWatcher(
            lambda: watched_paths(self.config_path, self.config),
            lambda: self.reload(reason="file_changed"),
            interval=_watch_interval() or WATCH_INTERVAL,
        )
        self._reload_lock = anyio.Lock()
        self.metrics.set_snapshot_source(self.snapshot)
        self.metrics.set_destinations(config.destinations)
        self.metrics.set_rules(config.rules.names)
        self.metrics.config_loaded()
        self.dicom_port: int | None = None
        self.http_port: int | None = None
        # what takes a new config at a reload, in this order
        self.reconfigurable: list[Reconfigurable] = [
            _AcceptorSettings(self.acceptor),
            _HoldSettings(self.queue),
            _MetricsSettings(self.metrics),
            self.forwarder,
            _LoggingSettings(),
        ]
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
        unreachable = self.queue.problem()
        if unreachable is not None:
            problems.append(f"the queue database is unreachable: {unreachable}")
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
            # HTTP first: /readyz answers (503, with the reason) while the queue opens,
            # e.g. while a cluster node waits for its database
            if self.config.http.enabled:
                self.http_port = await tg.start(self.http.serve)
            await tg.start(self.queue.run)
            self._queue_running = True
            await tg.start(self.forwarder.run)
            self.dicom_port = await tg.start(self.acceptor.serve)
            tg.start_soon(self._signals)
            if _watch_interval() > 0:
                self.watcher.mark()
                tg.start_soon(self.watcher.run)
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

    @property
    def shutdown_grace(self) -> float:
        if self._shutdown_grace is not None:
            return self._shutdown_grace
        return self.config.shutdown_grace

    async def _graceful_stop(self) -> None:
        """One grace period for everything: associations in flight may go on until it
        ends (then the rest are aborted, partial data sets discarded), workers finish
        their current send within what is left of it."""
        grace = self.shutdown_grace
        deadline = anyio.current_time() + grace
        logs.event(log, logging.INFO, "stopping", grace=grace)
        self.dicom_port = None
        self.acceptor.stop_accepting()
        self.forwarder.stop()  # no new batches; current sends go on
        await self.acceptor.drain(grace)
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            await self.forwarder.done.wait()  # each worker finishes its current send first

    def _banner(self) -> None:
        cfg = self.config
        logs.event(
            log,
            logging.INFO,
            "started",
            version=__version__,
            node=cfg.node_id,
            ae_title=cfg.ae_title,
            queue=cfg.queue.backend,
            dicom=f"{cfg.listen.host}:{self.dicom_port}",
            tls=cfg.listen.tls is not None,
            http=f"{cfg.http.host}:{self.http_port}" if self.http_port else "off",
            storage=str(self.storage_dir),
            rules=len(cfg.rules),
            destinations=",".join(f"{n}={d.address}" for n, d in cfg.destinations.items()) or "-",
        )

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                if sig == signal.SIGHUP:
                    await self.reload()
                else:
                    logs.event(log, logging.INFO, "signal", signal=signal.Signals(sig).name)
                    self.stop()
                    return

    async def reload(self, reason: str = "signal") -> bool:
        """Load the config file again; swap it in when valid. Returns success."""
        return not await self.reload_problems(reason)

    async def reload_problems(self, reason: str = "api") -> list[str]:
        """Reload; returns the problems that refused it (empty: reloaded)."""
        async with self._reload_lock:
            try:
                return await self._reload(reason)
            except Exception as e:  # a reload must never take the router down
                log.exception("config reload failed")
                self.metrics.config_reloaded(False)
                problem = f"{self.config_path}: cannot reload: {type(e).__name__}: {e}"
                logs.event(
                    log, logging.ERROR, "config_reload_refused", reason=reason, error=problem
                )
                return [problem]

    async def _reload(self, reason: str) -> list[str]:
        self.watcher.mark()  # the state read from now on
        problems: list[str]
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
            found = await anyio.to_thread.run_sync(runtime_problems, self.config_path, new)
            problems = [str(p) for p in found]
        except ConfigError as e:
            problems = [str(p) for p in e.problems]
        except OSError as e:
            problems = [f"{self.config_path}: cannot read: {e}"]
        if problems:
            for p in problems:
                logs.event(log, logging.ERROR, "config_reload_problem", problem=p)
            self.metrics.config_reloaded(False)
            logs.event(
                log,
                logging.ERROR,
                "config_reload_refused",
                reason=reason,
                problems=len(problems),
                running="the previous config",
            )
            return problems
        old = self.config
        new, changed = keep_restart_only(old, new)
        if changed:
            logs.event(
                log, logging.WARNING, "config_reload_needs_restart", settings=",".join(changed)
            )
        # The swap: no await from here on, so every task sees the old or the new config.
        self.config = new
        apply(self.reconfigurable, old, new)
        added = [d for d in new.destinations if d not in old.destinations]
        removed = [d for d in old.destinations if d not in new.destinations]
        logs.event(
            log,
            logging.INFO,
            "config_reloaded",
            reason=reason,
            rules=len(new.rules),
            destinations=len(new.destinations),
            added=",".join(added) or "-",
            removed=",".join(removed) or "-",
        )
        return []


class _AcceptorSettings:
    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor

    def reconfigure(self, old: Config, new: Config) -> None:
        self.acceptor.update(acceptor_config(new, tls=False))  # the running TLS stays


class _HoldSettings:
    def __init__(self, queue: QueueBackend) -> None:
        self.queue = queue

    def reconfigure(self, old: Config, new: Config) -> None:
        self.queue.set_holds(new.holds)  # instances committed from now on


class _MetricsSettings:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def reconfigure(self, old: Config, new: Config) -> None:
        self.metrics.set_destinations(new.destinations)
        self.metrics.set_rules(new.rules.names)
        self.metrics.config_reloaded(True)


class _LoggingSettings:
    def reconfigure(self, old: Config, new: Config) -> None:
        if new.logging != old.logging:
            logs.setup(new.logging.format, new.logging.level, new.node_id)


async def serve(config_path: Path) -> int:
    config = load_config(config_path)
    logs.setup(config.logging.format, config.logging.level, config.node_id)
    router = Router(config_path, config)
    await router.run()
    return 0
