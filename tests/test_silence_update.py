"""`relay silence update` and `query --within`: amtool's, on a real store (SQLite;
PostgreSQL's change_silence is in tests/store/test_store.py), and a running relay muting by an
update at once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from relay.model import Silence
from relay.store.sqlite import SQLiteStore
from tests.conftest import RelayFactory, Sink
from tests.test_silence_import import relay_cli
from tests.test_silences import CONFIG, failed, wait_counts


def silences(store: str) -> dict[str, dict[str, Any]]:
    """`silence list --all -o json` of `store`, by id, the times as epoch seconds."""
    code, out, err = relay_cli(store, "silence", "list", "--all", "-o", "json")
    assert code == 0, err
    return {s["id"]: {**s, **_epochs(s)} for s in json.loads(out)}


def _epochs(silence: dict[str, Any]) -> dict[str, float]:
    from relay.silences.shapes import parse_time  # noqa: PLC0415

    return {k: parse_time(silence[k], k) for k in ("starts_at", "ends_at", "created_at")}


def added(store: str, *words: str) -> str:
    code, out, err = relay_cli(store, "silence", "add", *words)
    assert code == 0, err
    return out.strip()


async def test_an_extended_silence_keeps_muting_in_the_running_relay(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A silence about to end, extended by an hour: same id, and the running relay still mutes
    by it once its first end has passed."""
    r = await relay(CONFIG.format(url=sink.url))
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    ident = await asyncio.to_thread(added, store, "task=billing/*", "-d", "2s", "-c", "deploy")
    done = await asyncio.to_thread(relay_cli, store, "silence", "update", ident, "-d", "1h")
    assert done[:2] == (0, ident + "\n"), done[2]
    await asyncio.sleep(2.5)  # past the first end
    await r.post([failed("billing/charge", "run_muted"), failed("email/send", "run_loud")])
    [got] = await sink.wait_for(1)
    assert got.json()["run"]["id"] == "run_loud"
    await wait_counts(r, sent=1, muted=1)
    now = time.time()
    [after] = (await asyncio.to_thread(silences, store)).values()
    assert after["comment"] == "deploy" and now + 3000 < after["ends_at"] < now + 3600


