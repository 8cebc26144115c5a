"""A running relay's silences are read again only when they changed, on every engine: the
store's silences version moves with each write to them, by any process or replica, and the
cache compares it before reading them all (8,000 read again every 0.25 s: a fifth of a core)."""

from __future__ import annotations

import pytest

from relay.errors import InputError
from relay.model import Silence, SilencePage
from relay.silences import listing
from relay.silences.cache import RELOAD_S, SilenceCache
from relay.silences.index import silenced_by
from relay.silences.listing import SilenceListing, find_silences, parse_filters
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


async def test_silences_are_read_a_page_at_a_time_after_the_last_one(store: Store) -> None:
    """Pages of `limit` from after the last one's (created_at, id): none missed or repeated,
    ties in created_at included; expired ones only when asked for."""
    for ident, created, end in [
        ("sil_c", 5.0, 50.0),
        ("sil_b", 10.0, 50.0),
        ("sil_a", 10.0, 50.0),
        ("sil_gone", 7.0, 8.0),
        ("sil_e", 30.0, 50.0),
    ]:
        await store.add_silence(Silence(ident, {"rule": ("r",)}, 1.0, end, created))
    first = await store.silences(20.0, page=SilencePage(None, 2))
    assert [s.id for s in first] == ["sil_c", "sil_a"]
    cursor = (first[-1].created_at, first[-1].id)
    assert [s.id for s in await store.silences(20.0, page=SilencePage(cursor, 2))] == [
        "sil_b",
        "sil_e",
    ]
    assert [s.id for s in await store.silences(20.0, page=SilencePage((30.0, "sil_e")))] == []
    every = await store.silences(20.0, include_expired=True, page=SilencePage((5.0, "sil_c"), 2))
    assert [s.id for s in every] == ["sil_gone", "sil_a"]


async def test_a_listing_filters_every_page_it_reads(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """find_silences reads PAGE at a time (60,000 expired ones are never held at once) and
    keeps reading until `limit` silences fit; `after` goes on where a page ended."""
    monkeypatch.setattr(listing, "PAGE", 2)
    for n in range(9):
        tags = ("env:prod",) if n % 3 == 0 else ("env:dev",)
        await store.add_silence(Silence(f"sil_{n}", {"tag": tags}, NOW + n, NOW + 60, NOW))
    prod = (parse_filters(['tag=~"env:p.*"'])[0],)
    first = await find_silences(store, SilenceListing(prod, limit=2), NOW)
    assert [s.id for s in first] == ["sil_0", "sil_3"]
    rest = SilenceListing(prod, limit=2, after="sil_3")
    assert [s.id for s in await find_silences(store, rest, NOW)] == ["sil_6"]
    others = SilenceListing(tuple(parse_filters(["tag!=env:prod", "{tag!~prod}"])))
    assert len(await find_silences(store, others, NOW)) == 6
    with pytest.raises(InputError, match="after: no silence with this id"):
        await find_silences(store, SilenceListing(after="sil_nope"), NOW)
