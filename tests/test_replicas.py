"""Several `relay serve` replicas on one PostgreSQL: the work is shared, nothing is lost.

Real child processes (kill -9 is real), a real PostgreSQL (tests/pg.py: the worker's shared
cluster, a fresh database per test; the tests that stop it start it again, and the next user
of a stopped one starts it), a real webhook receiver. Every notification carries its
stable id in `webhook-id`, so the sink tells what arrived and what arrived twice.

A kill -9 leaves the dead replica's claimed rows leased; the others take them once its row in
relay_replicas has not been renewed for RELAY_REPLICA_TIMEOUT (2 s here, 15 s by default).
Duplicates are allowed exactly for the ids the dead replica held. A replica that lives keeps
its leases (5 minutes) through a PostgreSQL restart: that test ends them in the database, the
time travel a lease expiry is, once delivery went quiet.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg
import pytest

from relay.channel_loop import CLAIM_AHEAD
from relay.model import notification_id
from tests.conftest import RelayProcess, Sink, held, sdk_run, status
from tests.pg import PgServer, fresh_database, shared_server

TAKEOVER = "taking over notifications of a stopped replica"
FENCED = "notification not held here now (another replica's, or finished); outcome not recorded"
PAUSED = "store unavailable; delivery paused"
RESUMED = "store available again; delivery resumed"
WAITING = "store not reachable; waiting for it"
CONFIG = """\
defaults:
  retry: {{max_attempts: 50, max_age: 1h, min_backoff: 100ms, max_backoff: 500ms}}
  timeout: 30s
channels:
  hook:
    type: webhook
    url: {url}/hook
    concurrency: 4
  digest:
    type: webhook
    url: {url}/digest
    concurrency: 2
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
    continue: true
  - name: digests
    match: {{status: [failure], tags: {{any: [digest]}}}}
    notify: [digest]
    group_by: [taskIdentifier]
    group_wait: 1s
    group_interval: 1s
