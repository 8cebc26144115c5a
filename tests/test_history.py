"""History answers "what was sent, when, to whom, and why not?" — API, CLI and retention."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.errors import InputError
from relay.history import history_query
from relay.model import notification_id
from relay.store.sqlite import SQLiteStore
from tests.conftest import RelayFactory, Sink, run_cli, run_cli_in_process, sdk_run, status
from tests.test_cli import make_dead_letters

CONFIG = """\
defaults:
  retry: {{max_attempts: 2, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
"""


def failed(run_id: str, task: str = "sync-customer-data") -> dict[str, Any]:
    run = sdk_run("failed")
    run.update(id=run_id, taskIdentifier=task)
    return run


async def get(r: Any, path: str) -> tuple[int, Any]:
    async with r.http.get(r.url + path) as resp:
        return resp.status, await resp.json(content_type=None)


async def until(r: Any, predicate: Any) -> None:
    for _ in range(600):
        if predicate(await r.service.store.counts()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(await r.service.store.counts())


async def test_history_explains_sent_muted_and_dead(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    r = await relay(CONFIG.format(url=sink.url))
    async with r.http.post(
        r.url + "/v1/silences",
        json={"matchers": {"task": "billing/*"}, "ends_at": "2099-01-01T00:00:00Z"},
    ) as resp:
        silence = (await resp.json())["id"]
    sink.responses = [status(200)]  # the first delivery succeeds, then every request gets a 400
    sink.default = status(400)
    await r.post(failed("run_sent"))
    await until(r, lambda c: c["sent"] == 1)
    await r.post([failed("run_muted", "billing/charge"), failed("run_dead")])
    await until(r, lambda c: c["dead"] == 1 and c["muted"] == 1)

    code, body = await get(r, "/v1/notifications?run_id=run_muted")
    [muted] = body["notifications"]
    assert code == 200 and muted["state"] == "muted" and muted["reason"] == silence
    code, detail = await get(r, f"/v1/notifications/{muted['id']}")
    assert [e["kind"] for e in detail["events"]] == ["muted"]
    assert detail["events"][0]["detail"] == silence

    dead_id = notification_id("run_dead", "failures", "hook")
    code, detail = await get(r, f"/v1/notifications/{dead_id}")
    assert detail["state"] == "dead" and detail["reason"] == "client_error"
    assert [e["kind"] for e in detail["events"]] == ["created", "dead"]
    assert "HTTP 400" in detail["events"][-1]["detail"]

    code, body = await get(r, "/v1/notifications?state=sent")
    assert [n["run_id"] for n in body["notifications"]] == ["run_sent"]
    code, body = await get(r, "/v1/notifications?rule=failures&since=1h&limit=10")
    assert len(body["notifications"]) == 3
    assert (await get(r, "/v1/notifications?state=bogus"))[0] == 400
    assert (await get(r, "/v1/notifications?nope=1"))[0] == 400
    assert (await get(r, "/v1/notifications/ntf_nope"))[0] == 404
    code, body = await get(r, "/v1/notifications/dgs_0a1b")  # a receiver's webhook-id
    assert code == 404 and "it is a digest's id" in body["error"], body

    # the CLI reads the same store
    env = {"RELAY_STORE_URL": r.service.settings.store_url}
    muted_run, dead_run, as_json = await asyncio.gather(
        *(
            asyncio.to_thread(run_cli, "history", *args, env=env)
            for args in (("--run", "run_muted"), ("--run", "run_dead"), ("--json",))
        )
    )
    assert f"muted by {silence}" in muted_run.stdout
    assert "dead after 1 attempt(s): client_error: HTTP 400" in dead_run.stdout
    assert "client_error: client_error" not in dead_run.stdout  # the reason once
    listed = json.loads(as_json.stdout)
    assert {n["run_id"] for n in listed} == {"run_sent", "run_muted", "run_dead"}


async def test_history_pages_by_the_last_id_over_http_and_the_cli(
    relay: RelayFactory, sink: Sink
) -> None:
    """A page of at most 10,000 went no further back: `before` (the last id of a page) gives
    the next one, with nothing missed or repeated; an id the store does not hold is refused."""
    r = await relay(CONFIG.format(url=sink.url))
    await r.post([failed(f"run_{i}") for i in range(5)])
    await until(r, lambda c: c["sent"] == 5)
    _, whole = await get(r, "/v1/notifications")
    first = [n["id"] for n in whole["notifications"][:2]]
    code, page = await get(r, f"/v1/notifications?limit=2&before={first[-1]}")
    assert code == 200
    assert [n["id"] for n in page["notifications"]] == [
        n["id"] for n in whole["notifications"][2:4]
    ]
    code, body = await get(r, "/v1/notifications?before=ntf_gone")
    assert code == 400 and body["field"] == "before", body

    env = {"RELAY_STORE_URL": r.service.settings.store_url}
    args = ("history", "--json", "--limit", "2", "--before", first[-1])
    listed = json.loads((await asyncio.to_thread(run_cli, *args, env=env)).stdout)
    assert [n["id"] for n in listed] == [n["id"] for n in whole["notifications"][2:4]]
    gone = await asyncio.to_thread(run_cli, "history", "--before", "ntf_gone", env=env)
    assert gone.returncode == 1 and "before" in gone.stderr, gone.stderr


async def test_history_of_one_id_as_logs_and_receivers_name_it(
    relay: RelayFactory, sink: Sink
) -> None:
    """`relay history ntf_…` (the id a log line, `dlq list` or a receiver's webhook-id shows)
    said "unrecognized arguments"; `relay history run_…` too. A notification's id shows that
    one, as GET /v1/notifications/{id}; another id is a run's, as `--run`."""
    r = await relay(CONFIG.format(url=sink.url))
    sink.responses, sink.default = [status(200)], status(400)
    await r.post(failed("run_sent"))
    await until(r, lambda c: c["sent"] == 1)
    await r.post(failed("run_dead"))
    await until(r, lambda c: c["dead"] == 1)
    dead = notification_id("run_dead", "failures", "hook")
    env = {"RELAY_STORE_URL": r.service.settings.store_url}

    async def cli(*args: str) -> Any:  # in a thread: it runs an event loop of its own
        return await asyncio.to_thread(run_cli_in_process, "history", *args, env=env)

    one = await cli(dead)
    assert one.returncode == 0 and one.stdout.startswith(f"{dead}  "), one.stdout
    assert "run run_dead" in one.stdout and "run_sent" not in one.stdout
    assert "created  attempts=0" in one.stdout and "dead  attempts=1" in one.stdout
    assert [n["id"] for n in json.loads((await cli(dead, "--json")).stdout)] == [dead]
    by_run = (await cli("--run", "run_sent")).stdout
    assert (await cli("run_sent")).stdout == by_run and "run run_sent" in by_run
    assert (await cli("run_sent", "--run", "run_sent")).stdout == by_run
    for args, said in [
        (("ntf_nope",), "history: no notification with id 'ntf_nope'\n"),
        (("dgs_0a1b",), "history: no notification with id 'dgs_0a1b': it is a digest's id"),
        ((dead, "--rule", "failures"), f"{dead} is one notification; --rule would not apply"),
        ((dead, "--run", "run_dead"), f"{dead} is one notification; --run would not apply"),
        (("run_sent", "--run", "run_dead"), "run 'run_sent' and --run 'run_dead': give one"),
    ]:
        refused = await cli(*args)
        assert (refused.returncode, refused.stdout) == (1, ""), refused
        assert said in refused.stderr, refused.stderr


async def test_replay_is_part_of_the_history(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.http")
    sink.responses = [status(400)]
    r = await relay(CONFIG.format(url=sink.url))
    await r.post(failed("run_replayed"))
    await until(r, lambda c: c["dead"] == 1)
    ident = notification_id("run_replayed", "failures", "hook")
    async with r.http.post(r.url + f"/v1/dlq/{ident}/replay") as resp:
        assert resp.status == 200
    # the log line names the notification as every line about one does
    [said] = [x for x in caplog.records if x.getMessage() == "dead notification replayed"]
    about = {k: getattr(said, k, None) for k in ("notification_id", "run_id", "rule", "channel")}
    assert about == {
        "notification_id": ident,
        "run_id": "run_replayed",
        "rule": "failures",
        "channel": "hook",
    }
    await until(r, lambda c: c["sent"] == 1)
    _, detail = await get(r, f"/v1/notifications/{ident}")
    assert [e["kind"] for e in detail["events"]] == ["created", "dead", "replayed", "sent"]
    # as the README says: a replay clears `error`, the dead event keeps it
    assert detail["error"] is None, detail
    assert detail["events"][1]["detail"] == "client_error: HTTP 400 (permanent)", detail


async def test_a_send_after_a_quick_retry_keeps_the_failed_tries_error(
    relay: RelayFactory, sink: Sink
) -> None:
    """`error` is the last failed attempt's, kept once a later attempt sent it: also when that
    attempt was a quick retry in the same round (a 503 blip, then 200), which leaves no event."""
    sink.responses = [status(503)]
    r = await relay(CONFIG.format(url=sink.url))
    await r.post(failed("run_blip"))
    await until(r, lambda c: c["sent"] == 1)
    _, body = await get(r, "/v1/notifications?run_id=run_blip")
    [row] = body["notifications"]
    assert (row["state"], row["attempts"]) == ("sent", 2), row
    assert row["error"] == "server_error: HTTP 503", row


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "x"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"who": "x"}, "who"),
    ],
)
def test_bad_history_queries(params: dict[str, str], field: str) -> None:
    with pytest.raises(InputError) as info:
        history_query(params, 1000.0)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("--state", "state: use one of pending, sent, dead, muted"),
        ("--limit", "limit: expected a number from 1 to 10000"),
    ],
)
def test_the_cli_refuses_a_bad_flag_value_alike(tmp_path: Path, flag: str, said: str) -> None:
    """`--state bogus` exited 2 with argparse's usage text, where a bad `--limit` or `--since`
    (and `silence add --event bogus`) exits 1 with one line naming what it takes."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    bad = run_cli_in_process("history", flag, "bogus", env=env)
    assert (bad.returncode, bad.stdout, bad.stderr) == (1, "", f"error: history: {said}\n")
    assert not (tmp_path / "relay.db").exists()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--since", ""], "argument --since: empty: give a duration like 1h or a time like"),
        (["--since= "], "argument --since: empty: give a duration like 1h"),
        (["--before", ""], "argument --before: empty: give a notification id (ntf_…)"),
        (["--limit", ""], "argument --limit: empty: give a number like 50"),
    ],
)
def test_the_cli_refuses_an_empty_flag_value(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    """`--since "$SINCE"` with SINCE unset exited 1 as a bad value ("expected a duration
    back"), `--before ''` looked for a notification of no id: a flag given no value is a
    usage error (exit 2), as `--until ''` of `silence add` is, and no store is opened."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    bad = run_cli_in_process("history", *args, env=env)
    assert (bad.returncode, bad.stdout) == (2, ""), bad.stderr
    assert f"relay history: error: {complaint}" in bad.stderr, bad.stderr
    assert not (tmp_path / "relay.db").exists()


def test_a_bad_since_names_both_forms_it_takes() -> None:
    """`relay history --since yesterday` said "expected an ISO-8601 time" alone, though its
    help and the docs offer a duration back (1h) first."""
    with pytest.raises(InputError) as info:
        history_query({"since": "yesterday"}, 1000.0)
    assert "1h" in info.value.message and "ISO-8601" in info.value.message


@pytest.mark.parametrize(
    ("since", "said"),
    [
        ("11y", "duration must be between 0 and 10 years"),
        ("-1h", "a duration cannot be negative (got -1h)"),
        ("0001-01-01T00:00:00+01:00", "time out of range (years 1-9999 in UTC)"),
    ],
)
def test_a_since_refused_for_its_size_or_sign_says_so(since: str, said: str) -> None:
    """`--since 11y`, `-1h` and a time before year 1 in UTC were each told "expected a
    duration back (1h, 2d) or an ISO-8601 time": they are one, refused for another reason."""
    with pytest.raises(InputError) as info:
        history_query({"since": since}, 1000.0)
    assert (info.value.field, info.value.message) == ("since", said)


async def test_prune_forgets_what_finished_before_the_retention(tmp_path: Path) -> None:
    from relay.model import Decision, Match, Run, RunState  # noqa: PLC0415

    store = SQLiteStore(tmp_path / "r.db")
    await store.open()

    def decide(run: Run, previous: RunState | None) -> Decision:
        return Decision(RunState(None, run.status), (Match("r", "c", "run"),))

    old = Run.model_validate({"id": "run_old", "status": "FAILED"})
    new = Run.model_validate({"id": "run_new", "status": "FAILED"})
    await store.observe([old], decide, now=100.0)
    await store.mark_sent([(notification_id("run_old", "r", "c"), 1)], now=110.0)
    await store.observe([new], decide, now=5000.0)
    removed = await store.prune(before=1000.0)
    assert removed == 1
    assert await store.get(notification_id("run_old", "r", "c")) is None
    assert await store.events(notification_id("run_old", "r", "c")) == []
    assert await store.get(notification_id("run_new", "r", "c")) is not None  # pending: kept
    await store.close()


async def test_a_large_prune_lets_ingest_in_between(tmp_path: Path) -> None:
    """A pruning pass deleted every finished notification in one transaction of the one writer:
    on a large store every update posted meanwhile waited for all of it (over a second for 50,000
    notifications). It now goes a batch at a time, and an update lands between two batches."""
    from relay.model import Decision, Match, Run, RunState  # noqa: PLC0415

    store = SQLiteStore(tmp_path / "r.db")
    await store.open()

    def decide(run: Run, previous: RunState | None) -> Decision:
        return Decision(RunState(None, run.status), (Match("r", "c", "run"),))

    old = [Run.model_validate({"id": f"run_{i}", "status": "FAILED"}) for i in range(1500)]
    await store.observe(old, decide, now=100.0)
    await store.mark_sent([(notification_id(run.id, "r", "c"), 1) for run in old], now=110.0)
    pruning = asyncio.create_task(store.prune(before=1000.0))
    await asyncio.sleep(0)  # the first batch is on its way
    new = Run.model_validate({"id": "run_new", "status": "FAILED"})
    await store.observe([new], decide, now=5000.0)
    assert not pruning.done()  # the update did not wait for the whole pass
    assert await pruning == 1500
    assert (await store.counts())["sent"] == 0
    assert await store.events(notification_id("run_0", "r", "c")) == []
    assert await store.get(notification_id("run_new", "r", "c")) is not None
    await store.close()


async def test_a_filter_given_twice_is_refused(relay: RelayFactory, sink: Sink) -> None:
    """`?state=sent&state=dead` answered the sent ones alone, as if it were both."""
    r = await relay(CONFIG.format(url=sink.url))
    await r.post(failed("run_twice"))
    await until(r, lambda c: c["sent"] == 1)
    code, body = await get(r, "/v1/notifications?state=sent&state=dead")
    assert code == 400 and body["field"] == "state" and "more than once" in body["error"]
    code, body = await get(r, "/v1/notifications?state=sent")
    assert code == 200 and [n["run_id"] for n in body["notifications"]] == ["run_twice"]


async def test_get_dlq_says_when_more_are_dead_than_it_lists(
    relay: RelayFactory, tmp_path: Path
) -> None:
    """GET /v1/dlq lists the newest 1000: with 1001 dead it answered 1000 without a word (the
    CLI says so on stderr), and a script replaying them by id left the rest dead."""
    db = tmp_path / "dead.db"
    runs = (f"run_{i:04d}" for i in range(1001))
    ids = await make_dead_letters(db, *runs, now=time.time() - 2000)  # inside the retention
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"), db)
    code, body = await get(r, "/v1/dlq")
    assert (code, len(body["dead"]), body["more"]) == (200, 1000, True)
    assert ids[0] not in {d["id"] for d in body["dead"]}  # the first to die is left out
    await r.service.store.replay([ids[0]], 1000.0)
    assert (await get(r, "/v1/dlq"))[1]["more"] is False


async def test_every_admin_list_refuses_what_it_does_not_know(relay: RelayFactory) -> None:
    """GET /v1/silences and GET /v1/dlq answered a typo (`?expird=true`, `?expired=ture`) or a
    parameter they do not take as if it were absent, a 200 that reads as "nothing there"; GET
    /v1/notifications refused it. Each is now a 400 naming the parameter, as there."""
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))
    for path, field, said in [
        ("/v1/notifications?expird=1", "expird", "unknown parameter"),
        ("/v1/silences?expird=true", "expird", "unknown parameter"),
        ("/v1/silences?expired=ture", "expired", "expected true or false"),
        ("/v1/silences?expired=true&expired=false", "expired", "given more than once"),
        ("/v1/dlq?limit=5", "limit", "unknown parameter"),
    ]:
        code, body = await get(r, path)
        assert (code, body["field"]) == (400, field) and said in body["error"], (path, body)
    for path in ["/v1/silences?expired=TRUE", "/v1/silences?expired=no", "/v1/dlq"]:
        assert (await get(r, path))[0] == 200, path


