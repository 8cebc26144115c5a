"""`relay dlq replay --all --channel C` (and `--rule`, `--since`): the dead letters of one
receiver sent again once it is fixed, the others left dead, as Svix recovers one endpoint's
failed messages. A running relay (in this process), a real sink, the command beside it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.conftest import RelayFactory, Sink, run_cli_in_process, status
from tests.test_silences import failed, wait_counts

CONFIG = """\
defaults:
  retry: {{max_attempts: 1, max_age: 1h}}
channels:
  a: {{type: webhook, url: "{url}/a"}}
  b: {{type: webhook, url: "{url}/b"}}
rules:
  - name: to-a
    match: {{status: [failure], task: "a/*"}}
    notify: [a]
  - name: to-b
    match: {{status: [failure], task: "b/*"}}
    notify: [b]
"""


def cli(store: str, *args: str) -> tuple[int, str, str]:
    done = run_cli_in_process(*args, env={"RELAY_STORE_URL": store})
    return done.returncode, done.stdout, done.stderr


async def test_replay_of_one_channel_leaves_the_others_dead(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    sink.default = status(400)  # both receivers refuse for good: one try each, dead
    r = await relay(CONFIG.format(url=sink.url))
    runs = [failed(f"{ch}/job", f"run_{ch}{n}") for ch in "ab" for n in range(3)]
    await r.post(runs)
    await wait_counts(r, dead=6)
    sink.default = None  # receiver a (and b) fixed; only a's dead letters are asked back
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    code, out, err = await asyncio.to_thread(cli, store, "dlq", "replay", "--all", "--channel", "a")
    assert (code, out) == (0, "replayed 3 notification(s)\n"), err
    await wait_counts(r, sent=3, dead=3)
    resent = [g.path for g in sink.received[6:]]
    assert resent == ["/a"] * 3
    code, out, _ = await asyncio.to_thread(cli, store, "dlq", "replay", "--all", "--rule", "to-a")
    assert (code, out) == (0, "replayed 0 notification(s)\n")  # none of to-a's is dead now
    code, out, _ = await asyncio.to_thread(
        cli, store, "dlq", "replay", "--all", "--rule", "to-b", "--since", "1h"
    )
    assert out == "replayed 3 notification(s)\n"
    await wait_counts(r, sent=6, dead=0)


def test_narrowing_without_all_or_with_a_bad_since_is_refused(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'relay.db'}"
    code, _, err = cli(store, "dlq", "replay", "--channel", "a")
    assert (code, err) == (
        2,
        "relay dlq replay: error: no notification id given: name the dead ones (relay dlq list)"
        " or --all (--channel, --rule and --since narrow it)\n",
    )
    code, _, err = cli(store, "dlq", "replay", "ntf_x", "--channel", "a")
    assert (code, err) == (
        2,
        "relay dlq replay: error: --channel, --rule and --since narrow --all, not ids\n",
    )
    code, _, err = cli(store, "dlq", "replay", "--all", "--since", "yesterday")
    assert code == 1 and err.startswith("error: dlq replay: since: expected a duration back"), err


async def replay_api(r: Any, body: Any) -> tuple[int, Any]:
    async with r.http.post(r.url + "/v1/dlq/replay", data=json.dumps(body)) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_the_api_replays_one_channel_as_the_cli_does(relay: RelayFactory, sink: Sink) -> None:
    """POST /v1/dlq/replay `{"channel": ...}` (with `rule`, `since`; `all` beside them or not)
    replays what `relay dlq replay --all --channel` does; a wrong narrowing is a 400."""
    sink.default = status(400)
    r = await relay(CONFIG.format(url=sink.url))
    await r.post([failed(f"{ch}/job", f"run_{ch}{n}") for ch in "ab" for n in range(2)])
    await wait_counts(r, dead=4)
    sink.default = None
    assert await replay_api(r, {"channel": "a"}) == (200, {"replayed": 2})
    await wait_counts(r, sent=2, dead=2)
    assert await replay_api(r, {"all": True, "rule": "to-a", "since": "1h"}) == (
        200,
        {"replayed": 0},
    )
    for body, field in [
        ({"ids": ["ntf_x"], "channel": "b"}, "channel"),
        ({"all": True, "channel": 5}, "channel"),
        ({"rule": ""}, "rule"),
        ({"since": "yesterday"}, "since"),
        ({"chanel": "b"}, "chanel"),
        ({"id": "ntf_x", "ids": ["ntf_y"]}, "ids"),
        ({"all": False, "channel": "b"}, "all"),  # not every one: none, said so
        ({"ids": ["ntf_x", ""]}, "ids"),
    ]:
        code, answer = await replay_api(r, body)
        assert (code, answer["field"]) == (400, field), (body, answer)
    assert await replay_api(r, {"all": True, "rule": "to-b"}) == (200, {"replayed": 2})
    await wait_counts(r, sent=4, dead=0)


async def test_the_api_replays_every_dead_one_when_given_no_body(
    relay: RelayFactory, sink: Sink
) -> None:
    """POST /v1/dlq/replay without a body (or a blank one) is `{"all": true}`."""
    sink.default = status(400)
    r = await relay(CONFIG.format(url=sink.url))
    await r.post([failed(f"{ch}/job", f"run_{ch}") for ch in "ab"])
    await wait_counts(r, dead=2)
    sink.default = None
    async with r.http.post(r.url + "/v1/dlq/replay", data=b" \n") as resp:
        assert (resp.status, await resp.json()) == (200, {"replayed": 2})
    await wait_counts(r, sent=2, dead=0)


async def test_a_narrowed_replay_reads_every_page_of_dead_ones(tmp_path: Path) -> None:
    """The dead ones are read DEAD_PAGE (10,000) at a time: one more than a page is replayed
    too, each once."""
    from relay.model import Decision, Match, Run, RunState, notification_id  # noqa: PLC0415
    from relay.store.sqlite import SQLiteStore  # noqa: PLC0415

    def decide(run: Run, previous: RunState | None) -> Decision:
        return Decision(RunState(None, run.status), (Match("to-a", "a", "run"),))

    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    runs = [Run.model_validate({"id": f"run_{i}", "status": "FAILED"}) for i in range(10_001)]
    await store.observe(runs, decide, now=100.0)
    tries = [(notification_id(run.id, "to-a", "a"), 1) for run in runs]
    await store.mark_dead(tries, now=110.0, reason="http_400", error="refused")
    await store.close()
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    code, out, err = await asyncio.to_thread(cli, url, "dlq", "replay", "--all", "--channel", "a")
    assert (code, out) == (0, "replayed 10001 notification(s)\n"), err