"""


class Replicas(Protocol):
    """The `replicas` fixture: start `n` replicas taken for dead after `timeout`, on CONFIG or
    on `config` (its `{url}` the sink's)."""

    async def __call__(
        self, n: int, timeout: str = "2s", config: str = CONFIG
    ) -> list[RelayProcess]: ...


@pytest.fixture
def pg() -> PgServer:
    """This xdist worker's cluster (an initdb is seconds: one per worker, not per module)."""
    return shared_server()


@pytest.fixture
async def database(pg: PgServer) -> AsyncIterator[str]:
    async with fresh_database(pg) as url:
        yield url


@pytest.fixture
async def replicas(database: str, sink: Sink, tmp_path: Path) -> AsyncIterator[Replicas]:
    """Start n replicas at once (they migrate the fresh database together); killed afterwards."""
    started: list[RelayProcess] = []
    path = tmp_path / "config.yaml"

    async def start(n: int, timeout: str = "2s", config: str = CONFIG) -> list[RelayProcess]:
        path.write_text(config.format(url=sink.url))
        env = {"RELAY_STORE_URL": database, "RELAY_REPLICA_TIMEOUT": timeout}
        procs = [  # each its own name in pg_stat_activity (see backends_gone)
            RelayProcess(path, tmp_path / "unused.db", {**env, "PGAPPNAME": f"relay-{i}"})
            for i in range(len(started), len(started) + n)
        ]
        started.extend(procs)
        await asyncio.gather(*(asyncio.to_thread(p.start, 60.0) for p in procs))
        return procs

    yield start
    for p in started:
        p.kill()


def failing_runs(n: int, prefix: str, **extra: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        run = sdk_run("failed")
        run.update(id=f"run_{prefix}_{i:04d}", **extra)
        out.append(run)
    return out


def hook_id(run: dict[str, Any]) -> str:
    return notification_id(run["id"], "failures", "hook")


async def post(http: aiohttp.ClientSession, url: str, runs: list[dict[str, Any]]) -> int:
    """The status of POST /v1/runs, 0 when the replica is gone."""
    try:
        async with http.post(url + "/v1/runs", data=json.dumps(runs)) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0


async def post_until_accepted(
    http: aiohttp.ClientSession, procs: list[RelayProcess], start: int, runs: list[dict[str, Any]]
) -> None:
    """A client that retries elsewhere (or later) until a replica answers 202."""
    for attempt in range(600):
        target = procs[(start + attempt) % len(procs)]
        if await post(http, target.url, runs) == 202:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no replica accepted a batch for 30 s")


def arrivals(sink: Sink, path: str = "/hook") -> collections.Counter[str]:
    return collections.Counter(r.headers["webhook-id"] for r in sink.received if r.path == path)


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def end_stuck_leases(url: str, sink: Sink, quiet_s: float = 1.0) -> set[str]:
    """Once delivery went quiet, end the leases still held (a dead replica's); their ids."""
    conn = await asyncpg.connect(url)
    try:
        last: tuple[int, int] | None = None
        quiet_since = time.monotonic()
        for _ in range(600):
            free = await conn.fetchval(
                "SELECT count(*) FROM relay_outbox WHERE state = 'pending'"
                " AND (lease_until IS NULL OR lease_until <= extract(epoch FROM now()))"
            )
            now = (len(sink.received), int(free))
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif free == 0 and time.monotonic() - quiet_since >= quiet_s:
                break
            await asyncio.sleep(0.1)
        rows = await conn.fetch(
            "UPDATE relay_outbox SET lease_until = 0 WHERE state = 'pending'"
            " AND lease_until IS NOT NULL RETURNING id"
        )
        return {row["id"] for row in rows}
    finally:
        await conn.close()


async def backends_gone(url: str, application_name: str) -> None:
    """Wait until a killed replica's server sessions have ended: a COMMIT it sent just before
    kill -9 (a row marked sent) lands only then, and the rows it leases are known after it."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(600):
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
            if not await conn.fetchval(query, application_name):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{application_name}'s sessions did not end")
    finally:
        await conn.close()


async def leased_by(url: str, pid: int) -> set[str]:
    """The pending rows process `pid` holds a live lease on: sent or not, it died with them."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id FROM relay_outbox WHERE state = 'pending'"
            " AND lease_until > extract(epoch FROM now()) AND lease_holder LIKE $1",
            f"%:{pid}:%",
        )
        return {row["id"] for row in rows}
    finally:
        await conn.close()


async def outbox_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM relay_outbox GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}
    finally:
        await conn.close()


def sent_by(proc: RelayProcess) -> set[str]:
    return {e["notification_id"] for e in proc.logs if e.get("msg") == "notification sent"}


# --------------------------------------------------------------------------------------- tests


async def test_replicas_share_the_work_and_survive_a_kill_9(
    replicas: Replicas, sink: Sink, database: str
) -> None:
    async def slow_ok(request: Any, index: int) -> Any:
        await asyncio.sleep(0.02)  # deliveries are in flight when the replica dies
        return aiohttp.web.Response(status=200)

    sink.default = slow_ok
    procs: list[RelayProcess] = await replicas(3)
    items = failing_runs(1000, "kill")
    batches = [items[i : i + 20] for i in range(0, len(items), 20)]
    accepted = 0
    gate = asyncio.Semaphore(6)

    async def send(i: int, batch: list[dict[str, Any]]) -> None:
        nonlocal accepted
        async with gate:
            await post_until_accepted(http, procs, i, batch)
            accepted += len(batch)

    async with aiohttp.ClientSession() as http:
        posting = asyncio.gather(*(send(i, b) for i, b in enumerate(batches)))
        await wait_for(lambda: accepted >= 500, 60, "half of the runs accepted")
        victim = procs[2]
        assert victim.proc is not None
        await asyncio.to_thread(victim.kill)  # kill -9, mid-way through ingest and delivery
        await backends_gone(database, victim.env["PGAPPNAME"])
        in_flight = await leased_by(database, victim.proc.pid)
        await posting

    want = {hook_id(run) for run in items}
    await wait_for(lambda: want <= set(arrivals(sink)), 60, "every notification")
    # The dead replica may have sent its rows before it died, unmarked: every id arrived, but
    # they are the survivors' only once its heartbeat expired. Every row marked sent says so.
    for _ in range(300):  # the last sends' marks commit just after the sink answered
        if (counts := await outbox_counts(database)) == {"sent": 1000}:
            break
        await asyncio.sleep(0.1)
    assert counts == {"sent": 1000}
    got = arrivals(sink)
    assert set(got) == want
    twice = {ident for ident, n in got.items() if n > 1}
    assert twice <= in_flight, "only a dead replica's in-flight rows may be sent again"
    # its concurrency and the rows claimed ahead, and as many again answered whose outcome was
    # still being written (a send's slot is free while it is: relay.dispatch, finishing)
    assert len(in_flight) <= 2 * (4 + CLAIM_AHEAD)
    taken = sum(e["count"] for p in procs[:2] for e in p.logs if e.get("msg") == TAKEOVER)
    assert taken == len(in_flight), "the survivors took the dead replica's rows, and said so"
    by_replica = [sent_by(p) for p in procs]
    assert by_replica[0] and by_replica[1], "the survivors shared the work"
    overlap = set.union(*(a & b for i, a in enumerate(by_replica) for b in by_replica[i + 1 :]))
    assert overlap <= in_flight