async def test_times_read_as_iso_and_a_digests_id_points_to_its_notifications(
    relay: RelayFactory, sink: Sink
) -> None:
    """A notification's times and its events' are ISO-8601 (UTC), as the API says; a sent one
    has no next attempt, and `relay history` says it was sent. A replay of a digest's `dgs_` id (its webhook-id, what a receiver
    logs) names no dead letter, and the answer says to replay one of its notifications."""
    r = await relay(CONFIG.format(url=sink.url))
    await r.post(failed("run_times"))
    await until(r, lambda c: c["sent"] == 1)
    code, body = await get(r, "/v1/notifications?run_id=run_times")
    [sent] = body["notifications"]
    assert code == 200
    assert datetime.fromisoformat(sent["created_at"]).utcoffset() == timedelta(0)
    assert sent["next_attempt_at"] is None
    code, detail = await get(r, f"/v1/notifications/{sent['id']}")
    assert code == 200 and all(
        datetime.fromisoformat(e["at"]).utcoffset() == timedelta(0) for e in detail["events"]
    )
    async with r.http.post(r.url + "/v1/dlq/dgs_0123456789abcdef/replay") as resp:
        said = await resp.text()
    assert resp.status == 404 and "dgs_0123456789abcdef is a digest's id" in said
    env = {"RELAY_STORE_URL": r.service.settings.store_url}
    why = await asyncio.to_thread(run_cli, "history", "--run", "run_times", env=env)
    assert "sent after 1 attempt(s)" in why.stdout, why.stdout


