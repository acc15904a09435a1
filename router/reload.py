"""Hot reload: what a running router may change, and noticing that the files changed.

A reload loads the config file and its rule files again, validated in full (the same
problems as ``dicom-router check``, plus the TLS files of destinations actually loaded),
and only then swaps it in; see :meth:`router.app.Router.reload`. Settings bound to a
socket, a file or the queue's construction (:data:`RESTART_ONLY`) keep their running
value; the reload says which of them need a restart.

:class:`ConfigWatcher` polls the config file, the rule files and the directories of
the rule files (a new file matching a glob) every couple of seconds: a few ``stat``
calls. A change of ``stat`` alone (``touch``, an editor's swap file) does not reload:
only a change of the files' contents, or of the set of files, does.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Protocol

import anyio

from router import logs
from router.config import Config
from router.problems import Problem
from router.tls import client_context

log = logging.getLogger("router.reload")

#: (section, field) that a running router keeps; field None: the whole section.
RESTART_ONLY: tuple[tuple[str, str | None], ...] = (
    ("listen", "host"),
    ("listen", "port"),
    ("listen", "tls"),
    ("listen", "tls_handshake_timeout"),
    ("storage", "path"),
    ("storage", "inline_max_bytes"),
    ("storage", "max_queue_instances"),
    ("storage", "retention"),
    ("http", None),
    ("queue", None),
    ("node_id", None),
)


def keep_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the restart-only settings of ``old``; and the dotted names of those
    that differ (they take effect at the next start)."""
    changed: list[str] = []
    sections: dict[str, object] = {}
    for section, name in RESTART_ONLY:
        old_sec, new_sec = getattr(old, section), getattr(new, section)
        if name is None:
            if old_sec != new_sec:
                changed.append(section)
                sections[section] = old_sec
            continue
        if getattr(old_sec, name) != getattr(new_sec, name):
            changed.append(f"{section}.{name}")
            base = sections.get(section, new_sec)
            sections[section] = base.model_copy(update={name: getattr(old_sec, name)})  # type: ignore[attr-defined]
    if sections:
        new = new.model_copy(update=sections)
    return new, changed


class Reconfigurable(Protocol):
    """A part of the running router that takes a new config at a reload's swap.

    ``reconfigure`` is synchronous (no await), so every task sees either the old or
    the new config, never a mix; it must not fail on a config that loaded and passed
    :func:`runtime_problems`.
    """

    def reconfigure(self, old: Config, new: Config) -> None: ...


def apply(components: Iterable[Reconfigurable], old: Config, new: Config) -> None:
    """Hand ``new`` to every component, in order."""
    for component in components:
        component.reconfigure(old, new)


def runtime_problems(config_path: Path, cfg: Config) -> list[Problem]:
    """What only loading can tell: the TLS files of destinations must load."""
    problems = []
    for name, dest in cfg.destinations.items():
        if dest.tls is None:
            continue
        try:
            client_context(dest.tls)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            problems.append(
                Problem(
                    os.fspath(config_path),
                    None,
                    f"destinations.{name}.tls: cannot load its certificate files: {e}",
                )
            )
    return problems


def watched_paths(config_path: Path, cfg: Config | None) -> tuple[list[Path], list[Path]]:
    """(files, directories) whose change may change the config."""
    files = [Path(config_path)]
    dirs: list[Path] = []
    if cfg is not None:
        own_dir = Path(config_path).absolute().parent
        for rule in cfg.rules.rules:
            if rule.file and not rule.file.startswith("<"):
                p = Path(rule.file)
                if p not in files:
                    files.append(p)
                d = p.absolute().parent
                if d != own_dir and d not in dirs:
                    dirs.append(d)
        for profile in cfg.profiles.values():  # a new key applies like a new config
            if profile.deidentify is not None and profile.deidentify.secret_file not in files:
                files.append(profile.deidentify.secret_file)
    return files, dirs


StatKey = tuple[int, int, int] | None


def _stat(path: Path) -> StatKey:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def fingerprint(files: Iterable[Path], dirs: Iterable[Path]) -> tuple[StatKey, ...]:
    return tuple(_stat(p) for p in (*files, *dirs))


def digest(files: Iterable[Path], dirs: Iterable[Path]) -> str:
    """A hash of the files' contents and of the directories' listings."""
    h = hashlib.sha256()
    for p in files:
        h.update(os.fsencode(p) + b"\0")
        try:
            h.update(p.read_bytes())
        except OSError as e:
            h.update(f"unreadable: {e.errno}".encode())
        h.update(b"\0\0")
    for d in dirs:
        h.update(os.fsencode(d) + b"\0")
        try:
            h.update("\0".join(sorted(os.listdir(d))).encode("utf-8", "surrogateescape"))
        except OSError as e:
            h.update(f"unreadable: {e.errno}".encode())
        h.update(b"\0\0")
    return h.hexdigest()


class ConfigWatcher:
    """Calls ``on_change()`` when the contents of the config or rule files change.

    ``paths()`` returns the files and directories to watch (they change with the
    config). :meth:`mark` records the state the config is read from: call it right
    before a reload reads the files (a SIGHUP's reload included), so that the watcher
    does not load the same contents again.
    """

    def __init__(
        self,
        paths: Callable[[], tuple[list[Path], list[Path]]],
        on_change: Callable[[], Awaitable[object]],
        *,
        interval: float = 2.0,
        settle: float = 0.2,
    ) -> None:
        self.paths = paths
        self.on_change = on_change
        self.interval = interval
        self.settle = settle
        self._digest: str | None = None
        self._fingerprint: tuple[StatKey, ...] | None = None

    def mark(self) -> None:
        files, dirs = self.paths()
        self._fingerprint = fingerprint(files, dirs)
        self._digest = digest(files, dirs)

    async def run(self) -> None:
        if self._digest is None:
            self.mark()
        while True:
            await anyio.sleep(self.interval)
            files, dirs = self.paths()
            fp = fingerprint(files, dirs)
            if fp == self._fingerprint:
                continue
            # Let a writer finish (an editor writes, then renames or truncates and writes).
            await anyio.sleep(self.settle)
            if fingerprint(files, dirs) != fp:
                continue  # still changing: look again at the next tick
            self._fingerprint = fp
            if await anyio.to_thread.run_sync(digest, files, dirs) == self._digest:
                continue
            logs.event(log, logging.INFO, "config_files_changed", files=len(files), dirs=len(dirs))
            await self.on_change()