async def test_the_same_update_at_every_replica_fires_once(replicas: Replicas, sink: Sink) -> None:
    procs: list[RelayProcess] = await replicas(3, "15s")  # none dies: none is taken for dead
    plain = failing_runs(60, "same")
    grouped = [
        {**run, "taskIdentifier": f"task/{i % 3}", "tags": ["digest"]}
        for i, run in enumerate(failing_runs(45, "digest"))
    ]
    items = plain + grouped
    async with aiohttp.ClientSession() as http:
        for i in range(0, len(items), 15):  # each batch goes to all three at once
            batch = items[i : i + 15]
            statuses = await asyncio.gather(*(post(http, p.url, batch) for p in procs))
            assert statuses == [202, 202, 202]
    want = {hook_id(run) for run in items}
    await wait_for(lambda: want <= set(arrivals(sink)), 60, "every notification")

    def digested() -> list[list[str]]:
        out = []
        for r in sink.received:
            if r.path == "/digest":
                body = r.json()
                out.append([run["id"] for run in body.get("runs") or [body["run"]]])
        return out

    expect = sorted(run["id"] for run in grouped)
    await wait_for(lambda: sorted(i for d in digested() for i in d) == expect, 60, "every digest")
    await asyncio.sleep(1.5)  # a group window more: nothing else may come
    assert sorted(arrivals(sink).elements()) == sorted(want)  # each exactly once
    digests = digested()
    assert sorted(i for d in digests for i in d) == expect  # each run in exactly one digest
    # per group, at most one digest for each batch that brought it runs (a batch commits as
    # one): how many batches fall into one group window is timing (2 digests a group on a
    # quiet machine, 3 under load), so the bound counts batches, not windows
    rounds = len(grouped) // 15
    assert len(digests) <= 3 * rounds


def paused_once(proc: RelayProcess) -> bool:
    return any(e.get("msg") == PAUSED for e in proc.logs)