async def test_relay_history_says_what_a_pending_notification_waits_for(
    relay: RelayFactory, sink: Sink
) -> None:
    """A notification refused once (503, Retry-After: 10 minutes) is retrying, its last failure
    told; one that came while the channel is held has had no try yet: it waits to be sent."""
    sink.default = status(503, {"Retry-After": "600"})
    r = await relay(CONFIG.format(url=sink.url))
    await r.post(failed("run_retrying"))
    await sink.wait_for(1)
    for _ in range(600):
        _, body = await get(r, "/v1/notifications?run_id=run_retrying")
        if body["notifications"][0]["attempts"] == 1:
            break
        await asyncio.sleep(0.05)
    await r.post(failed("run_waiting"))
    await until(r, lambda c: c["pending"] == 2)
    env = {"RELAY_STORE_URL": r.service.settings.store_url}
    retrying, waiting = await asyncio.gather(
        *(
            asyncio.to_thread(run_cli, "history", "--run", run, env=env)
            for run in ("run_retrying", "run_waiting")
        )
    )
    # when the next try is: a relay started again after an outage shows "retrying" without
    # sending, and the operator asked whether it ever would (relay honours the Retry-After)
    _, body = await get(r, "/v1/notifications?run_id=run_retrying")
    due = body["notifications"][0]["next_attempt_at"]
    assert (
        f"retrying (1 attempt(s) so far, last: server_error: HTTP 503; next try at {due})"
        in retrying.stdout
    ), retrying.stdout
    assert "pending: waiting to be sent" in waiting.stdout, waiting.stdout