async def test_a_restarted_silence_lets_through_what_follows_at_once(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """As `silence expire`, `silence update` returns once the running relay has read the change
    (also when another id it was given is unknown): the failure posted right after an active
    silence was moved to 2098 is sent, not muted by the one the relay had just read."""
    r = await relay(CONFIG.format(url=sink.url))
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    ident = await asyncio.to_thread(added, store, "task=billing/*", "-d", "1h")
    await r.post(failed("billing/charge", "run_during"))
    await wait_counts(r, pending=0)
    moved = ["silence", "update", "sil_0000000000000000", ident, "--start", "2098-01-01"]
    assert (await asyncio.to_thread(relay_cli, store, *moved, "-d", "1h"))[0] == 1
    await r.post(failed("billing/charge", "run_after"))
    counts = await wait_counts(r, pending=0)
    assert (counts["sent"], counts["muted"]) == (1, 1)


def test_pending_and_active_silences_change_in_place(tmp_path: Path) -> None:
    """A pending silence moves its start and end (`-d` from its start); an active one takes a
    new end (`-d` from now) and comment; both keep their id, matchers, author and creation."""
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    pending = added(store, "task=y", "--start", "2099-01-01", "-d", "1h", "-a", "ops")
    active = added(store, "rule=r", "-d", "10m", "-c", "first")
    before = silences(store)
    code, out, err = relay_cli(
        store, "silence", "update", pending, "--start", "2098-01-01", "-d", "2h"
    )
    assert (code, out) == (0, pending + "\n"), err
    code, out, err = relay_cli(store, "silence", "update", active, "-d", "3h", "-c", "second")
    assert (code, out) == (0, active + "\n"), err
    after, now = silences(store), time.time()
    moved = _epochs(
        {"starts_at": "2098-01-01", "ends_at": "2098-01-01T02:00:00Z", "created_at": "2098-01-01"}
    )
    assert (after[pending]["starts_at"], after[pending]["ends_at"]) == (
        moved["starts_at"],
        moved["ends_at"],
    )
    assert now + 3 * 3600 - 60 < after[active]["ends_at"] <= now + 3 * 3600
    assert after[active]["comment"] == "second"
    for ident in (pending, active):
        kept = ("matchers", "created_by", "created_at")
        assert {k: after[ident][k] for k in kept} == {k: before[ident][k] for k in kept}
    assert after[active]["starts_at"] == before[active]["starts_at"]


def test_an_ended_or_restarted_silence_is_replaced_by_a_new_one(tmp_path: Path) -> None:
    """As Alertmanager does: an expired silence is not brought back, a new one of its matchers
    mutes from now; an active one given a new start ends now, a new one takes over."""
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    ended = added(store, "task=z", "-d", "1h", "-c", "old")
    active = added(store, "tag=env:prod", "-d", "1h")
    assert relay_cli(store, "silence", "expire", ended)[0] == 0
    code, out, err = relay_cli(store, "silence", "update", ended, "-c", "reworded")
    why = "it has ended: give --duration or --until for the one replacing it"
    assert (code, out, err) == (1, "", f"{ended} not updated: {why}\n")
    code, out, err = relay_cli(store, "silence", "update", ended, "-d", "30m")
    [new] = out.split()
    assert code == 0 and f"{ended} replaced by {new} (it had ended)" in err
    code, out, err = relay_cli(
        store, "silence", "update", active, "--start", "2099-01-01", "-d", "1h"
    )
    [later] = out.split()
    assert code == 0 and f"{active} replaced by {later} (it had started;" in err
    after = silences(store)
    assert [after[i]["state"] for i in (ended, active, new, later)] == [
        "expired",
        "expired",
        "active",
        "pending",
    ]
    assert after[new]["matchers"] == after[ended]["matchers"] and after[new]["comment"] == "old"
    assert after[later]["matchers"] == {"tag": ["env:prod"]}


@pytest.mark.parametrize(
    ("words", "code", "said"),
    [
        ([], 2, "relay silence update: error: nothing to change: give --duration, --until,"),
        (["--until", "soon"], 1, "error: silence not updated: --until: expected an ISO-8601 time"),
        (["-d", "5 min"], 1, "error: silence not updated: -d '5 min': "),
        (["-d", "-1h"], 1, "error: silence not updated: -d '-1h': must be more than 0"),
        (
            ["--until", "2000-01-01"],
            1,
            "{id} not updated: --until/--duration: must be in the future",
        ),
        (
            ["--start", "2099-01-01"],
            1,
            "{id} not updated: --until/--duration: must be after --start",
        ),
        (["-c", "a\x00b"], 1, "{id} not updated: comment: must not contain a NUL character"),
        # --end is --until: an error named the flag the user had not typed
        (["--end", "soon"], 1, "error: silence not updated: --end: expected an ISO-8601 time"),
        (["--end", "2000-01-01"], 1, "{id} not updated: --end/--duration: must be in the future"),
        (["--duration", "0"], 1, "error: silence not updated: --duration '0': must be more"),
        (["--end", "2000-01-01", "-d", "1h"], 1, "{id} not updated: --end/-d: must be in the"),
    ],
)
def test_a_wrong_update_changes_nothing_and_says_why(
    words: list[str], code: int, said: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    ident = added(store, "task=x", "-d", "1h")
    before = silences(store)
    done = relay_cli(store, "silence", "update", ident, *words)
    assert (done[0], done[1]) == (code, ""), done[2]
    assert done[2].startswith(said.format(id=ident)), done[2]
    assert silences(store) == before


def test_an_unknown_id_is_said_and_the_others_are_updated(tmp_path: Path) -> None:
    """As `silence expire`: each id on its own, exit 1 if any failed; no id at all is a usage
    error (amtool's `no silence IDs specified`)."""
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    ident = added(store, "task=x", "-d", "1h")
    code, out, err = relay_cli(store, "silence", "update", "sil_0000000000000000", ident, "-c", "c")
    assert (code, out, err) == (1, ident + "\n", "no silence with id sil_0000000000000000\n")
    assert silences(store)[ident]["comment"] == "c"
    code, _, err = relay_cli(store, "silence", "update", "-d", "1h")
    assert code == 2 and "error: no silence id given" in err


async def test_query_within_lists_the_silences_ending_soon_or_ended_lately(
    tmp_path: Path,
) -> None:
    """amtool's `silence query --within 2h`: active and pending silences ending within two
    hours; with `--expired`, those that ended within the last two; `--all` both."""
    path = tmp_path / "relay.db"
    store = SQLiteStore(path)
    await store.open()
    now = time.time()
    ends = {
        "soon": now + 1800,
        "later": now + 3 * 3600,
        "lately": now - 3600,
        "long": now - 5 * 3600,
    }
    for name, end in ends.items():
        await store.add_silence(Silence(f"sil_{name}", {"task": (name,)}, now - 6 * 3600, end, 1.0))
    await store.close()
    url = f"sqlite:///{path}"

    def query(*words: str) -> list[str]:
        code, out, err = relay_cli(url, "silence", "query", "-q", *words)
        assert code == 0, err
        return out.split()

    assert await asyncio.to_thread(query, "--within", "2h") == ["sil_soon"]
    assert await asyncio.to_thread(query, "--within", "2h", "--expired") == ["sil_lately"]
    assert sorted(await asyncio.to_thread(query, "--within", "2h", "--all")) == [
        "sil_lately",
        "sil_soon",
    ]
    assert await asyncio.to_thread(query, "--within", "2h", "task=soon") == ["sil_soon"]
    code, _, err = await asyncio.to_thread(relay_cli, url, "silence", "query", "--within", "2 h")
    assert code == 1 and err.startswith("error: silence list: --within '2 h': "), err
