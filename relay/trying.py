"""Trying a compiled config without the service: `relay test`'s dry run (which rules match a run,
the messages they would send) and `relay send-test`'s one real send of a sample run."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace

import orjson

from relay import channels as channel_registry
from relay.channels import ChannelEnv, IncidentClose, Outgoing, Recovery
from relay.configure import Compiled
from relay.dashboard_links import dashboard_link
from relay.errors import DeliveryError, RelayError
from relay.grouping import group_key, group_labels
from relay.model import Notification, Run, notification_id
from relay.rendering import render_digest, render_notification
from relay.routes import http_client, route_for
from relay.sending import Route
from relay.template_probe import SAMPLE_RUN
from relay.templating import Rendered


@dataclass(frozen=True)
class DryRun:
    run_id: str
    rules: list[str]
    messages: list[tuple[str, str, Rendered]]  # (rule, channel, rendered)
    event: str = "run"  # run, deployment.failed, ...: what `relay test` heads the id with
    # by (rule, channel): what the channel changes of the rendered message before sending it
    changes: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def dry_run(compiled: Compiled, runs: list[Run], digests: bool = False) -> list[DryRun]:
    """Which rules match each run (as if first seen) and the messages they would send; then,
    asked (`--digests`: the output stays one result per event otherwise), the digest of each
    group (of a `group_by` rule) two or more of the runs fall in."""
    config = compiled.loaded.config
    env = ChannelEnv(http_client(), sys.stdout, config.defaults.timeout)
    link = dashboard_link(config.defaults)
    out = []
    groups: dict[str, dict[str, Notification]] = {}  # a digest rule's rows by group, by run
    for run in runs:
        decision = compiled.rules.decide(run, None)
        messages, changes = [], {}
        for match in decision.matches:
            row = Notification(
                notification_id(run.id, match.rule, match.channel),
                run.id,
                match.rule,
                match.channel,
                match.template,
                run.as_dict(),
                time.time(),
            )
            if match.group_by is not None:  # its message is rendered as one of the group
                labels = group_labels(row.run, match.group_by)
                key = group_key(match.rule, match.channel, labels)
                row = replace(row, group_key=key, extra={"group_labels": labels})
                groups.setdefault(key, {})[run.id] = row
            route = route_for(compiled, match.channel, env, throttled=False)
            rendered = render_notification(compiled.renderer, match.channel, route, row, link)
            rendered, said = _as_sent(compiled, row, rendered)
            messages.append((match.rule, match.channel, rendered))
            changes[match.rule, match.channel] = said
        rules = list(dict.fromkeys(m.rule for m in decision.matches))
        out.append(DryRun(run.id, rules, messages, run.event, changes))
    return out + [
        _digest(compiled, key, list(rows.values()), env)
        for key, rows in groups.items()
        if digests and len(rows) > 1
    ]


def _digest(compiled: Compiled, key: str, rows: list[Notification], env: ChannelEnv) -> DryRun:
    """The digest a group of two or more of the file's runs would get (template `digest`, or
    the rule's own `<template>_digest`)."""
    rule, channel = rows[0].rule, rows[0].channel
    route = route_for(compiled, channel, env, throttled=False)
    link = dashboard_link(compiled.loaded.config.defaults)
    digest = render_digest(compiled.renderer, channel, route, rows, link)
    rendered, said = _as_sent(compiled, rows[0], digest)  # rows[0] of the group: its key
    return DryRun(key, [rule], [(rule, channel, rendered)], "digest", {(rule, channel): said})


def _as_sent(
    compiled: Compiled, row: Notification, rendered: Rendered
) -> tuple[Rendered, list[str]]:
    """`rendered` as its channel would send it: a `json` part (Telegram's `html`) cut to the
    receiver's limits by the channel's own code (ChannelKind.as_sent), and what that changed,
    in words; the parts as rendered where the channel changes nothing. `relay test` showed the
    part as rendered: a template's author saw 60 blocks where Slack got 50."""
    kind = channel_registry.REGISTRY[compiled.loaded.config.channels[row.channel].type]
    part = kind.parts[0]  # a channel that changes its message has that one part
    if kind.as_sent is None or part not in rendered.parts:
        return rendered, []
    outgoing = Outgoing(
        row.id, row.run_id, row.rule, rendered.parts, row.created_at,
        group_key=row.group_key, template=rendered.template,
    )  # fmt: skip
    message, said = kind.as_sent(outgoing)
    if part == "json":
        shown = orjson.dumps(message, option=orjson.OPT_INDENT_2).decode()
    else:  # Telegram's `html`: the text it is sent, in the HTML Telegram takes
        shown = str(message.get("text", ""))
    return replace(rendered, parts={**rendered.parts, part: shown}), said


async def send_test(compiled: Compiled, channel: str) -> str | None:
    """One real attempt through `channel` with a sample run; raises DeliveryError on failure.
    On a channel that opens incidents (PagerDuty) the trigger, once accepted, is resolved: its
    key (the receipt) is returned."""
    config = compiled.loaded.config
    if channel not in config.channels:
        known = ", ".join(sorted(config.channels)) or "none"
        raise RelayError(f"unknown channel {channel[:100]!r} (known: {known})")
    http = http_client()
    try:
        route = route_for(
            compiled,
            channel,
            ChannelEnv(
                http, sys.stdout, config.defaults.timeout, partial_fails=True, keep_sessions=False
            ),
            throttled=False,
        )
        run = Run.model_validate(SAMPLE_RUN)
        now = time.time()
        row = Notification(
            f"ntf_test_{int(now * 1000)}", run.id, "send-test", channel, "run", run.as_dict(), now
        )
        rendered = render_notification(
            compiled.renderer, channel, route, row, dashboard_link(config.defaults)
        )
        # the template named as a serving relay names it (a Slack message changed to fit: run)
        outgoing = Outgoing(
            row.id, run.id, row.rule, rendered.parts, now, template=rendered.template
        )
        receipt = await route.channel.send(outgoing)
        kind = channel_registry.REGISTRY[config.channels[channel].type]
        if not kind.opens_incidents or not receipt:
            return None
        await _resolve_test(route, row, receipt, kind.opens_incidents)
        return receipt
    finally:
        await http.close()


async def _resolve_test(
    route: Route, row: Notification, receipt: str, close: IncidentClose
) -> None:
    """Resolve the alert a send-test's trigger opened (its dedup key, PagerDuty's receipt; its
    alias, Opsgenie's): the on-call was paged, the incident closes, and the next send-test (the
    same sample run, the same key) pages again instead of joining an alert still open."""
    recovery = Recovery(row.id, receipt)
    resolve = Outgoing(row.id, row.run_id, row.rule, {"json": close.body}, time.time(), recovery)
    try:
        await route.channel.send(resolve)
    except DeliveryError as exc:
        raise RelayError(
            f"paged, but the resolve failed: {exc}; {close.by_hand.format(receipt)}"
        ) from exc