async def test_postgresql_restart_mid_run_loses_nothing(
    replicas: Replicas, sink: Sink, database: str, pg: PgServer
) -> None:
    procs: list[RelayProcess] = await replicas(2, "15s")  # alive throughout the outage
    items = failing_runs(400, "restart")
    batches = [items[i : i + 10] for i in range(0, len(items), 10)]
    refused: list[tuple[int, str | None]] = []
    async with aiohttp.ClientSession() as http:
        for batch in batches[:20]:
            await post_until_accepted(http, procs, 0, batch)
        await asyncio.to_thread(pg.stop, "fast")
        try:
            for i, batch in enumerate(batches[20:25]):
                url = procs[i % 2].url
                async with http.post(url + "/v1/runs", data=json.dumps(batch)) as resp:
                    refused.append((resp.status, resp.headers.get("Retry-After")))
            for p in procs:
                async with http.get(p.url + "/healthz") as resp:
                    assert resp.status == 200
                async with http.get(p.url + "/readyz") as resp:
                    assert resp.status == 503
            # the delivery loops meet the outage (each logs its pause), however slow the machine
            await wait_for(lambda: all(paused_once(p) for p in procs), 60, "every replica paused")
            await asyncio.sleep(2.0)  # their claims fail again meanwhile: logged once all the same
        finally:
            await asyncio.to_thread(pg.start)
        assert refused and all(status == 503 and after for status, after in refused)
        for i, batch in enumerate(batches[20:]):  # the client retries, and goes on
            await post_until_accepted(http, procs, i, batch)
        for p in procs:
            async with http.get(p.url + "/readyz") as resp:
                assert resp.status == 200

    in_flight = await end_stuck_leases(database, sink)
    want = {hook_id(run) for run in items}
    await wait_for(lambda: want <= set(arrivals(sink)), 60, "every notification")
    got = arrivals(sink)
    assert set(got) == want
    assert {ident for ident, n in got.items() if n > 1} <= in_flight
    for p in procs:  # an outage is logged once per channel, not once per retry, and its end too
        paused = collections.Counter(e["channel"] for e in p.logs if e.get("msg") == PAUSED)
        resumed = collections.Counter(e["channel"] for e in p.logs if e.get("msg") == RESUMED)
        lines = [e for e in p.logs if e.get("msg") in (PAUSED, RESUMED)]
        assert paused and set(paused.values()) == {1} and resumed == paused, lines
        assert all(e["error"].startswith("store unavailable") for e in lines if e["msg"] == PAUSED)


async def test_a_replica_started_before_postgresql_waits_for_it(
    database: str, sink: Sink, pg: PgServer, tmp_path: Path
) -> None:
    """A replica started beside its PostgreSQL (compose, a node rebooted) exited 1 with "store
    open failed: connection refused". It waits, saying why in one line a try, then starts."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url=sink.url))
    url = database.replace("postgres@", "postgres:S3CRET-pg@")  # trust auth ignores it
    proc = RelayProcess(config, tmp_path / "unused.db", {"RELAY_STORE_URL": url})
    await asyncio.to_thread(pg.stop, "fast")
    try:
        listening = proc.spawn()

        def waits() -> list[dict[str, Any]]:
            return [e for e in proc.logs if e.get("msg") == WAITING]

        await wait_for(lambda: len(waits()) >= 2, 60, "two tries")
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        await asyncio.to_thread(pg.start)
    try:
        await asyncio.to_thread(listening.wait, 30)
        assert listening.is_set(), proc.logs[-5:]
        assert all(e["error"] == "store open failed: connection refused" for e in waits())
        assert not any("S3CRET" in json.dumps(e) for e in proc.logs)
        async with aiohttp.ClientSession() as http:
            assert await post(http, proc.url, failing_runs(1, "late")) == 202
        await wait_for(lambda: len(arrivals(sink)) == 1, 60, "the notification")
    finally:
        proc.kill()


async def test_a_silence_changed_on_one_replica_holds_at_once_on_another(
    replicas: Replicas, sink: Sink
) -> None:
    """Each replica re-reads the silences every RELOAD_S: one just re-read (it ingested a run)
    missed a silence created on another replica, and kept muting by one expired there, so a
    failure posted right after DELETE's answer was muted for good. The answer now comes once
    every replica mutes by the change, as `relay silence add`'s does."""
    a, b = await replicas(2, "15s")  # none dies: none is taken for dead on a loaded machine
    quiet = {**sdk_run("failed"), "id": "run_quiet", "status": "COMPLETED", "taskIdentifier": "q"}
    muted, paged = failing_runs(2, "silenced", taskIdentifier="silenced/task")
    silence = {"matchers": {"task": "silenced/*"}, "ends_at": "2099-01-01T00:00:00Z"}
    async with aiohttp.ClientSession() as http:
        assert await post(http, b.url, [quiet]) == 202  # b has just read the silences
        async with http.post(a.url + "/v1/silences", json=silence) as resp:
            assert resp.status == 201
            ident = (await resp.json())["id"]
        assert await post(http, b.url, [muted]) == 202
        assert await post(http, a.url, [{**quiet, "id": "run_quiet_a"}]) == 202
        async with http.delete(f"{b.url}/v1/silences/{ident}") as resp:
            assert resp.status == 200
        assert await post(http, a.url, [paged]) == 202
    await wait_for(lambda: hook_id(paged) in arrivals(sink), 60, "the failure after DELETE")
    assert hook_id(muted) not in arrivals(sink)
    assert any(e.get("run_id") == muted["id"] and e.get("muted_by") == ident for e in b.logs)


