"""A throwaway PostgreSQL server for tests: Debian's binaries, a temporary data
directory, a unix socket in that directory (no TCP port to collide with), fsync on.

The server runs as an unprivileged user (PostgreSQL refuses to run as root): the
``postgres`` system user the Debian package creates, through ``runuser``. ``kill`` stops
it like a power cut (``pg_ctl stop -m immediate``: no checkpoint, crash recovery at the
next start) and ``start`` brings it back on the same data directory.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PgServer", "find_bindir", "unprivileged_user"]

RUN_AS = "postgres"
SUPERUSER = "router"
_counter = itertools.count(1)


def find_bindir() -> Path | None:
    """The newest installed /usr/lib/postgresql/<version>/bin holding initdb, or None."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = Path(initdb).parent.parent.name
        with contextlib.suppress(ValueError):
            found.append((float(version), Path(initdb).parent))
    if not found:
        return None
    return max(found)[1]


def unprivileged_user() -> pwd.struct_passwd:
    """The ``postgres`` system user (Debian's package creates it); made if missing."""
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return pwd.getpwnam(RUN_AS)


class PgServer:
    """One server; ``start()`` once (initdb the first time), ``stop()`` at the end."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = unprivileged_user()
        # in /tmp: short (a socket path has < 108 bytes) and traversable by that user
        self.root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._initialised = False

    @property
    def dsn(self) -> str:
        """libpq conninfo of the server's default database."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"host={self.root} port=5432 user={SUPERUSER} dbname={dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user.pw_name, "--", *cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        return subprocess.run(
            cmd, cwd=self.root, env=env, capture_output=True, text=True, check=check, timeout=120
        )

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",  # the cluster is new and throwaway; the server itself syncs
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\nlisten_addresses = ''\n"
                f"unix_socket_directories = '{self.root}'\n"
                "port = 5432\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                "full_page_writes = on\n"
                "max_connections = 100\n"
                "shared_buffers = 32MB\n"
            )
        self._initialised = True

    def start(self) -> None:
        """Start the server (initdb first, once); returns when it accepts connections."""
        if not self._initialised:
            self._initdb()
        res = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start", check=False
        )
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()}\n{self.log_tail()}")

    def kill(self) -> None:
        """Stop at once without a checkpoint (a crash, as far as the data is concerned)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server (if running) and remove its directory (at once: without the
        shutdown checkpoint, which would sync data about to be deleted)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def create_database(self) -> str:
        """A new empty database; returns its DSN."""
        name = f"t{os.getpid()}_{next(_counter)}"
        self._psql(f"CREATE DATABASE {name}")
        return self.dsn_for(name)

    def create_schema(self) -> str:
        """A DSN of the default database whose connections see only a new empty schema
        (``search_path``): as good as a new database for the tables and sequences of one
        test, and instant, where CREATE DATABASE copies and syncs a template."""
        name = f"t{os.getpid()}_{next(_counter)}"
        self._psql(f"CREATE SCHEMA {name}")
        return f"{self.dsn} options='-csearch_path={name}'"

    def _psql(self, sql: str) -> None:
        res = self._run(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn, "-c", sql, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(f"{sql} failed: {res.stderr.strip()}")
