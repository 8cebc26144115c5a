"""The SQLite engine: one file, WAL, one writer thread, group commit.

Every method is an op run by relay.store._sqlite_writer.Writer: concurrent calls share one
transaction and one fsync, and each call's writes commit together or not at all. The long
reads (history, events, dead letters) run on a reader connection of their own instead
(relay.store._sqlite_reader), so that commits do not wait for them. Several processes
may share the file (`relay dlq replay` while `relay serve` runs): WAL lets readers run beside the
writer, and BEGIN IMMEDIATE with a busy timeout makes writers queue instead of failing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from functools import partial
from pathlib import Path

from relay.errors import StoreReplaced, StoreUnavailable
from relay.model import Notification, Run, Silence, SilencePage
from relay.store import BirthLease, Decide, HistoryQuery, Observed, Replica
from relay.store import _sqlite_outbox as outbox
from relay.store._engines import REPLAY_BATCH, hand_over
from relay.store._rows import HAND_BACK, to_notification, to_silence
from relay.store._sqlite_connect import (
    BUSY_TIMEOUT_MS,
    connect,
    connect_reader,
    identity,
    schema_version,
    undone_on_failure,
)
from relay.store._sqlite_groups import GroupOps
from relay.store._sqlite_history import event_rows, history_rows
from relay.store._sqlite_holders import HOLDER_WAIT_S, holder_lock, wait_for
from relay.store._sqlite_kv import KvOps, in_chunks
from relay.store._sqlite_lock import ServeLock, WriteLock
from relay.store._sqlite_marks import MarkOps
from relay.store._sqlite_prune import PRUNE_BATCH, prune, prune_notifications
from relay.store._sqlite_reader import Reader
from relay.store._sqlite_rows import insert_silence, silences_sql
from relay.store._sqlite_schema import SCHEMA_VERSION
from relay.store._sqlite_writer import Writer

_CLAIM_HOLDERS = (
    "SELECT DISTINCT lease_holder FROM outbox WHERE state = 'pending' AND lease_until > 0"
)
# A restart's claims go back as a stop's do (HAND_BACK): a digest cut short goes again as it was.
_RELEASE = f"""
    UPDATE outbox SET lease_until = {HAND_BACK} WHERE state = 'pending' AND lease_until > 0