LEARNT = "channel held by another replica (the receiver's Retry-After)"


async def held_here(proc: RelayProcess, http: aiohttp.ClientSession) -> bool:
    async with http.get(proc.url + "/metrics") as resp:
        return samples(await resp.text(), 'relay_channel_held{channel="hook"}') == [1.0]


async def test_a_retry_after_one_replica_got_holds_the_others_too(
    replicas: Replicas, sink: Sink, database: str
) -> None:
    """A receiver's Retry-After holds whoever calls it (a webhook, a Slack app's workspace):
    the replicas that did not get it went on calling, each call refused again and the limit
    prolonged. The one that got it stores it (relay.holds); the others read it within a poll
    and hold the channel too, what they ingest meanwhile left in the outbox for its end."""
    sink.responses = [status(429, {"Retry-After": "600"})]
    a, b = await replicas(2, "15s")
    async with aiohttp.ClientSession() as http:
        assert await post(http, a.url, failing_runs(1, "limited")) == 202
        await sink.wait_for(1)
        for proc in (a, b):
            deadline = time.monotonic() + 30
            while not await held_here(proc, http):
                assert time.monotonic() < deadline, "a replica never held the channel"
                await asyncio.sleep(0.1)
        later = failing_runs(3, "later")
        assert await post(http, b.url, later[:2]) == 202
        assert await post(http, a.url, later[2:]) == 202
    await wait_for(lambda: bool(learners(a, b)), 10, "the line of the replica that learnt it")
    await asyncio.sleep(2.5)  # more than two polls: unheld, a replica sent these at once
    assert len(sink.received) == 1, [r.headers["webhook-id"] for r in sink.received]
    assert await outbox_counts(database) == {"pending": 4}
    said = [sum(e.get("msg") == LEARNT for e in p.logs) for p in learners(a, b)]
    assert said == [1]  # the one that did not get the 429, once (not at every poll)


def learners(*procs: RelayProcess) -> list[RelayProcess]:
    return [p for p in procs if any(e.get("msg") == LEARNT for e in p.logs)]


SHARED = "channel rate limit shared by replicas"
LIMITED = """\
defaults:
  retry: {{max_attempts: 50, max_age: 1h, min_backoff: 100ms, max_backoff: 500ms}}
channels:
  hook:
    type: webhook
    url: {url}/hook
    rate_limit: {{per_second: 2, burst: 1}}
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [hook]}}
"""


async def test_replicas_send_at_the_channel_rate_limit_together(
    replicas: Replicas, sink: Sink
) -> None:
    """A channel's rate_limit is the receiver's (a webhook's, a Slack app's): two replicas each
    sending at it sent twice the rate, and the receiver refused the excess. Each now sends at
    its share (1 a second here), learnt from the replicas' heartbeat rows. 20 notifications at
    2 a second, a burst of 1 each, take 9 s at least (each replica's first at once); each
    replica at the full rate took about 4.5 s. A slow machine only lengthens it."""
    a, b = await replicas(2, "15s", LIMITED)  # none taken for dead on a loaded machine
    await wait_for(lambda: all(shares(p) == [2] for p in (a, b)), 30, "both replicas sharing")
    runs = failing_runs(20, "limited")
    async with aiohttp.ClientSession() as http:
        assert await post(http, a.url, runs[:10]) == 202
        assert await post(http, b.url, runs[10:]) == 202
    received = await sink.wait_for(20)
    assert sorted(arrivals(sink)) == sorted(hook_id(run) for run in runs)
    assert received[-1].at - received[0].at >= 7.5  # 9 s less a first request's lateness
    assert sent_by(a) and sent_by(b)  # both took their part
    assert shares(a) == shares(b) == [2]  # neither went back to the full rate meanwhile


