"""A running relay's silences are read again only when they changed, on every engine: the
store's silences version moves with each write to them, by any process or replica, and the
cache compares it before reading them all (8,000 read again every 0.25 s: a fifth of a core)."""

from __future__ import annotations

from relay.model import Silence
from relay.silences import RELOAD_S, SilenceCache, silenced_by
from relay.store import Store
from tests.store.conftest import Engine

NOW = 1_800_000_000.0


def silence(ident: str, starts_at: float, ends_at: float) -> Silence:
    return Silence(ident, {"task": ("billing/*",)}, starts_at, ends_at, NOW)


async def test_the_silences_version_moves_with_every_write_of_another_process(
    engine: Engine, store: Store
) -> None:
    other = engine.make()  # another process on the file, another replica on the database
    await other.open()
    try:
        seen = [await store.silences_version()]
        await other.kv_put("realtime", "position", "1", NOW)  # another write: no change to them
        assert await store.silences_version() == seen[-1]
        await other.add_silence(silence("sil_a", NOW, NOW + 60))
        seen.append(await store.silences_version())
        await other.expire_silence("sil_a", NOW + 1)
        seen.append(await store.silences_version())
        assert await other.prune(before=NOW + 2) == 0  # notifications pruned: none
        seen.append(await store.silences_version())  # the expired silence is gone
        assert len(set(seen)) == 4, seen
        assert await store.silences(NOW, include_expired=True) == []
    finally:
        await other.close()


async def test_the_cache_reads_the_silences_only_when_another_process_changed_them(
    engine: Engine, store: Store
) -> None:
    other = engine.make()
    await other.open()
    cache = SilenceCache(store.silences, version=store.silences_version)
    try:
        await other.add_silence(silence("sil_a", NOW, NOW + 60))
        assert [s.id for s in await cache.current(NOW)] == ["sil_a"]
        for n in range(1, 20):  # reloaded, never read again: nothing changed
            await cache.current(NOW + n * RELOAD_S)
        assert (cache.reloads, cache.reads) == (20, 1)
        await other.add_silence(silence("sil_b", NOW, NOW + 60))
        assert [s.id for s in await cache.current(NOW + 20 * RELOAD_S)] == ["sil_a", "sil_b"]
        await other.expire_silence("sil_a", NOW + 5)
        assert [s.id for s in await cache.current(NOW + 21 * RELOAD_S)] == ["sil_b"]
        assert (cache.reloads, cache.reads) == (22, 3)
    finally:
        await other.close()


async def test_silences_kept_unread_start_and_end_at_their_times(store: Store) -> None:
    """Silences end (and start) by the clock, with no write: the ones kept still do so."""
    await store.add_silence(silence("sil_later", NOW + 10, NOW + 20))
    cache = SilenceCache(store.silences, version=store.silences_version)

    async def muted(now: float) -> str | None:
        index = await cache.index(now)
        return silenced_by(
            index,
            now,
            rule="r",
            channel="c",
            task="billing/charge",
            tags=(),
            status="FAILED",
            event="run",
        )

    assert [await muted(NOW + t) for t in (0, 5, 10, 15, 20, 25)] == [
        None,
        None,
        "sil_later",
        "sil_later",
        None,
        None,
    ]
    assert (cache.reloads, cache.reads) == (6, 1)
