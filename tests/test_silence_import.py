"""`relay silence import`: silences as `relay silence list -o json` (or GET /v1/silences)
printed them, into another store (amtool's `silence import`). Real stores: SQLite files, a
PostgreSQL server (tests/pg.py); the commands run in this process but one (standard input)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from relay.cli_files import MAX_INPUT_BYTES
from relay.cli_silence_import import MAX_IMPORT_SILENCES
from tests.conftest import RelayFactory, Sink, run_cli, run_cli_in_process
from tests.pg import fresh_database, shared_server
from tests.test_silences import CONFIG, failed, wait_counts

FUTURE = "2099-01-01T00:00:00.000Z"


def relay_cli(store: str, *args: str, config: Path | None = None) -> tuple[int, str, str]:
    """`relay ARGS` on the store at `store` (a URL), with `--config` when given."""
    where = ["--config", str(config)] if config else []
    done = run_cli_in_process(*args, *where, env={"RELAY_STORE_URL": store})
    return done.returncode, done.stdout, done.stderr


def listed(store: str) -> list[dict[str, Any]]:
    """`relay silence list --all -o json` of `store`, without the fields an import sets anew."""
    code, out, err = relay_cli(store, "silence", "list", "--all", "-o", "json")
    assert code == 0, err
    return [{k: v for k, v in s.items() if k != "created_at"} for s in json.loads(out)]


def exported(tmp_path: Path) -> tuple[Path, list[str]]:
    """A listing of three silences (an active one, one starting in 2098, one expired), as
    `silence list --all -o json` printed it, and the ids of the two not expired."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    adds = [
        ["task=billing/*", "-d", "2h", "-c", "Stripe outage", "-a", "ops"],
        ["--channel", "pager", "--start", "2098-01-01", "--until", FUTURE],
        ["tag=env:staging", "-d", "1h"],
    ]
    ids = []
    for words in adds:
        code, out, err = relay_cli(source, "silence", "add", *words)
        assert code == 0, err
        ids.append(out.strip())
    assert relay_cli(source, "silence", "expire", ids[2])[0] == 0
    code, out, _ = relay_cli(source, "silence", "list", "--all", "-o", "json")
    path = tmp_path / "silences.json"
    path.write_text(out)
    return path, ids[:2]