def shares(proc: RelayProcess) -> list[int]:
    """The replica counts this one said it shares the rate limit with, in order."""
    return [e["replicas"] for e in proc.logs if e.get("msg") == SHARED]


async def test_a_replica_whose_send_was_taken_over_does_not_mark_its_failure(
    replicas: Replicas, sink: Sink, database: str
) -> None:
    """A replica frozen mid-send (SIGSTOP: a VM pause, a long GC) is taken for dead, and another
    sends its notification again. The frozen one, thawed, hears its receiver refuse (400): its
    `dead` may not land on a row the other replica holds, which delivered it (the row stayed
    dead, `relay dlq replay --all` would send it a third time, and the delivery went uncounted);
    a retry likewise handed the other's lease back, for a third send while it was in flight.
    Nor does it log or count that dead (a dead letter in its metrics that `relay dlq list` does
    not show): it says once that another replica holds the notification now."""
    first, second = asyncio.Event(), asyncio.Event()
    sink.responses = [held(first, 400), held(second)]
    procs = await replicas(2)
    run = {"id": "run_frozen", "status": "FAILED", "taskIdentifier": "t/a", "tags": []}
    run["updatedAt"] = "2026-08-20T09:14:22.461Z"
    async with aiohttp.ClientSession() as http:
        await post_until_accepted(http, procs, 0, [run])
    await sink.wait_for(1)
    [frozen] = [
        p for p in procs if p.proc and hook_id(run) in await leased_by(database, p.proc.pid)
    ]
    [other] = [p for p in procs if p is not frozen]
    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        await sink.wait_for(2)  # taken over, sent again: both in flight
    finally:
        first.set()  # the frozen one's answer waits in its socket
        frozen.proc.send_signal(signal.SIGCONT)
    said = await thawed_outcome(frozen, hook_id(run))
    second.set()
    await asyncio.to_thread(other.wait_for_log, "notification sent")
    for _ in range(300):  # the mark commits just after the log line
        if (counts := await outbox_counts(database)) == {"sent": 1}:
            break
        await asyncio.sleep(0.1)
    assert counts == {"sent": 1}
    # its dead changed no row: neither said nor counted (`relay dlq list` shows no such letter)
    assert said == FENCED
    async with aiohttp.ClientSession() as http, http.get(frozen.url + "/metrics") as resp:
        text = await resp.text()
    assert set(samples(text, "relay_notifications_dead_total{")) == {0.0}  # none, any channel
    assert samples(text, 'relay_notifications_failed_total{channel="hook",reason="client_e') == [
        1.0
    ]


def samples(metrics: str, prefix: str) -> list[float]:
    """The values of the /metrics samples whose line starts with `prefix`."""
    return [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix)]


async def thawed_outcome(proc: RelayProcess, ident: str) -> str:
    """The first outcome line a replica wrote about notification `ident` (bounded wait)."""
    outcomes = {FENCED, "notification dead", "delivery failed; will retry", "notification sent"}

    def said() -> list[str]:
        logs = list(proc.logs)
        return [
            e["msg"] for e in logs if e.get("msg") in outcomes and e.get("notification_id") == ident
        ]

    await wait_for(lambda: bool(said()), 60, f"an outcome of {ident}")
    return said()[0]


DEAD_MARK = b"state = 'dead', attempts = g.tries"  # in mark_dead's statement