async def test_an_empty_history_names_a_rule_or_channel_the_config_lacks(tmp_path: Path) -> None:
    """`relay history --rule prod-failure` (the rule is `prod-failures`) answered "no
    notifications", read at 3 a.m. as "it never fired". An empty listing now warns of a
    `--rule` or `--channel` the config does not name, with the nearest it does; a name of the
    config, or of rows the store still has (a rule since removed), gets no warning."""
    await make_dead_letters(tmp_path / "relay.db", "run_one")  # rule r1 → channel hook
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(url="http://127.0.0.1:9").replace("hook", "oncall"))
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    asked = [
        ("--rule", "failure", "--channel", "oncal"),
        ("--rule", "failures"),  # the config's: none there yet, no warning
        ("--rule", "r1"),  # not the config's, but in the store: listed
    ]
    typo, named, stored = [
        await asyncio.to_thread(run_cli_in_process, "history", *a, "--config", str(config), env=env)
        for a in asked
    ]
    assert typo.stdout == named.stdout == "no notifications\n"
    assert typo.stderr.splitlines() == [
        "warning: --rule 'failure' names no rule of the config (did you mean 'failures'?)",
        "warning: --channel 'oncal' names no channel of the config (did you mean 'oncall'?)",
    ]
    assert named.stderr == stored.stderr == ""
    assert "run_one" in stored.stdout