async def test_imported_silences_mute_in_the_relay_whose_store_took_them(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """The silences of one store, listed and imported into a running relay's: the two not
    expired keep their ids, matchers, times and words, and mute there from the moment the
    command returns (the relay had just read its silences; one silence was there already);
    the expired one is skipped and said so."""
    path, ids = await asyncio.to_thread(exported, tmp_path)
    r = await relay(CONFIG.format(url=sink.url))
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    pending = tmp_path / "pending.json"  # the silence of 2098, imported before
    pending.write_text(json.dumps([s for s in json.loads(path.read_text()) if s["id"] == ids[1]]))
    assert (await asyncio.to_thread(relay_cli, store, "silence", "import", str(pending)))[0] == 0
    await r.post([failed("email/send", "run_first")])
    await sink.wait_for(1)
    code, out, err = await asyncio.to_thread(relay_cli, store, "silence", "import", str(path))
    await r.post([failed("billing/charge", "run_muted"), failed("email/send", "run_loud")])
    assert (code, out.split()) == (0, ids[:1]), err
    assert "skipped [2] sil_" in err and "it has ended" in err and f"kept {ids[1]}: " in err
    assert err.strip().endswith("1 of 3 silences imported")
    source = await asyncio.to_thread(listed, f"sqlite:///{tmp_path / 'source.db'}")
    assert await asyncio.to_thread(listed, store) == source[:2]
    got = await sink.wait_for(2)
    assert [g.json()["run"]["id"] for g in got] == ["run_first", "run_loud"]
    await wait_counts(r, sent=2, muted=1)


async def test_importing_into_postgresql_twice_adds_nothing_the_second_time(
    tmp_path: Path,
) -> None:
    """From SQLite to PostgreSQL: a second import of the same file keeps the silences the
    store has (their ids), says so and adds none; `--force` adds them again under new ids."""
    path, ids = await asyncio.to_thread(exported, tmp_path)
    async with fresh_database(shared_server()) as url:
        first = await asyncio.to_thread(relay_cli, url, "silence", "import", str(path))
        again = await asyncio.to_thread(relay_cli, url, "silence", "import", str(path))
        forced = await asyncio.to_thread(relay_cli, url, "silence", "import", "--force", str(path))
        now = await asyncio.to_thread(listed, url)
    assert (first[0], first[1].split()) == (0, ids), first[2]
    assert (again[0], again[1]) == (0, ""), again[2]
    assert [line for line in again[2].splitlines() if line.startswith("kept")] == [
        f"kept {i}: a silence of this id is in the store already (--force adds it anew)"
        for i in ids
    ]
    assert again[2].strip().endswith("0 of 3 silences imported")
    new_ids = forced[1].split()
    assert forced[0] == 0 and len(new_ids) == 2 and not {*new_ids} & {*ids}
    by_id = {s.pop("id"): s for s in now}
    assert by_id.keys() == {*ids, *new_ids}
    assert [by_id[i] for i in new_ids] == [by_id[i] for i in ids]


def test_the_api_listing_and_one_silence_are_taken_too(tmp_path: Path) -> None:
    """GET /v1/silences answers `{"silences": [...]}` and GET /v1/silences/ID one silence:
    either saved to a file imports as a `silence list -o json` does."""
    path, ids = exported(tmp_path)
    silences = json.loads(path.read_text())
    wrapped, single = tmp_path / "api.json", tmp_path / "one.json"
    wrapped.write_text(json.dumps({"silences": silences}))
    single.write_text(json.dumps(silences[1]))
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    assert relay_cli(a, "silence", "import", str(wrapped))[:2] == (0, "\n".join(ids) + "\n")
    assert relay_cli(b, "silence", "import", str(single))[:2] == (0, ids[1] + "\n")


GOOD = {"matchers": {"task": "x"}, "ends_at": FUTURE}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[1", "not JSON (unexpected end of data"),
        ('"silences"', "expected a JSON array of silences"),
        ('{"silences": 3}', "expected a JSON array of silences"),
        ("[5]", "[0]: expected a silence (a JSON object)"),
        ("[" * 5000 + "]" * 5000, "not JSON"),
        (
            [GOOD, {"matchers": {"task": "x"}, "endsAt": FUTURE}],
            "[1].endsAt: unknown field; use matchers, starts_at, ends_at, comment, created_by"
            " (Alertmanager's startsAt, endsAt and createdBy are written so here)",
        ),
        (
            [GOOD, {**GOOD, "id": "../../x"}],
            "[1].id: not a relay silence id (sil_ and 16 hex digits); leave it out",
        ),
        ([GOOD, {**GOOD, "id": 7}], "[1].id: not a relay silence id"),
        ([GOOD, {**GOOD, "matchers": {"evnt": "y"}}], "[1].matchers.evnt: unknown matcher"),
        ([GOOD, {**GOOD, "matchers": {}}], "[1].matchers"),
        ([GOOD, {**GOOD, "ends_at": 4102444800}], "[1].ends_at: expected an ISO-8601 time"),
        ([GOOD, {"matchers": {"task": "x"}}], "[1].ends_at: required field is missing"),
        ([GOOD, {**GOOD, "comment": "a\x00b"}], "[1].comment: must not contain a NUL"),
        ([GOOD, {**GOOD, "created_by": ["ops"]}], "[1].created_by: expected a string"),
        (
            [GOOD, {**GOOD, "starts_at": "2099-06-01T00:00:00Z"}],
            "[1].ends_at: must be after starts_at",
        ),
    ],
)
def test_a_wrong_silence_imports_none_and_says_where(
    text: str | list[Any], said: str, tmp_path: Path
) -> None:
    """Malformed or hostile input: exit 1 naming the item and field, and not even the good
    silence before it added (amtool's import adds those before a bad one)."""
    path = tmp_path / "in.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    code, out, err = relay_cli(store, "silence", "import", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: silence import: nothing imported: {said}"), err
    assert listed(store) == []


