"""Channels: where notifications go. One module per channel type, behind one protocol.

A channel gets an already rendered `Outgoing` message and makes ONE delivery attempt. It raises
DeliveryError (classified: retryable, reason, retry_after) on failure and returns on success,
optionally with a receipt string (Slack: the message's channel and ts; PagerDuty: the dedup key)
that comes back in `Outgoing.recovers` when the run recovers.
Retries, backoff, dead letters and throttling belong to the delivery worker, not to channels.
Adding a channel type: its module (settings model + class, with its `close`, + KIND), one line
in REGISTRY, its templates under templates/<type>/, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import orjson

from relay.config import ChannelSettings

if TYPE_CHECKING:  # aiohttp's: `relay check` reads the channels' settings and sends nothing
    from relay.channels._http import HttpClient


@dataclass(frozen=True)
class Recovery:
    """What a recovery resolves: the notification sent about the run, and the receipt its
    channel returned then (None if it returned none, or that send did not succeed)."""

    notification_id: str
    receipt: str | None


@dataclass(frozen=True)
class Outgoing:
    """A rendered notification, ready for one attempt. `recovers` is set for a recovery (the
    run completed): a channel that can resolve or update the earlier message does so."""

    notification_id: str
    run_id: str
    rule: str
    parts: dict[str, str]
    timestamp: float
    recovers: Recovery | None = None
    group_key: str | None = None  # set when the notification belongs to a digest group
    subject: str | None = None  # what a thread is about when not the run (an error group)
    template: str = ""  # the template rendered (`run_failed`, `digest`), for log lines

    def stamped(self, timestamp: float) -> Outgoing:
        """This message as it goes out at `timestamp` (each try's own): dataclasses.replace,
        at a third of its cost, which a send paid every time."""
        return Outgoing(**{**self.__dict__, "timestamp": timestamp})

    def log_fields(self, channel: str) -> dict[str, str]:
        """The fields of every log line about this message (SPEC: run id, rule and channel)."""
        return {
            "channel": channel,
            "notification_id": self.notification_id,
            "run_id": self.run_id,
            "rule": self.rule,
        }


# The header that carries a notification's stable idempotency id on every HTTP channel's
# request: the webhook's Standard Webhooks `webhook-id`. Slack, Discord, Teams and PagerDuty
# got none, so a receiver (or a Slack-compatible one, a proxy, a test double) saw a send repeated
# after a kill -9 with nothing to tell it was the same notification (SPEC §5).
ID_HEADER = "webhook-id"


def json_headers(message: Outgoing, content_type: str = "application/json") -> dict[str, str]:
    """The headers of a JSON request about `message`: its type and its idempotency id."""
    return {"Content-Type": content_type, ID_HEADER: message.notification_id}


class KeyValue(Protocol):
    """Durable small state a channel may keep (e.g. the Slack thread of a run). The store."""

    async def kv_get(self, namespace: str, key: str) -> str | None: ...

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None: ...

    async def try_lead(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        """Hold the named lease for `ttl_s` from `now` (0: hand it back); True if `owner`
        holds it now."""
        ...


@dataclass(frozen=True)
class ChannelEnv:
    """What channels may use from the process: the shared HTTP client, stdout, durable state."""

    http: HttpClient
    stdout: IO[str]
    default_timeout_s: float
    state: KeyValue | None = None
    # `relay send-test`: a message some recipients were refused for good is a failure (after
    # the others got it), where `serve` counts it sent and warns
    partial_fails: bool = False
    # SMTP sessions kept open between mails (relay.channels._smtp_pool); not by `relay
    # send-test`, which sends one and exits
    keep_sessions: bool = True


class Channel(Protocol):
    name: str

    async def send(self, message: Outgoing) -> str | None:
        """One attempt; raise DeliveryError on failure. May return a receipt: what a later
        recovery needs to find this message again (kept with the notification)."""

    async def close(self) -> None:
        """End what the channel keeps open between sends, once it sends no more (an email
        channel's SMTP sessions: QUIT). Every channel says it: one that forgot is a type error
        here, where a `getattr` check let it leak what it held."""


class HoldsNothing:
    """The `close` of a channel that keeps nothing open between sends (the HTTP channels share
    the service's client, which the service closes)."""

    async def close(self) -> None:
        return None


S = TypeVar("S", bound=ChannelSettings)


class HttpChannel(HoldsNothing, Generic[S]):
    """What every HTTP channel starts with: its name, its settings (of its type's model,
    `settings_model`), the service's shared client, and each request's timeout (the channel's
    `timeout`, else the default)."""

    settings_model: type[S]

    def __init__(self, name: str, settings: ChannelSettings, env: ChannelEnv) -> None:
        assert isinstance(settings, self.settings_model)
        self.name = name
        self.settings: S = settings
        self._http = env.http
        self._timeout_s = settings.timeout or env.default_timeout_s


ChannelFactory = Callable[[str, ChannelSettings, ChannelEnv], Channel]
SettingsModel = type[ChannelSettings]


@dataclass(frozen=True)
class IncidentClose:
    """How a receiver's incident is closed: the `json` part its channel reads as a close of
    the receipt it is given, and what to do by hand when that fails (`{}`: the receipt)."""

    body: str
    by_hand: str


@dataclass(frozen=True)
class ChannelKind:
    """How to build and render for one channel type."""

    type: str
    settings: SettingsModel
    create: ChannelFactory
    parts: tuple[str, ...]
    # what is wrong with a rendered `json` part for this type (None: nothing), beyond being
    # JSON, given parsed (the renderer's one parse, which tells it is JSON): the renderer
    # treats a problem as a template failure (plain fallback, error logged)
    check: Callable[[Any], str | None] | None = None
    # the message the channel sends for a rendered one (its `json` part cut to the receiver's
    # limits, by the code its send cuts with), and what that changed (a block dropped or cut),
    # in words: what `relay test` shows
    as_sent: Callable[[Outgoing], tuple[dict[str, Any], list[str]]] | None = None
    # a send opens an incident that stays open (and joins the next send of the same key) until
    # a recovery resolves it: `relay send-test` resolves the one it opened, with this
    opens_incidents: IncidentClose | None = None


_NOTHING = "relay-default-3f9c2e: the template said nothing"
# a message within its receiver's limits, and what fitting it there changed, in words
Told = tuple[dict[str, Any], list[str]]


def default_text(message: Outgoing) -> str:
    """relay's one line about `message`: what a channel sends when its template shows
    nothing."""
    return f"relay: rule {message.rule} matched run {message.run_id}"


def parsed_part(rendered: str, text_key: str) -> Any:
    """A rendered `json` part parsed; one that is not JSON (a template that wrote text) as
    {text_key: the text}, the key its channel shows it by."""
    try:
        return orjson.loads(rendered)
    except orjson.JSONDecodeError:
        return {text_key: rendered}


def says_nothing_when(build: Callable[[Any, str], object]) -> Callable[[Any], str | None]:
    """A ChannelKind.check for a channel whose `build(parsed, default_text)` (a message, or a
    message and what was changed) falls back to relay's one-line default when the template
    gives it nothing to show."""

    def check(parsed: Any) -> str | None:
        built = build(parsed, _NOTHING)
        return "nothing the channel can show" if _NOTHING in repr(built) else None

    return check


def sent_and_told(
    build: Callable[[str, str], Told], part: str = "json"
) -> Callable[[Outgoing], Told]:
    """ChannelKind.as_sent of a channel whose message is `build(rendered, default_text)` of
    its `part` (its send's too, but for the keys of its delivery): the message within the
    receiver's limits, and what fitting it there changed, in words."""

    def as_sent(message: Outgoing) -> Told:
        return build(message.parts.get(part, ""), default_text(message))

    return as_sent


def sent_as(build: Callable[[str, str], dict[str, Any]]) -> Callable[[Outgoing], Told]:
    """sent_and_told of a channel that does not tell what was cut."""
    return sent_and_told(lambda rendered, default: (build(rendered, default), []))


def rendered_checks() -> dict[str, Callable[[Any], str | None]]:
    """Each channel type's check of its rendered `json` part (ChannelKind.check)."""
    return {kind.type: kind.check for kind in REGISTRY.values() if kind.check is not None}


def sole_part_types() -> frozenset[str]:
    """The channel types whose messages have one part (all but email's subject + txt + html):
    an override of theirs may leave the part out of its name (relay.template_names)."""
    return frozenset(kind.type for kind in REGISTRY.values() if len(kind.parts) == 1)


def _registry() -> dict[str, ChannelKind]:
    from relay.channels import (  # noqa: PLC0415
        console,
        discord,
        googlechat,
        msteams,
        opsgenie,
        pagerduty,
        pushover,
        slack,
        telegram,
        webhook,
    )
    from relay.channels import email as email_channel  # noqa: PLC0415

    kinds = (
        console.KIND,
        email_channel.KIND,
        slack.KIND,
        webhook.KIND,
        discord.KIND,
        msteams.KIND,
        pagerduty.KIND,
        telegram.KIND,
        googlechat.KIND,
        pushover.KIND,
        opsgenie.KIND,
    )
    return {kind.type: kind for kind in kinds}


REGISTRY: dict[str, ChannelKind] = _registry()


def settings_models() -> dict[str, type[ChannelSettings]]:
    return {name: kind.settings for name, kind in REGISTRY.items()}


def build(name: str, settings: ChannelSettings, env: ChannelEnv) -> Channel:
    return REGISTRY[settings.type].create(name, settings, env)
