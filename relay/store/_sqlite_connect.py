"""Opening the SQLite store's file: the writer's connection (pragmas, schema migration, a probe
write) and the reader's, the file's identity, and the words for a file that cannot be opened."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from relay.errors import StoreUnavailable
from relay.store._schema_said import log_schema
from relay.store._sqlite_lock import WriteLock
from relay.store._sqlite_own import check_own
from relay.store._sqlite_schema import OWN_FILE, SCHEMA_VERSION, migrate
from relay.store._sqlite_writer import NO_SPACE, no_space, rollback, unavailable

BUSY_TIMEOUT_MS = 5000  # a writer waits this long for another process's transaction
# What the -wal is cut back to once a checkpoint let it start over: a reader holding a snapshot
# lets it grow without end, and sqlite reuses the file without truncating it, so a volume it
# had filled stayed full for good. Well above what a busy relay's -wal reaches between restarts
# (its reader keeps checkpoints from starting over at SQLite's 1,000 pages): at 4 MiB the file
# was cut and grew again under load, each fdatasync then writing its new size too (+20 µs of
# CPU per ingest request, 3 alternating pairs).
WAL_LIMIT_BYTES = 64 * 1024 * 1024


def connect(
    path: Path, max_pages: int | None, versions: list[int] | None = None, *, upgrade: bool = True
) -> sqlite3.Connection:
    """In the writer thread: open the file, set the pragmas, migrate the schema.

    `versions`, when given, receives the schema version the file had.
    """
    if path.is_dir():  # sqlite would only say SQLITE_CANTOPEN
        raise StoreUnavailable("store open failed: RELAY_STORE_URL names a directory, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"store open failed: cannot create the database directory ({exc.strerror})"
        ) from exc
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise open_failed(path, exc) from exc
    try:
        _configure(conn, max_pages)
        conn.execute("BEGIN IMMEDIATE")
        check_own(conn, upgrade=upgrade)
        version = migrate(conn, upgrade=upgrade)
        _probe_write(conn)
        conn.execute("COMMIT")
        if versions is not None:
            versions.append(version)
        log_schema(version, SCHEMA_VERSION)  # as PostgreSQL's, in relay serve's log
    except BaseException as exc:
        rollback(conn)
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise open_failed(path, exc) from exc
        raise
    return conn


@contextlib.contextmanager
def undone_on_failure(path: Path) -> Iterator[None]:
    """On an exception, remove what opening the database at `path` created (never what was
    there before): `relay serve` that could not create its store on a full disk left an empty
    relay.db and its lock file behind, and the directories made for them. The files go only
    while the database holds no table and no other process holds its write lock."""
    made = [p for p in _files_of(path) if not p.exists()]
    dirs = [d for d in path.parents if not d.exists()]  # the deepest first
    try:
        yield
    except BaseException:
        if path in made:
            _remove(path, made, dirs)
        raise


def _files_of(path: Path) -> list[Path]:
    return [path, *(Path(f"{path}-{end}") for end in ("wal", "shm", "writer.lock"))]


def _remove(path: Path, made: list[Path], dirs: list[Path]) -> None:
    lock = WriteLock(path, 0.0)
    lock.open()
    try:
        with contextlib.suppress(OSError):
            if not lock.hold() or not _holds_nothing(path):
                return  # another process's open under way, or a database made after all
            for made_file in made:
                made_file.unlink(missing_ok=True)
    finally:
        lock.close()
    for directory in dirs:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only an empty one


def _holds_nothing(path: Path) -> bool:
    """Whether the file at `path` is no database yet, or one without a table (the header of a
    journal mode set, a schema that did not fit)."""
    if not path.exists() or path.stat().st_size == 0:
        return True
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]) == 0
    except sqlite3.Error:
        return False


def schema_version(path: Path) -> int:
    """The schema version of the database at `path`, read without a write (0 if unreadable)."""
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error:
        return 0


def connect_reader(path: Path, *, alone: bool = False) -> sqlite3.Connection:
    """In the reader thread: the file the writer opened (never a new one), for reads only.
    `alone` (no writer: the store commands that only read): opened read-only and its schema
    version checked as the writer's open checks it. `relay dlq list`, `history` and `silence
    list` opened the writer, whose test write failed on a full disk: `store open failed: no
    space left ...` when the operator needed them most."""
    uri = f"file:{urllib.parse.quote(str(path))}?mode={'ro' if alone else 'rw'}"
    try:
        conn = sqlite3.connect(uri, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, uri=True)
    except sqlite3.Error as exc:
        raise open_failed(path, exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA temp_store = MEMORY")  # a large ORDER BY sorts in memory, as above
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the file itself, now
        if alone:
            _check_version(conn)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise open_failed(path, exc) from exc
        raise
    return conn


def _check_version(conn: sqlite3.Connection) -> None:
    """Refuse a schema the reads would not understand (check_own), or none at all."""
    if check_own(conn, upgrade=False) == 0:
        raise StoreUnavailable(f"store open failed: the database holds no relay tables; {OWN_FILE}")


def _probe_write(conn: sqlite3.Connection) -> None:
    """Write the schema version again: SQLite opens a file it may not write (another user's,
    chattr +i) read-only without a word, and the first update at run time failed with only
    SQLITE_READONLY. A failed write here names what relay cannot write (open_failed)."""
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def identity(path: Path) -> tuple[int, int] | None:
    """The file at `path` now, (st_dev, st_ino); None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def open_failed(path: Path, exc: sqlite3.Error) -> StoreUnavailable:
    """Why the file did not open: sqlite says SQLITE_CANTOPEN or SQLITE_READONLY of a volume
    mounted read-only or owned by another user (a root-owned Docker volume); name that."""
    kind = str(getattr(exc, "sqlite_errorname", ""))
    why = _not_writable(path) if kind.startswith(_NOT_WRITABLE) else None
    if why is None and kind.startswith(("SQLITE_FULL", "SQLITE_IOERR")) and no_space(path):
        why = NO_SPACE
    if why is None and kind == "SQLITE_NOTADB":  # a config file, a dump, another engine's file
        why = f"the file is not a SQLite database ({kind}); {OWN_FILE}"
    if why is None:
        return unavailable("store open failed", exc)
    error = StoreUnavailable(f"store open failed: {why}")
    error.__cause__ = exc
    return error


_NOT_WRITABLE = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_IOERR")


def _not_writable(path: Path) -> str | None:
    """What of the database (its directory, the file, its -wal and -shm) relay cannot write."""
    parts = [
        (path.parent, "the database directory"),
        (path, "the database file"),
        (Path(f"{path}-wal"), "the database's -wal file"),
        (Path(f"{path}-shm"), "the database's -shm file"),
    ]
    for target, what in parts:
        if not target.exists() or os.access(target, os.W_OK):
            continue
        with contextlib.suppress(OSError):
            if os.statvfs(target).f_flag & os.ST_RDONLY:
                return f"{what} is on a read-only file system"
        return f"cannot write {what} (permission denied: relay's user must be able to write it)"
    return None


def _configure(conn: sqlite3.Connection, max_pages: int | None) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StoreUnavailable(f"store open failed: journal mode is {mode}, WAL is required")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES:d}")
    conn.execute("PRAGMA foreign_keys = ON")
    # A write that changes many pages in one op spills its statement journal to a temp file
    # (/var/tmp): under a read-only root file system or with every file descriptor in use
    # (many clients), that update failed with SQLITE_CANTOPEN. Relay's temp data is small.
    conn.execute("PRAGMA temp_store = MEMORY")
    if max_pages is not None:
        conn.execute(f"PRAGMA max_page_count = {int(max_pages):d}")
