"""The silences a running relay applies: SilenceCache reloads them from the store (at most
every RELOAD_S, at once after invalidate) and keeps them filed in a SilenceIndex."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from relay.errors import StoreUnavailable
from relay.logs import CountedLines
from relay.model import Silence
from relay.silences.index import SilenceIndex

log = logging.getLogger("relay.silences")

RELOAD_S = 0.25  # how stale a running relay's silences may be (`relay silence add` waits it out)
_RELOAD = "reload"  # the key of the failed reloads in a SilenceCache's CountedLines


class SilenceCache:
    """The silences that may apply now, reloaded at most every `ttl_s` (another process, such as
    `relay silence add`, may have changed them) and at once after `invalidate()`.

    A reload the store cannot answer (its pool taken by CLI commands, a blip) keeps the
    silences last read, until the next reload: it raised into every delivery and intake in the
    meantime, and a delivery's rows then waited out their lease (5 min). Each silence still
    ends at its own time, as silenced_by checks it; only one added meanwhile is not seen yet.

    With `version` (Store.silences_version), a reload reads the silences again only when it
    moved: 8,000 read and compared again every `ttl_s` while nothing changed cost ~50 ms of
    CPU each, a fifth of a core. The ones kept still start and end at their own times.
    """

    def __init__(
        self,
        load: Callable[[float], Awaitable[list[Silence]]],
        ttl_s: float = RELOAD_S,
        *,
        version: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._load = load
        self._version = version
        self._version_read: int | None = None  # the version of _silences, None: not known
        self._ttl_s = ttl_s
        self._silences: list[Silence] = []
        self._index = SilenceIndex([])  # _silences, filed
        self._loaded_at: float | None = None  # None: read at the next call (invalidate)
        self._read = False  # whether _silences was ever read (they are kept if a reload fails)
        self._reading: asyncio.Future[None] | None = None  # the reload callers share
        self._generation = 0  # bumped by invalidate(): a reload begun before it is not kept
        self.reloads = 0  # reloads begun
        self.reads = 0  # reloads that read the silences (not only their version)
        self._lines = CountedLines()  # the failed reloads: their lines and counts

    async def current(self, now: float) -> list[Silence]:
        """The silences, reloaded when stale. Callers meanwhile share one reload: each
        delivery and intake started its own, and 1,000 silences parsed by each of 50
        channels' sends held the event loop for seconds (ingest's 202s waited)."""
        # a clock set back since the last read reads again too, not once it caught up
        if self._loaded_at is None or not 0 <= now - self._loaded_at < self._ttl_s:
            if self._reading is None:
                self.reloads += 1
                self._reading = asyncio.ensure_future(self._reload(now, self._generation))
                self._reading.add_done_callback(_retrieved)
            await asyncio.shield(self._reading)
        return self._silences

    async def index(self, now: float) -> SilenceIndex:
        """The silences of `current`, filed (at each reload) for a send to look only at those
        that may fit it."""
        await self.current(now)
        return self._index

    async def _reload(self, now: float, generation: int) -> None:
        try:
            silences = await self._read_changed(now, generation)
        except StoreUnavailable as exc:
            if not self._read:
                raise  # nothing to go on: not knowing the silences is not "none"
            self._tell_failed(exc)
            silences = self._silences
        else:
            self._tell_settled()
        finally:
            if generation == self._generation:
                self._reading = None
        if generation == self._generation:
            if silences is not self._silences and silences != self._silences:
                self._index = SilenceIndex(silences)  # filing 10,000 again: ~0.1 s
                self._silences = silences
            self._read, self._loaded_at = True, now

    async def _read_changed(self, now: float, generation: int) -> list[Silence]:
        """The silences, read again unless their version shows no change since the last read.
        The version is read first: a change committed between the two reads is read again at
        the next reload, never missed."""
        version = None if self._version is None else await self._version()
        if version is not None and version == self._version_read and self._read:
            return self._silences
        self.reads += 1
        silences = await self._load(now)
        if generation == self._generation:
            self._version_read = version
        return silences

    def _tell_failed(self, exc: StoreUnavailable) -> None:
        """A reload failed: said when it starts, then at most every LINE_EVERY_S with the
        failures since (a line a reload, every RELOAD_S, through a store outage)."""
        failures = self._lines.due(_RELOAD, until_settled=True)
        if failures is not None:
            extra = {"error": str(exc), "failures": failures}
            log.warning("silences not reloaded; the last read kept", extra=extra)

    def _tell_settled(self) -> None:
        failures = self._lines.settled(_RELOAD)
        if failures is not None:
            log.info("silences reloaded again", extra={"failures": failures})

    def invalidate(self) -> None:
        self._loaded_at = None
        self._version_read = None  # read the silences themselves, whatever their version
        self._reading = None  # a reload under way may predate the change: the next call reads
        self._generation += 1


def _retrieved(done: asyncio.Future[None]) -> None:
    """Mark a shared reload's failure seen, also when every caller was cancelled meanwhile."""
    if not done.cancelled():
        done.exception()
