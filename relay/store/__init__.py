"""The Store: run state, the outbox and dead letters, behind one interface.

Engines: SQLite (embedded default, one replica) and PostgreSQL (any number of replicas sharing
one database). Every method is a coroutine; the engine owns its I/O. `observe` is the durable
boundary: a run's new state and the notifications it owes are committed in one transaction before
it returns (SQLite: concurrent calls share commits, group commit).

This module is the interface (the Store protocol and the values it takes and returns); opening
the engine a RELAY_STORE_URL names is relay.store.opening; what the engines share to write the
outbox, relay.store._engines.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relay.model import (
    Decision,
    Notification,
    Run,
    RunState,
    Silence,
    SilencePage,
    Timing,
)

Decide = Callable[[Run, RunState | None], Decision]
# The rows of one message (a notification, or a digest's every row), each with its attempts: its
# outcome is written whole or not at all, else a kill between rows would leave part of a digest
# marked and the rest sent again as a smaller digest under a new id.
Tries = Sequence[tuple[str, int]]  # (notification id, attempts)


@dataclass(frozen=True)
class HistoryQuery:
    """Which notifications `Store.history` returns, newest first."""

    run_id: str | None = None
    rule: str | None = None
    channel: str | None = None
    state: str | None = None
    since: float | None = None
    # a page's cursor: the (created_at, id) of the last notification of the page before; only
    # those after it in the order (created_at newest first, then id) are returned
    after: tuple[float, str] | None = None
    limit: int = 200


@dataclass(frozen=True)
class Replica:
    """A live process on a shared store (`Store.replicas`): its heartbeat's holder name
    (host:pid:random), the channels it delivers (None: all of them, a relay older than their
    naming) and how long until its heartbeat expires unrenewed."""

    holder: str
    channels: tuple[str, ...] | None
    expires_in_s: float


@dataclass(frozen=True)
class KvWrite:
    """Changes to the key-value state that commit together (`Store.kv_write`), applied in this
    order: every namespace in `clear` emptied, the `delete` keys removed, the `put` keys stored."""

    put: Sequence[tuple[str, str, str]] = ()  # (namespace, key, value)
    delete: Sequence[tuple[str, str]] = ()  # (namespace, key)
    clear: Sequence[str] = ()  # whole namespaces


@dataclass
class Observed:
    """What observing one run update did: stale updates change nothing."""

    run_id: str
    stale: bool
    notifications: list[Notification] = field(default_factory=list)
    leased: list[Notification] = field(default_factory=list)  # of those, leased at birth


@dataclass(frozen=True)
class BirthLease:
    """Lease fresh notifications to this process in the transaction that creates them, so the
    delivery loops that asked (`slots`: channel → how many at most) send them without a claim:
    one store round trip less between the 202 and the send. Only a row a claim would take at
    once qualifies: pending, due now, not in a digest group, not a recovery."""

    slots: Mapping[str, int]
    until: float
    # told the rows leased once the call is over (none when its transaction failed or never
    # ran), even when the caller of `observe` was cancelled meanwhile: a leased row nobody
    # sends would wait out its lease. Called once, a loop turn after the call's result is
    # set, so that the caller (a 202) goes before the sends start.
    handed: Callable[[list[Notification]], None] = lambda leased: None

    def take(self, observed: Sequence[Observed], now: float) -> list[str]:
        """Choose, in order, the new rows to lease while the slots of their channel last; set
        each Observed's `leased` and return their ids (for the engine's one UPDATE). Called
        once per transaction attempt: a retried transaction chooses afresh."""
        left = dict(self.slots)
        for item in observed:
            item.leased = []
            for n in item.notifications:
                if left.get(n.channel, 0) > 0 and _leasable(n, now):
                    left[n.channel] -= 1
                    item.leased.append(n)
        return [n.id for item in observed for n in item.leased]


def _leasable(n: Notification, now: float) -> bool:
    return (
        n.state == "pending" and n.group_key is None and n.resolves is None and n.not_before <= now
    )


class Store(Protocol):
    # Whether other processes deliver the same channels from this store while this one runs
    # (PostgreSQL replicas; SQLite has one serve): then what one of them learns of a receiver
    # (its Retry-After, relay.holds) is read by the others as they go, not only at start.
    shared: bool

    def delivering(self, channels: Collection[str]) -> None:
        """The channels this process delivers from now on, for the others sharing the store."""

    async def replicas(self) -> list[Replica]:
        """The processes alive on the store by their heartbeats (PostgreSQL's), by holder;
        none on SQLite, which one serve (and its workers) owns."""

    def sharers(self, channel: str) -> int:
        """The processes delivering `channel` from this store, this one included, as last
        learnt: they share its rate_limit (1 on a store that is not `shared`)."""

    async def open(self) -> None:
        """Create or migrate the schema; raise StoreUnavailable if it cannot."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a round trip to the store works."""

    async def lacking(self) -> str | None:
        """Why relay cannot use a store that answers, worded with the fix (PostgreSQL: a
        privilege relay's user lacks on one of its tables), or None; StoreUnavailable if it
        cannot be asked."""

    async def observe(
        self, runs: Sequence[Run], decide: Decide, now: float, lease: BirthLease | None = None
    ) -> list[Observed]:
        """Apply `decide` to each run against its stored state and enqueue its matches; with
        `lease`, lease the new rows it chooses to this process (`Observed.leased`) and tell
        `lease.handed` of them once the call is over, cancelled or not.

        All of `runs` commit together or not at all (StoreUnavailable); other concurrent calls may
        share the same commit. Notification rows are idempotent by id. `decide` must be pure: an
        engine may call it again for the same run when it retries a transaction. A cancelled
        call may still have committed (its notifications are idempotent, so that is harmless).
        """

    async def claim(
        self, channel: str, now: float, limit: int, lease_s: float
    ) -> list[Notification]:
        """Lease up to `limit` due pending notifications of `channel`, oldest due first.

        A digest group counts as one: every due row of a group it picks is leased with it
        (beyond `limit` if need be), so that two claimers (replicas, or the loops before and
        after a reload) never split one digest between them.
        """

    async def next_due(self, channel: str) -> float | None:
        """When the channel's next pending notification is due (not_before, or its lease's end)."""

    async def mark_sent(
        self, rows: Tries, *, now: float, receipt: str | None = None, error: str | None = None
    ) -> None:
        """Record a successful send of one message and the channel's receipt: its rows (one,
        or a digest's every row) in one write, with their events; only pending rows change.
        `error`: the last failed try's of this round (quick retries), which replaces the one a
        retry recorded; None keeps that one (history's `error` outlives the send)."""

    async def postpone(
        self, notification_id: str, *, now: float, not_before: float, keep_claim: bool = True
    ) -> bool:
        """Release a pending row's lease and make it due at `not_before`: no attempt counted,
        no event (a recovery waiting for the notification it resolves). A digest's row keeps
        its claim (HAND_BACK: the digest goes again as it was, as it may have gone out) unless
        `keep_claim` is false: nothing of it was sent, and it joins the group's next digest.
        Whether it changed (see mark_retry)."""

    async def hasten(self, notification_id: str, *, now: float) -> bool:
        """Make a pending row nobody holds, due later, due at `now` (a recovery postponed to
        wait for its alert, once that alert is finished); a held row is left alone. Whether
        it changed."""

    async def hasten_retries(self, channel: str, *, now: float) -> int:
        """Make the channel's pending rows that a failed try put off (attempts > 0), and that
        nobody holds, due: its receiver answers again after an outage. Due at their creation
        (at `now` at the latest), so that they go in creation order among the rows never tried
        that are due (claims go by due time): oldest first. Rows not tried yet keep their time
        (a digest's group_wait, group_interval). How many changed."""

    async def start_afresh(self, channel: str, *, now: float) -> int:
        """Make the channel's pending rows that its receiver put off, and that nobody holds,
        due: the channel points at another receiver since (a reload, or a restart after a
        change), which owes nothing to the old one's backoffs and Retry-After. The rows tried
        (a rate limit's too) and the rows not in a digest that wait (given back when a hold
        began); a digest's rows never tried keep their time (group_wait, group_interval). Due
        at their creation, at `now` at the latest, as hasten_retries. How many changed."""

    async def mark_retry(
        self, rows: Tries, *, now: float, not_before: float, reason: str, error: str
    ) -> set[str]:
        """Keep one message's rows pending, due again at `not_before` (one write, as mark_sent).
        The ids it changed: a row finished, or (PostgreSQL) held by another replica now (this
        one was taken for dead), or whose attempts already reached the mark's or whose lease was
        handed back (this write came before, its reply lost: the row may be in a later claim's
        send now, or replayed since), is left alone."""

    async def mark_dead(self, rows: Tries, *, now: float, reason: str, error: str) -> set[str]:
        """Give up on one message: its rows are kept as dead letters, replayable (one write,
        as mark_sent). The ids it changed, as mark_retry."""

    async def marked_here(self, rows: Tries, state: str) -> set[str]:
        """The ids of `rows` in `state` with those attempts, as a mark of this store's claim
        left them: one that committed with its reply lost. A row another replica claimed since
        (this one was taken for dead) and marked alike is not among them: its outcome is that
        replica's to tell. One read, whatever the number of rows."""

    async def dead_letters(self, limit: int = 1000) -> list[Notification]: ...

    async def replay(self, ids: Sequence[str] | None, now: float) -> int:
        """Move dead notifications (all if ids is None) back to pending; return how many moved."""

    async def requeue_recoveries(self, ids: Sequence[str], now: float) -> int:
        """Move these recoveries back to pending if sent or dead (their alert was replayed);
        return how many moved."""

    async def release_leases(self, holder: str | None = None) -> int:
        """Forget the leases of a dead process: every lease when `serve` starts (None), or the
        claims of the delivery worker whose store was opened with `holder` once it died; return
        how many.

        Only a single-replica engine (SQLite) forgets anything: there every such lease is a dead
        process's. PostgreSQL returns 0: the leases may be live replicas', and expired ones are
        claimable anyway.
        """

    async def get(self, notification_id: str) -> Notification | None: ...

    async def counts(self) -> dict[str, int]:
        """Number of notifications by state: pending, sent, dead, muted."""

    async def oldest_pending(self, now: float) -> float | None:
        """Since when the longest-waiting pending notification waits: its created_at, or for a
        digest's run not tried yet its group's flush time (before that it waits by design and
        does not count); None when nothing counts."""

    async def group_flushed(
        self, group_key: str, now: float, next_at: float | None = None
    ) -> dict[str, str]:
        """Record that a group's digest went out (a later digest, of runs that joined while it
        was on its way, stays scheduled, but no sooner than `next_at`: its unclaimed rows are
        due then at the earliest); return the group's labels."""

    async def group_pace(
        self, group_key: str, sending: Sequence[str], now: float
    ) -> tuple[float | None, float | None]:
        """Before a digest of `sending` goes: when the group's last digest went out (None: none
        yet), and when the oldest run of another digest of it on its way (rows of it leased,
        by any live replica or process, or handed back for a retry with runs older than all of
        `sending`'s: it goes first, as it would have but for its failure) was queued (its
        created_at; None: none on its way)."""

    async def retime_groups(
        self, timings: Mapping[str, Timing], now: float
    ) -> tuple[list[str], int]:
        """A start or reload runs `timings` (every digest rule's): the rules whose group_wait
        or group_interval differ from those their waiting digests were scheduled with (stored
        under grouping.TIMINGS_NS by the last start or reload, of any process or replica) have
        each of their groups' waiting digests (rows not claimed, not tried yet, due after
        `now`) due when `grouping.retimed` says, the group's schedule with it; `timings` are
        stored then. One transaction, one at a time across replicas: a change is applied
        once. The rules re-timed, and how many groups it moved."""

    async def add_silence(self, silence: Silence) -> bool:
        """Store `silence`; False, and nothing written, when a silence of its id is there
        already (`relay silence import` of the same file twice)."""

    async def silences(
        self, now: float, *, include_expired: bool = False, page: SilencePage | None = None
    ) -> list[Silence]:
        """Silences not yet expired (all with include_expired), in creation order (created_at,
        then id: nothing changes either); with `page`, only those of the page."""

    async def silences_version(self) -> int:
        """A count that moves with every write to the silences, by any process or replica
        (committed with it): unchanged, `silences` would read the same rows again."""

    async def silence(self, silence_id: str) -> Silence | None:
        """The silence with this id, whatever its state; None if there is none."""

    async def change_silence(self, silence: Silence, now: float) -> bool:
        """Write `silence`'s start, end and comment over those of the stored silence of its id,
        unless that one has ended by `now`; False, nothing written, when it has or is gone."""

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        """End a silence now (kept for history); None if there is no such silence."""

    async def mark_muted(
        self, notification_id: str, *, now: float, silence_id: str, attempts: int
    ) -> bool:
        """A pending notification a silence now covers: recorded as muted, never sent. Whether
        it changed (see mark_retry). `silence_id`: the mute reason (a silence's id,
        `time_interval:…`, `inhibited:…`); `attempts`: the row's so far, for its event."""

    async def mark_held(
        self, notification_id: str, *, now: float, reason: str, error: str, attempts: int
    ) -> bool:
        """A pending notification that must not go now and waits for a replay (a recovery of a
        dead alert): recorded as dead with `reason`, its attempts left as they are, so no
        attempt is counted. Whether it changed (see mark_muted)."""

    async def history(self, query: HistoryQuery) -> list[Notification]:
        """Notifications (any state) matching the query, newest first."""

    async def events(self, notification_id: str) -> list[dict[str, object]]:
        """The life of one notification (created, muted, retry, sent, dead, replayed), in order."""

    async def prune(self, before: float) -> int:
        """Forget finished notifications, runs, groups and silences older than `before`."""

    async def runs_updated_ms(self, run_ids: Collection[str]) -> dict[str, int]:
        """The newest `updatedAt` (ms) stored for each of these runs, in one read; a run unseen,
        or seen without one, is left out."""

    async def kv_get(self, namespace: str, key: str) -> str | None:
        """Small durable state of a source or channel (a Realtime position, a Slack thread ts)."""

    async def kv_get_many(self, namespace: str, keys: Collection[str]) -> dict[str, str]:
        """kv_get of many keys of `namespace` in one read: those stored, with their values."""

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None:
        """Store `value` under (namespace, key), replacing what was there."""

    async def kv_list(self, namespace: str) -> dict[str, str]:
        """Every key of `namespace` with its value (a Realtime feed's stored rows)."""

    async def kv_write(self, write: KvWrite, now: float) -> None:
        """Apply `write` in one transaction: all of it is stored or none (StoreUnavailable)."""

    async def try_lead(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        """Take or renew the named lease for `owner` until `now + ttl_s`; True if it holds it.

        The lease is taken when it is free, expired (expires_at <= now) or already `owner`'s, and
        renewed by calling again before it ends; otherwise it stays with its holder (False). One
        owner per name across replicas: the Realtime follower of a feed. `ttl_s=0` gives up a
        lease one holds (free at once, whatever the clocks). `now` comes from the caller's
        clock: replicas need synchronised clocks (NTP), well within `ttl_s`.
        """

    async def write_if_free(self, name: str, free_since: float, write: KvWrite, now: float) -> bool:
        """Apply `write` (as kv_write) only if nobody has held the lease `name` since
        `free_since`: it has no row, or it ended (expires_at) and was last taken or handed back
        (updated_at) by then; and then delete the lease's row (free, it is as good as none).
        The check, the delete and the write are one transaction, taken before any try_lead of
        the lease that commits after it. True if it wrote.

        What a lease guards is dropped only long after its last holder, never in a handover:
        a lease free for a moment (its holder killed or stopped) is soon taken by another.
        """