def proxied(
    pg: PgServer, database: str, port: int, sink: Sink, tmp_path: Path, **env: str
) -> RelayProcess:
    """A replica (not started) whose store is `database` through a proxy on `port`."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url=sink.url))
    url = database.replace(f":{pg.port}/", f":{port}/")
    return RelayProcess(config, tmp_path / "unused.db", {"RELAY_STORE_URL": url, **env})


async def failure_cut(proc: RelayProcess, proxy: LosingProxy, run_id: str) -> dict[str, Any]:
    """Start `proc`, post it a failed run, and wait for `proxy` to cut its dead mark short."""
    await asyncio.to_thread(proc.start, 60.0)
    run = {"id": run_id, "status": "FAILED", "taskIdentifier": "t/a", "tags": []}
    async with aiohttp.ClientSession() as http:
        assert await post(http, proc.url, [run]) == 202
    await asyncio.wait_for(proxy.cut.wait(), 60)
    return run


class LosingProxy:
    """A TCP proxy to PostgreSQL that, once, lets a statement holding `marker` run and commit
    (its command tag `done`), then cuts the connection before any of its reply reaches relay:
    a reply lost on the way back. The statement sent again after that waits for `let_through`
    (set unless a test clears it): a write retried later than the row's backoff."""

    def __init__(self, upstream_port: int, marker: bytes, done: bytes) -> None:
        self.upstream_port, self.marker, self.done = upstream_port, marker, done
        self.armed, self.cut = True, asyncio.Event()
        self.let_through, self.held = asyncio.Event(), asyncio.Event()
        self.let_through.set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        losing = asyncio.Event()
        pumps = [
            asyncio.ensure_future(self._up(reader, up_writer, losing)),
            asyncio.ensure_future(self._down(up_reader, writer, losing)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        writer.close()
        up_writer.close()

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, losing: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            if self.armed and self.marker in data:
                self.armed = False
                losing.set()
            elif self.marker in data:
                self.held.set()
                await self.let_through.wait()
            writer.write(data)
            await writer.drain()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, losing: asyncio.Event
    ) -> None:
        held = b""  # from the statement's command tag on: never forwarded
        while data := await reader.read(65536):
            if not held and losing.is_set() and self.done in data:
                at = data.index(self.done) - 5  # its CommandComplete message: 'C', length
                data, held = data[:at], data[at:]
            elif held:
                held, data = held + data, b""
            writer.write(data)
            await writer.drain()
            if b"Z\x00\x00\x00\x05" in held:  # ReadyForQuery: committed; relay never hears it
                self.cut.set()
                return

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_dead_mark_whose_reply_was_lost_is_still_said_and_counted(
    pg: PgServer, database: str, sink: Sink, tmp_path: Path
) -> None:
    """The receiver refuses (400): the row is marked dead, and PostgreSQL commits it, but the
    reply is lost (the connection drops). The outcome is written again after the blip and finds
    the row dead already: that is this replica's own dead, to log and count, not another's."""

    sink.responses = [status(400)]
    proxy = LosingProxy(pg.port, DEAD_MARK, b"INSERT 0 1\x00")
    await proxy.start()
    proc = proxied(pg, database, proxy.port, sink, tmp_path)
    try:
        run = await failure_cut(proc, proxy, "run_lost_reply")
        async with aiohttp.ClientSession() as http:
            said = await thawed_outcome(proc, hook_id(run))
            async with http.get(proc.url + "/metrics") as resp:
                text = await resp.text()
    finally:
        proc.kill()
        await proxy.close()
    assert await outbox_counts(database) == {"dead": 1}
    assert said == "notification dead"
    assert sum(samples(text, 'relay_notifications_dead_total{channel="hook"')) == 1.0


async def test_a_retry_mark_written_again_leaves_the_claim_taken_since_alone(
    pg: PgServer, database: str, sink: Sink, tmp_path: Path
) -> None:
    """The receiver answers 429: the row is marked for a retry 50-100 ms later, PostgreSQL
    commits it, the reply is lost. The write goes again 0.25 s later (held here until the row
    was claimed again and its second send is in flight, as a write retried after a 30 s command
    timeout is): it landed on that claim, this replica's own, handing its lease back mid-send
    and logging a second retry."""
    second = asyncio.Event()
    sink.responses = [status(429), held(second)]
    proxy = LosingProxy(pg.port, b"not_before = $7, attempts = g.tries", b"INSERT 0 1\x00")
    proxy.let_through.clear()
    await proxy.start()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url=sink.url))
    url = database.replace(f":{pg.port}/", f":{proxy.port}/")
    proc = RelayProcess(config, tmp_path / "unused.db", {"RELAY_STORE_URL": url})
    run = {"id": "run_lost_retry", "status": "FAILED", "taskIdentifier": "t/a", "tags": []}
    try:
        await asyncio.to_thread(proc.start, 60.0)
        async with aiohttp.ClientSession() as http:
            assert await post(http, proc.url, [run]) == 202
        await asyncio.wait_for(proxy.cut.wait(), 60)
        await sink.wait_for(2)  # claimed again: its second send waits at the receiver
        await asyncio.wait_for(proxy.held.wait(), 60)
        proxy.let_through.set()  # the first claim's mark, written again
        assert await thawed_outcome(proc, hook_id(run)) == "delivery failed; will retry"
        row, retries = await outbox_row(database, hook_id(run))
        second.set()
        await wait_for(lambda: bool(sent_by(proc)), 60, "the second send recorded")
    finally:
        proc.kill()
        await proxy.close()
    assert len(sink.received) == 2  # not a third send while the second was in flight
    assert retries == 1
    lease = (row["lease_holder"] is not None, (row["lease_until"] or 0) > 0)
    assert (row["attempts"], lease) == (1, (True, True))  # still the second claim's
    assert await outbox_counts(database) == {"sent": 1}