def test_more_silences_than_one_import_takes_are_refused(tmp_path: Path) -> None:
    """400,000 silences took 455 MB and a minute: over MAX_IMPORT_SILENCES, none is added."""
    path = tmp_path / "many.json"
    path.write_text(json.dumps([GOOD] * (MAX_IMPORT_SILENCES + 1)))
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    code, _, err = relay_cli(store, "silence", "import", str(path))
    assert code == 1 and err == (
        "error: silence import: nothing imported: 100,001 silences, more than one import takes"
        " (100,000); split the file\n"
    )
    path.write_text(json.dumps([1] * 100_000))  # as many as one takes: each item checked
    code, _, err = relay_cli(store, "silence", "import", str(path))
    said = "error: silence import: nothing imported: [0]: expected a silence (a JSON object)\n"
    assert (code, err) == (1, said)


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as file:  # a valid listing, padded past the bound
        file.write(json.dumps([GOOD]).encode() + b" " * MAX_INPUT_BYTES)
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    code, _, err = relay_cli(store, "silence", "import", str(path))
    said = (
        f"error: silence import: {path} is larger than 64 MiB; relay silence import reads no more\n"
    )
    assert (code, err) == (1, said)
    missing = tmp_path / "nothing.json"
    code, _, err = relay_cli(store, "silence", "import", str(missing))
    assert (code, err) == (
        1,
        f"error: silence import: cannot read {missing}: No such file or directory\n",
    )


def test_a_file_of_exactly_64_mib_is_read(tmp_path: Path) -> None:
    """The bound is 64 MiB, as the error says: a listing of exactly that is imported, one byte
    more is refused (not the constant read back: a bound of 64 MiB and 64 KiB passed too)."""
    path = tmp_path / "edge.json"
    path.write_bytes(b" " * (64 * 2**20 - 2) + b"[]")
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    code, out, err = relay_cli(store, "silence", "import", str(path))
    assert (code, out, err.splitlines()[-1]) == (0, "", "0 of 0 silences imported")
    path.write_bytes(b" " * (64 * 2**20 - 1) + b"[]")
    code, _, err = relay_cli(store, "silence", "import", str(path))
    assert (code, "is larger than 64 MiB" in err) == (1, True), err


def test_standard_input_is_read_by_default_and_names_are_checked(tmp_path: Path) -> None:
    """`relay silence list -o json | relay silence import`: no FILE is standard input; a rule
    the config lacks is warned of, with the silence's id, as `silence add` warns."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url="http://127.0.0.1:9"))
    body = json.dumps([{**GOOD, "matchers": {"rule": "failurs"}}])
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}", "RELAY_CONFIG": str(config)}
    done = run_cli("silence", "import", env=env, stdin=body)
    ident = done.stdout.strip()
    assert done.returncode == 0 and ident.startswith("sil_"), done.stderr
    made = "a new one holds these silences; a relay serve on another store does not see them"
    assert made in done.stderr
    assert (
        f"warning: {ident}: matchers.rule: 'failurs' names no rule of the config"
        " (did you mean 'failures'?); nothing fits it"
    ) in done.stderr
    again = tmp_path / "again.json"  # one kept by its id, one added: the added one is checked
    again.write_text(json.dumps([{**GOOD, "id": ident}, {**GOOD, "matchers": {"rule": "failurs"}}]))
    code, out, err = relay_cli(
        env["RELAY_STORE_URL"], "silence", "import", str(again), config=config
    )
    [added] = out.split()
    assert code == 0 and f"kept {ident}: " in err, err
    assert f"warning: {added}: matchers.rule: 'failurs' names no rule of the config" in err