"""  # noqa: S608


class SQLiteStore(MarkOps, GroupOps, KvOps):
    """The Store on one SQLite file.

    max_pages caps the database size (PRAGMA max_page_count), for quotas and tests; beyond it
    writes fail with StoreUnavailable. `commits` counts committed transactions (batches).
    """

    shared = False  # one `relay serve` a file (relay.store._sqlite_lock)

    def __init__(
        self,
        path: Path | str,
        *,
        max_pages: int | None = None,
        holder: str = "",
        upgrade: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self._upgrade = upgrade  # False: an older schema is refused, not migrated
        self._read_only = read_only  # no writer: the reads (dead letters, history, silences)
        self._max_pages = max_pages
        self._holder = holder  # recorded with each claim: release_leases(holder) frees them
        self._writer = Writer(WriteLock(self.path, BUSY_TIMEOUT_MS / 1000), self.path)
        self._reader = Reader()  # long reads (history, dead letters) beside the writer
        self._alive: WriteLock | None = None  # with a holder: held while this process lives
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened

    @property
    def commits(self) -> int:
        """Transactions committed since this store was created; one per group-commit batch."""
        return self._writer.commits

    def delivering(self, channels: Collection[str]) -> None:
        """Nothing to tell: one serve a file, its workers each owning their channels."""

    async def replicas(self) -> list[Replica]:
        """None: one serve owns the file (its workers each their channels)."""
        return []

    def sharers(self, channel: str) -> int:
        """1: no other process delivers `channel` from this file."""
        return 1

    async def open(self) -> None:
        """Create the file and its directory if needed, then create or migrate the schema; for
        `read_only`, open the file there is for reading only (a full disk refuses no read)."""
        if self._read_only:
            await self._reader.start(lambda: connect_reader(self.path, alone=True))
            self._file = identity(self.path)
            return
        with undone_on_failure(self.path):
            await self._writer.start(
                lambda: connect(self.path, self._max_pages, upgrade=self._upgrade)
            )
            try:
                await self._reader.start(lambda: connect_reader(self.path))
            except BaseException:
                await self._writer.stop()
                raise
        self._file = identity(self.path)
        if self._holder:  # a predecessor orphaned by a parent's kill -9 exits first
            self._alive = holder_lock(self.path, self._holder, 0.0)
            await wait_for(self._alive, HOLDER_WAIT_S)

    async def close(self) -> None:
        """Finish queued operations and close the file; later calls raise StoreUnavailable."""
        try:  # the reader first: the writer's close, the last, checkpoints and removes the -wal
            await self._reader.stop()
        finally:
            await self._writer.stop()
        if self._alive is not None:
            self._alive.close()
            self._alive = None

    async def lacking(self) -> None:
        """Nothing: a file relay cannot write is refused at open, or said by a failed commit."""

    async def ping(self) -> None:
        def ping(conn: sqlite3.Connection) -> None:
            self._still_the_file()
            conn.execute("SELECT 1").fetchone()

        await self._writer.run(ping)

    async def observe(
        self, runs: Sequence[Run], decide: Decide, now: float, lease: BirthLease | None = None
    ) -> list[Observed]:
        batch, holder = list(runs), self._holder

        def observe(conn: sqlite3.Connection) -> list[Observed]:
            self._still_the_file()
            return outbox.lease_at_birth(
                conn, outbox.observe(conn, batch, decide, now), lease, holder, now
            )

        if lease is None:
            return await self._writer.run(observe)
        # the writer settles every op it is given, the caller cancelled or not: no task needed
        return await self._writer.run(observe, settled=lambda done: hand_over(lease, done))

    async def claim(
        self, channel: str, now: float, limit: int, lease_s: float
    ) -> list[Notification]:
        """Up to `limit` due rows of `channel`, and with any row of a digest group every due row
        of that group in the same transaction: `serve --workers` share a channel, and two of them
        each taking part of one group would send two digests (as PostgreSQL claims, too)."""
        lease = (now + lease_s, self._holder, now)
        rows = await self._writer.run(lambda conn: outbox.claim(conn, channel, now, limit, lease))
        claimed = [to_notification(row) for row in rows]
        claimed.sort(key=lambda n: (n.not_before, n.created_at, n.id))
        return claimed

    async def next_due(self, channel: str) -> float | None:
        row = await self._writer.run(
            lambda conn: conn.execute(outbox.NEXT_DUE, (channel, channel)).fetchone()
        )
        return None if row[0] is None else float(row[0])

    async def dead_letters(self, limit: int = 1000) -> list[Notification]:
        rows = await self._reader.run(
            lambda conn: conn.execute(
                "SELECT * FROM outbox WHERE state = 'dead' ORDER BY updated_at DESC, id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [to_notification(row) for row in rows]

    async def replay(self, ids: Sequence[str] | None, now: float) -> int:
        """A batch per transaction (REPLAY_BATCH), so that ingest goes on between them."""
        if ids is not None:  # json_each ends a text at a NUL (`ntf_x\0y` would name ntf_x)
            named = [ident for ident in ids if "\x00" not in ident]
            size = REPLAY_BATCH
            batches = [named[start : start + size] for start in range(0, len(named), size)]
            replays = [partial(outbox.replay_named, ids=batch, now=now) for batch in batches]
            return sum([await self._writer.run(replay) for replay in replays])
        moved, more = 0, outbox.FIRST_DEAD  # the key of the last row replayed, None: done
        while more is not None:
            count, more = await self._writer.run(partial(outbox.replay_dead, after=more, now=now))
            moved += count
        return moved

    async def requeue_recoveries(self, ids: Sequence[str], now: float) -> int:
        return await self._writer.run(lambda conn: outbox.requeue_recoveries(conn, list(ids), now))

    async def release_leases(self, holder: str | None = None) -> int:
        """One replica: every lease (outbox claims, feed leadership) is a dead process's, but
        for the claims of a delivery worker still alive (its parent was killed with -9: it
        finishes its sends, then exits, and its successor frees what it left); with `holder`,
        the claims of one dead delivery worker (opened with that holder)."""

        def forget_dead(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM leases")
            holders = conn.execute(_CLAIM_HOLDERS).fetchall()
            alive = [h for (h,) in holders if h and not self._holder_free(h)]
            keep = ",".join("?" * len(alive))
            sql = f"{_RELEASE} AND COALESCE(lease_holder, '') NOT IN ({keep})"
            return int(conn.execute(sql, alive).rowcount)

        if holder is None:
            return await self._writer.run(forget_dead)
        sql = _RELEASE + " AND lease_holder = ?"
        return await self._writer.run(lambda conn: int(conn.execute(sql, (holder,)).rowcount))

    def _still_the_file(self) -> None:
        """Refuse new work once the database file was deleted or replaced (`rm relay.db`, a
        backup restored over it): the open connection goes on writing to the old file, which
        is gone at the next start with every update committed to it since."""
        if self._file is not None and identity(self.path) != self._file:
            raise StoreReplaced

    def _holder_free(self, holder: str) -> bool:
        lock = holder_lock(self.path, holder, 0.0)
        try:
            return lock.free()
        finally:
            lock.close()

    async def get(self, notification_id: str) -> Notification | None:
        # opened read-only (`relay history --before`), a read goes to the reader: no writer
        runner = self._reader if self._read_only else self._writer
        row = await runner.run(
            lambda conn: conn.execute(
                "SELECT * FROM outbox WHERE id = ?", (notification_id,)
            ).fetchone()
        )
        return None if row is None else to_notification(row)

    async def counts(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            # the scrape's reading (relay_store_up, relay_ready): a deleted file's is no store
            self._still_the_file()
            return conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()

        rows = await self._writer.run(read)
        counts = {"pending": 0, "sent": 0, "dead": 0, "muted": 0}
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def oldest_pending(self, now: float) -> float | None:
        value = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT MIN(CASE WHEN group_key IS NOT NULL AND attempts = 0 THEN not_before"
                " ELSE created_at END) FROM outbox"
                " WHERE state = 'pending' AND NOT (group_key IS NOT NULL AND attempts = 0"
                " AND not_before > ?)",
                (now,),
            ).fetchone()[0]
        )
        return None if value is None else float(value)

    async def add_silence(self, silence: Silence) -> bool:
        return await self._writer.run(lambda conn: insert_silence(conn, silence))

    async def silences(
        self, now: float, *, include_expired: bool = False, page: SilencePage | None = None
    ) -> list[Silence]:
        sql, params = silences_sql(now, include_expired, page)
        # on the reader, beside the writer (a read-only store has no writer), parsed there too:
        # every silence ever (50,000) is a long read
        return await self._reader.run(
            lambda conn: [to_silence(row) for row in conn.execute(sql, params)]
        )

    async def silences_version(self) -> int:
        return await self._reader.run(
            lambda conn: int(conn.execute("SELECT n FROM silences_changes").fetchone()[0])
        )

    async def silence(self, silence_id: str) -> Silence | None:
        # on the reader: a read-only store (`relay silence list --after ID`) has no writer
        row = await self._reader.run(
            lambda conn: conn.execute(
                "SELECT * FROM silences WHERE id = ?", (silence_id,)
            ).fetchone()
        )
        return None if row is None else to_silence(row)

    async def change_silence(self, silence: Silence, now: float) -> bool:
        sql = (
            "UPDATE silences SET starts_at = ?, ends_at = ?, comment = ?"
            " WHERE id = ? AND ends_at > ?"
        )
        values = (silence.starts_at, silence.ends_at, silence.comment, silence.id, now)
        return await self._writer.run(lambda conn: conn.execute(sql, values).rowcount == 1)

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        def expire(conn: sqlite3.Connection) -> sqlite3.Row | None:
            conn.execute(
                "UPDATE silences SET starts_at = MIN(starts_at, ?), ends_at = MIN(ends_at, ?)"
                " WHERE id = ?",
                (now, now, silence_id),
            )
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM silences WHERE id = ?", (silence_id,)
            ).fetchone()
            return row

        row = await self._writer.run(expire)
        return None if row is None else to_silence(row)

    async def history(self, query: HistoryQuery) -> list[Notification]:
        return await self._reader.run(lambda conn: history_rows(conn, query))

    async def events(self, notification_id: str) -> list[dict[str, object]]:
        return await self._reader.run(lambda conn: event_rows(conn, notification_id))

    async def prune(self, before: float) -> int:
        """A batch of notifications per transaction, so that ingest goes on between them."""
        removed = 0
        while True:
            batch = await self._writer.run(
                lambda conn: prune_notifications(conn, before, PRUNE_BATCH)
            )
            removed += batch
            if batch < PRUNE_BATCH:
                break
        await self._writer.run(lambda conn: prune(conn, before))
        return removed

    async def runs_updated_ms(self, run_ids: Collection[str]) -> dict[str, int]:
        sql = "SELECT run_id, updated_at_ms FROM runs WHERE updated_at_ms IS NOT NULL AND run_id IN"
        rows = await self._writer.run(lambda conn: in_chunks(conn, sql, (), list(run_ids)))
        return {str(run_id): int(ms) for run_id, ms in rows}

    async def migrate(self) -> tuple[int, int]:
        """`relay migrate`: create or migrate the schema, then close; (version before, after)."""
        before: list[int] = []  # the write lock too: without it SQLite's busy handler (sleeps
        # of up to 100 ms) lost every try to a busy `relay serve` and failed with SQLITE_BUSY
        writer = Writer(WriteLock(self.path, BUSY_TIMEOUT_MS / 1000), self.path)
        serving = ServeLock(self.path)
        try:
            with undone_on_failure(self.path):
                await writer.start(lambda: self._migrating(serving, before))
            await writer.stop()
        finally:
            serving.close()
        return before[0], SCHEMA_VERSION

    def _migrating(self, serving: ServeLock, before: list[int]) -> sqlite3.Connection:
        """`relay migrate`'s connection, refused when the schema would move under a `relay
        serve` (the older release still running, which would then not start again): one
        holds the serve lock. Held by this process meanwhile, so none starts mid-way."""
        if self.path.exists() and serving.open() is None and not serving.take():
            version = schema_version(self.path)
            if 0 < version < SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"store schema version {version} is older than this relay's"
                    f" ({SCHEMA_VERSION}), and a relay serve runs on this database: stop it"
                    " first (the new relay serve migrates it at its start, or run relay"
                    " migrate then); migrated under it, the running relay would not start again"
                )
        return connect(self.path, self._max_pages, before)
