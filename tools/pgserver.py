"""A throwaway PostgreSQL server for the tests and the benchmarks: the machine's initdb and
pg_ctl, in a temp dir.

No system service is needed (a clean CI machine with the `postgresql` package works): the
binaries come from PATH, RELAY_PG_BINDIR or /usr/lib/postgresql/*/bin; the cluster lives in a
fresh temp dir, listens on a free 127.0.0.1 port, keeps its unix socket in that dir, and is
stopped when the process ends, even by `kill -9` (a watchdog process, see `_ORPHANED`).
PostgreSQL refuses to run as root, so as root the server commands run as an unprivileged user
(`postgres` when the package created it, else `nobody`) through runuser. fsync stays on:
durability tests need real commits.

Without binaries (or as root with no other user) `start_server` raises PgUnavailable with the
reason: tests/pg.py skips the PostgreSQL tests with it, bench/chaos.py stops with it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tools.ports import free_port

SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{root}'
max_connections = 200
shared_buffers = 32MB
max_parallel_workers_per_gather = 0
fsync = on
synchronous_commit = on
log_min_messages = warning
log_lock_waits = on
"""


# The watchdog: it reads its stdin, a pipe only the process that started the server holds.
# That process says "done" when it destroys the server itself; EOF without it means the
# process died without its atexit (kill -9 of a test session, a mutation run's killed pytest),
# which left a server running for good: the watchdog stops it and removes its dir.
_ORPHANED = """
import shutil, subprocess, sys
if sys.stdin.read() != "done":
    subprocess.run(sys.argv[2:], capture_output=True, timeout=60, check=False)
    shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class PgUnavailable(RuntimeError):
    """This machine cannot run a throwaway PostgreSQL; the message says why."""


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, newest version first."""
    candidates: list[Path] = []
    if env := os.environ.get("RELAY_PG_BINDIR"):
        candidates.append(Path(env))
    if found := shutil.which("pg_ctl"):
        candidates.append(Path(found).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all((bindir / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _run_as() -> str | None:
    """The unprivileged user to run the server as (None: we are not root, run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


@dataclass
class PgServer:
    """One cluster: `url(db)` to reach it, `stop`/`start`/`restart` to break it on purpose."""

    bindir: Path
    root: Path
    port: int
    user: str | None
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_user(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def _cmd(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 (the machine's own initdb, pg_ctl)
            self._as_user(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            cwd=self.root,
        )

    def init(self) -> None:
        self._cmd(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",  # the empty cluster need not survive a power cut
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS.format(port=self.port, root=self.root))

    def ctl(self, action: str, *extra: str) -> None:
        log = str(self.root / "server.log")
        self._cmd(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", action, *extra
        )

    def start(self) -> None:
        self.ctl("start", "-t", "60")

    def promote(self) -> None:
        """A standby becomes a primary (a failover's last step); returns once it takes writes."""
        self.ctl("promote", "-t", "60")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("stop", "-m", mode, "-t", "60")

    def restart(self, mode: str = "fast") -> None:
        self.ctl("restart", "-m", mode, "-t", "60")

    def own(self, path: Path, mode: int) -> None:
        """Give a file to the server's user (a key file must not be readable by others)."""
        path.chmod(mode)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def watch(self) -> None:
        """Start the watchdog that stops this server if this process dies without `destroy`
        (its own session: a kill of this process group leaves it)."""
        stop = self._as_user(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate")
        self._watchdog = subprocess.Popen(  # noqa: S603 (this Python, our own script)
            [sys.executable, "-c", _ORPHANED, str(self.root), *stop, "-w", "stop"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def destroy(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                watchdog.stdin.write(b"done")
                watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(5)
        if self.running():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "server.log").read_text().splitlines()[-lines:])
        return ""


def start_server(*, standby: bool = False) -> PgServer:
    """initdb + start a new cluster; PgUnavailable when the machine cannot run one. `standby`:
    started in hot-standby mode (standby.signal, no primary to follow): it takes read-only
    sessions until `promote`, as a replica does in a failover before it is promoted."""
    bindir = find_bindir()
    if bindir is None:
        raise PgUnavailable(
            "PostgreSQL tests need initdb/pg_ctl (apt-get install postgresql, or RELAY_PG_BINDIR)"
        )
    user = _run_as()
    if os.geteuid() == 0 and user is None:
        raise PgUnavailable("PostgreSQL refuses to run as root and no unprivileged user exists")
    root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PgServer(bindir, root, free_port(), user)
    atexit.register(server.destroy)
    server.watch()
    try:
        server.init()
        if standby:
            signal_file = server.data / "standby.signal"
            signal_file.touch()
            server.own(signal_file, 0o600)
        server.start()
    except subprocess.CalledProcessError as exc:
        detail = f"{exc.stderr}\n{server.log_tail()}"
        server.destroy()
        raise RuntimeError(f"could not start a test PostgreSQL: {detail}") from exc
    return server