async def outbox_row(url: str, ident: str) -> tuple[asyncpg.Record, int]:
    """The outbox row of notification `ident` and how many retries its events record."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT * FROM relay_outbox WHERE id = $1", ident)
        retries = await conn.fetchval(
            "SELECT count(*) FROM relay_events WHERE notification_id = $1 AND kind = 'retry'",
            ident,
        )
        return row, int(retries)
    finally:
        await conn.close()


class BlackoutProxy(LosingProxy):
    """A TCP proxy to PostgreSQL that, once, drops a statement holding `marker` and cuts every
    connection, then refuses every connection until `restore`: a replica cut off from
    PostgreSQL (it is taken for dead) before its outcome's write reached the server."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        super().__init__(upstream_port, marker, b"")
        self.out = False
        self.open: set[asyncio.StreamWriter] = set()

    def restore(self) -> None:
        self.out = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.out:
            writer.close()
            return
        self.open.add(writer)
        try:
            await super()._serve(reader, writer)
        finally:
            self.open.discard(writer)

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, losing: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            if self.armed and self.marker in data:
                self.armed, self.out = False, True
                self.cut.set()
                for client in self.open:  # the heartbeat's connection too
                    client.close()
                return  # not forwarded: the write never ran
            writer.write(data)
            await writer.drain()


async def test_a_cut_off_replica_does_not_tell_the_dead_another_marked(
    replicas: Replicas, database: str, pg: PgServer, sink: Sink, tmp_path: Path
) -> None:
    """A replica whose dead mark never reached PostgreSQL (cut off) is taken for dead; another
    sends the notification again, is refused alike and marks it dead, at the same attempts.
    The first, back, writes its outcome again and finds the row dead: another's, not its own
    (it never landed), so it says once that it no longer holds it and counts no dead."""

    sink.responses = [status(400), status(400)]
    proxy = BlackoutProxy(pg.port, DEAD_MARK)
    await proxy.start()
    cut_off = proxied(pg, database, proxy.port, sink, tmp_path, RELAY_REPLICA_TIMEOUT="2s")
    try:
        run = await failure_cut(cut_off, proxy, "run_cut_off")
        [other] = await replicas(1)
        await asyncio.to_thread(other.wait_for_log, "notification dead")
        proxy.restore()
        said = await thawed_outcome(cut_off, hook_id(run))
        async with aiohttp.ClientSession() as http, http.get(cut_off.url + "/metrics") as resp:
            text = await resp.text()
    finally:
        cut_off.kill()
        await proxy.close()
    assert await outbox_counts(database) == {"dead": 1}
    assert said == FENCED
    assert set(samples(text, "relay_notifications_dead_total{")) <= {0.0}
