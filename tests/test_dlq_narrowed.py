"""`relay dlq replay --all --channel C` (and `--rule`, `--since`): the dead letters of one
receiver sent again once it is fixed, the others left dead, as Svix recovers one endpoint's
failed messages. A running relay (in this process), a real sink, the command beside it."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
