"""POST /v1/trigger/alerts: the fields an alert webhook may lack or send oddly, end to end.

Each case is a real-shaped body (a fixture with a field removed or changed), signed, posted to
a real relay, and read back as the notification its rule sent to the webhook sink.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Relay, RelayFactory, Sink
from tests.test_trigger_alerts import (
    DEPLOY,
    ERROR,
    HEADER,
    RUN,
    body_of,
    config,
    env,
    post_alert,
    sign,
    variant,
)
from tests.test_upstream_shapes import console_text


async def notified(
    relay: RelayFactory, sink: Sink, bodies: list[bytes], r: Relay | None = None
) -> list[dict[str, Any]]:
    """The payloads the webhook sink got for `bodies` (each notifying), in the order posted, to
    relay `r` (else a new one)."""
    r = r or await relay(config(sink))
    count = 0
    for body in bodies:
        status, answer = await post_alert(r, body)
        assert status == 202 and answer["notifications"] > 0, answer
        count += answer["notifications"]
        await sink.wait_for(count)
    return [got.json() for got in sink.received]


async def test_a_run_alert_without_task_tags_or_error_still_notifies(
    relay: RelayFactory, sink: Sink
) -> None:
    """Optional fields are omitted, or null in old bodies: none of them is a reason to lose the
    alert (a KeyError would be a 500, a null list a 400)."""
    cases = [
        nulled(variant(RUN, env(task=None, run__id="run_1")), "object", "run", "tags"),
        variant(
            RUN, {"object.task": {}, "object.run.tags": []} | env(run__id="run_2", run__error=None)
        ),
        variant("legacy-v1.run.failed", {"task": None, "error": None}),
    ]
    for n, payload in enumerate(await notified(relay, sink, cases)):
        assert payload["rule"] == "run-failures", n
        run = payload["run"]
        assert (run["taskIdentifier"], run["tags"], run["status"]) == ("", [], "FAILED"), n
        assert n == 0 or run["error"] is None, n


def nulled(body: bytes, *path: str) -> bytes:
    """`body` with the field at `path` sent as JSON null."""
    data = json.loads(body)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = None
    return json.dumps(data).encode()


async def test_deployment_and_error_alerts_without_their_optional_fields_still_notify(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A deployment alert without its failedAt / deployedAt is shown as sent (no time made up
    for it) and dated by the envelope's `created`; an error group without a task has none.
    Else it would be a 500, a dropped alert or a made-up time."""
    cases = [
        variant(DEPLOY, env(deployment__failedAt=None)),
        variant("alert.deployment.success", env(deployment__deployedAt=None)),
        variant(ERROR, env(error__taskIdentifier=None)),
    ]
    failed, success, error = await notified(relay, sink, cases)
    for payload, body in ((failed, cases[0]), (success, cases[1])):
        assert payload["deployment"] == json.loads(body)["object"]["deployment"]
    assert (error["rule"], error["taskIdentifier"]) == ("errors", None)
    text = console_text(tmp_path, json.loads(cases[0]), "{event: deployment.failed}")
    assert "  failed    2026-08-20 10:02:47 UTC" in text  # `created`: 10:02:47.930Z


def bare_error_group(first_seen: str, last_seen: str) -> bytes:
    """The un-enveloped `alert.error_group` body of the error fixture, seen then (epoch ms)."""
    body = json.loads(body_of(ERROR))["object"]
    body["error"].update(firstSeen=first_seen, lastSeen=last_seen)
    return json.dumps({"type": "alert.error_group", **body}).encode()


async def test_a_bare_error_group_s_epoch_dates_at_the_ends_of_what_a_date_holds(
    relay: RelayFactory, sink: Sink
) -> None:
    """Epoch milliseconds from 0 to the last of year 9999 are dates; one more is kept as sent
    (a date cannot hold it: a 500 would have Trigger.dev retry the alert)."""
    last_ms = "253402300799999"  # 9999-12-31T23:59:59.999Z
    cases = [bare_error_group("0", last_ms), bare_error_group("0", str(int(last_ms) + 1))]
    dated, kept = await notified(relay, sink, cases)
    assert dated["error"]["firstSeen"] == "1970-01-01T00:00:00.000Z"
    assert dated["error"]["lastSeen"] == "9999-12-31T23:59:59.999Z"
    assert kept["error"]["lastSeen"] == "253402300800000"


async def test_an_alert_posted_while_the_store_is_down_is_a_503_to_retry(
    relay: RelayFactory, sink: Sink
) -> None:
    """Trigger.dev retries an alert answered with a 5xx: while the store cannot take it, the
    answer is a 503 with Retry-After (not a 500 nor a 202 that loses it), and the alert
    delivered again once the store is back notifies."""
    r = await relay(config(sink))
    body = body_of(RUN)
    await r.service.store.close()
    headers = {"Content-Type": "application/json", HEADER: sign(body)}
    async with r.http.post(r.url + "/v1/trigger/alerts", data=body, headers=headers) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (503, "5"), await resp.text()
    await r.service.store.open()
    assert (await notified(relay, sink, [body], r))[0]["rule"] == "run-failures"


async def test_a_run_alert_s_string_or_custom_error_is_kept_as_sent(
    relay: RelayFactory, sink: Sink
) -> None:
    """A thrown string is a STRING_ERROR, an error Trigger.dev cannot parse a CUSTOM_ERROR with
    its JSON in `raw` (TRIGGER.md §3.2): neither has a code to read, and each is the run's error
    as sent."""
    errors = [
        {"type": "STRING_ERROR", "raw": "quota exceeded"},
        {"type": "CUSTOM_ERROR", "raw": '{"reason":"quota"}'},
    ]
    bodies = [
        variant(RUN, env(run__id=f"run_e{n}", run__error=error)) for n, error in enumerate(errors)
    ]
    assert [p["run"]["error"] for p in await notified(relay, sink, bodies)] == errors
