"""`slack`: Block Kit messages through an incoming webhook or a bot token (chat.postMessage).

The template (`slack/<name>.json.j2`) renders {"text": ..., "blocks": [...]}; the channel keeps
only Slack's message keys, adds `channel`, `thread_ts`, `unfurl_links/media: false` and
`verbatim: true` to mrkdwn texts (unless the template set it: Slack's default parses a plain
@here or @user-group in run data into a mention), and clamps every length Slack checks
(header 150, section/context text 3000, fields 10 x 2000, button text 75, url 3000, 50
blocks, `text` 40,000) so no template can earn `invalid_blocks` for length; a message so
changed is logged (a warning naming the changes, once a template every FIT_LINE_EVERY_S).

With a bot token, the `ts` of the first message about a run is kept in the store (namespace
`slack_thread`, key `<channel name>:<slack channel>:<run id>`) and later messages about that run
go into its thread; for a rule with `group_by`, the thread is the digest group's (key
`<channel name>:<slack channel>:group:<group key>`), so each group's digests follow its first
one; an error-group alert's thread is its error group's (key `…:errgrp_<fingerprint>:<environment
id>`), so a regression or a later alert follows the group's first. Such a reply (a digest's, an
error group's) is also broadcast to the channel (`reply_broadcast`): it tells of new
failures, and a group lives as long as its runs keep coming (weeks), so a reply seen only in
the thread of a days-old message, notifying nobody, would hide them. A run's follow-ups
(another rule, a recovery that cannot update) stay in its thread. Each reply touches the
row's time, and the store prunes threads unused for `retention`, as it forgets runs. The
Slack channel is in the key because a ts names a message only within its channel: when
`channel:` changes, the runs' threads start anew there. Sends for one run or
group are serialised in-process, and a thread's first message is posted under a store lease
(relay.channels._slack_threads), so concurrent notifications, on one replica or several,
cannot start two threads.
When Slack refuses a reply in the thread (its first message was deleted, the thread is locked:
cannot_reply_to_message, invalid_thread_ts, thread_not_found, restricted_action_thread_locked),
the message is posted at the top level and starts the thread anew; so does a reply Slack took
but posted at the top level (its answer's message has no `thread_ts`: Slack does that when
the first message was deleted).
Incoming webhooks return no `ts`: no threading there.

When Slack refuses the layout of a message (invalid_blocks, invalid_blocks_format,
invalid_attachments, too_many_attachments: a template Slack's validation rejects;
msg_blocks_too_long: blocks each within their limits but too long together, as a digest of long
run lines can be), the error is logged and the message is sent once more as its text
alone (and its buttons' links; cut to 3,000 characters, as msg_too_long below), so the
on-call is still told; only if that fails too is the
notification failed (client_error, permanent). Likewise a text Slack finds too long
(msg_too_long: Slack now refuses texts from about 4,000 characters, not the 40,000 it documents)
is sent once more cut to 3,000 characters.

Recoveries (rules with `update_on_recovery`): each chat.postMessage returns the receipt
{"channel": <channel id>, "ts"} (chat.update wants the id, not a #name), kept with the
notification; the recovery replaces that message with chat.update (text, blocks and attachments:
an absent key would keep the old ones). Without a receipt (a webhook, an earlier failed send), or
when Slack says the message cannot be updated any more (cant_update_message, edit_window_closed),
the recovery is posted as a new message in the run's thread; when the message is gone
(message_not_found), as a new message of its own.

Failures are classified once, from Slack's answer (relay.channels._slack_api has the table).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import orjson
from pydantic import SecretStr, field_validator, model_validator

from relay.channels import (
    ChannelEnv,
    ChannelKind,
    HttpChannel,
    Outgoing,
    default_text,
    json_headers,
)
from relay.channels._http_answers import HttpResponse, api_base, https_or_local
from relay.channels._slack_api import api_answer, classify, error_name, in_thread, posted_at
from relay.channels._slack_blocks import (
    fit,
    plain_body,
    says_nothing,
    shorter_body,
    slack_message,
    verbatim,
)
from relay.channels._slack_threads import Threads
from relay.config import ChannelSettings, RateLimit
from relay.config_base import Token
from relay.errors import DeliveryError
from relay.filters import mrkdwn
from relay.logs import CountedLines

log = logging.getLogger("relay.channels.slack")
__all__ = [
    "KIND", "SlackChannel", "SlackSettings", "as_sent", "slack_message", "thread_subject",
]  # fmt: skip
# chat.update answers for a message that is gone or frozen: post the recovery as a new one
_NOT_UPDATABLE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
# chat.postMessage answers for a thread that takes no more replies (its first message deleted,
# the thread locked): post the message at the top level, where it starts the thread anew
_THREAD_GONE = frozenset(
    {
        "cannot_reply_to_message", "invalid_thread_ts", "thread_not_found",
        "restricted_action_thread_locked",
    }
)  # fmt: skip
# answers that refuse a message's blocks or attachments (msg_blocks_too_long: the blocks together
# are over a size Slack does not publish, each within its own limits): send the text alone
_BAD_LAYOUT = frozenset(
    {
        "invalid_blocks", "invalid_blocks_format", "invalid_attachments", "msg_blocks_too_long",
        "too_many_attachments",
    }
)  # fmt: skip
# a message changed to fit Slack's limits is a template's bug, the same at every message: told
# once a template and channel this often, with the count of the messages changed since
FIT_LINE_EVERY_S = 600.0


class SlackSettings(ChannelSettings):
    """Exactly one mode: `webhook_url`, or `token` + `channel` (Web API chat.postMessage)."""

    webhook_url: SecretStr | None = None
    token: Token | None = None
    channel: str | None = None
    api_url: str = "https://slack.com/api"
    username: str | None = None
    icon_emoji: str | None = None
    # Slack allows about one message a second per channel, with short bursts: 3 lets a failure
    # and its follow-ups out at once, a storm is spread at 1/s instead of earning 429s.
    rate_limit: RateLimit | None = RateLimit(per_second=1, burst=3)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            https_or_local(value.get_secret_value(), "webhook_url")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # `token: ${SLACK_BOT_TOKEN:-}` unset: every post would be dead on not_authed
        if value is not None and not value.get_secret_value():
            raise ValueError("token is empty (the bot's xoxb-… token)")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return api_base(value)

    @model_validator(mode="after")
    def _one_mode(self) -> SlackSettings:
        bot = self.token is not None or self.channel is not None
        if self.webhook_url is not None and bot:
            raise ValueError("use either webhook_url, or token + channel, not both")
        if self.webhook_url is None and not bot:
            raise ValueError("a slack channel needs webhook_url, or token + channel")
        if bot and (self.token is None or not self.channel):
            raise ValueError("token and channel go together: set both")
        if self.webhook_url is not None and (self.username or self.icon_emoji):
            raise ValueError("username and icon_emoji only work with token + channel")
        return self


def thread_subject(message: Outgoing) -> str:
    """What a thread is about: the digest group of a grouped rule, else the run's subject (an
    error-group alert's group) or the run (its id)."""
    if message.group_key:
        return f"group:{message.group_key}"
    return message.subject or message.run_id


class SlackChannel(HttpChannel[SlackSettings]):
    settings_model = SlackSettings

    def __init__(self, name: str, settings: ChannelSettings, env: ChannelEnv) -> None:
        super().__init__(name, settings, env)
        # a first message takes at most two posts (the second: its text alone), each a timeout
        self._threads = Threads(env.state, name, 2 * self._timeout_s + 5.0)
        # one lock per run with a send in flight, so concurrent sends cannot start two threads
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._fit_lines = CountedLines(every_s=FIT_LINE_EVERY_S)  # by template

    async def send(self, message: Outgoing) -> str | None:
        """Post (or for a recovery, update) the message; the receipt of a posted one."""
        payload, said = as_sent(message)
        self._tell_changes(said, message)
        payload.update(unfurl_links=False, unfurl_media=False)
        if self.settings.webhook_url is not None:
            await self._send(self.settings.webhook_url.get_secret_value(), payload, message)
            return None
        subject = thread_subject(message)
        lock = self._locks.get(subject)
        if lock is None:
            lock = self._locks[subject] = asyncio.Lock()
        async with lock:
            where = posted_at(message.recovers.receipt) if message.recovers is not None else None
            refused = None if where is None else await self._update(payload, where, message)
            if where is not None and refused is None:
                return None
            return await self._post_message(payload, message, refused != "message_not_found")

    def _tell_changes(self, said: list[str], message: Outgoing) -> None:
        """Warn that the message is sent changed to fit Slack's limits (a block dropped or cut,
        blocks past 50): only `relay test` said so, and a block a template got wrong never
        reached Slack unnoticed. The changes in words, never the text."""
        if said and (count := self._fit_lines.due(message.template)) is not None:
            log.warning(
                "Slack message changed to fit its limits",
                extra={
                    **message.log_fields(self.name),
                    "template": message.template,
                    "changes": said,
                    "messages": count,
                },
            )

    async def _post(
        self, url: str, body: dict[str, Any], message: Outgoing, token: str = ""
    ) -> HttpResponse:
        """POST JSON once; raise the classified error unless Slack answered 2xx."""
        headers = json_headers(message, "application/json; charset=utf-8")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = orjson.dumps(body)
        response = await self._http.request("POST", url, data, headers, self._timeout_s)
        if not 200 <= response.status < 300:
            raise classify(response, error_name(response.body))
        return response

    async def _send(
        self, url: str, body: dict[str, Any], message: Outgoing, *, clear: bool = False
    ) -> dict[str, Any]:
        """POST `body` (a Web API answer when a token is set, else {}); when Slack refuses its
        blocks or attachments, log it and POST the text alone once (`clear`: with the blocks and
        attachments emptied, which chat.update needs to drop the old ones)."""
        try:
            return await self._post_once(url, body, message)
        except DeliveryError as err:
            word = err.detail.split(" ", 1)[0]
            if word == "msg_too_long" and (shorter := shorter_body(body)) is not None:
                what, again = "text", shorter
            elif word in _BAD_LAYOUT and (plain := plain_body(body, clear)) is not None:
                what, again = "layout", plain
            else:
                raise
            log.error(
                "slack refused the message's %s (%s); sending it %s",
                what,
                err.detail,
                "with its text cut" if what == "text" else "as its text alone",
                extra=message.log_fields(self.name),
            )
            return await self._post_once(url, again, message)

    async def _post_once(self, url: str, body: dict[str, Any], message: Outgoing) -> dict[str, Any]:
        if self.settings.token is None:
            await self._post(url, body, message)
            return {}
        token = self.settings.token.get_secret_value()
        return api_answer(await self._post(url, body, message, token))

    async def _update(
        self, payload: dict[str, Any], where: dict[str, str], message: Outgoing
    ) -> str | None:
        """chat.update the message at `where`; Slack's error if it can no longer update it."""
        assert self.settings.token is not None
        body = {
            **where,
            "text": payload["text"],
            "blocks": payload.get("blocks", []),
            "attachments": payload.get("attachments", []),
        }
        url = f"{self.settings.api_url}/chat.update"
        try:
            await self._send(url, body, message, clear=True)
        except DeliveryError as err:
            if err.detail in _NOT_UPDATABLE:
                log.info(
                    "slack message cannot be updated; posting", extra=message.log_fields(self.name)
                )
                return err.detail
            raise
        return None

    async def _post_message(
        self, payload: dict[str, Any], message: Outgoing, threaded: bool = True
    ) -> str | None:
        settings = self.settings
        assert settings.token is not None and settings.channel is not None
        body: dict[str, Any] = {**payload, "channel": settings.channel}
        if settings.username:
            body["username"] = settings.username
        if settings.icon_emoji:
            body["icon_emoji"] = settings.icon_emoji
        if not threaded:
            return await self._post_in(None, body, message)
        subject = thread_subject(message)
        key = f"{self.name}:{settings.channel}:{subject}"
        # relays before 2026-12-04 kept the thread under `<name>:<subject>`: after an upgrade
        # the runs they alerted about go on in their threads
        legacy = f"{self.name}:{subject}"
        async with self._threads.joined(key, message, legacy) as thread_ts:
            return await self._post_in(thread_ts, body, message, key)

    async def _post_in(
        self, thread_ts: str | None, body: dict[str, Any], message: Outgoing, key: str = ""
    ) -> str | None:
        """Post `body` in thread `thread_ts` (None: at the top level); keep the thread at
        `key` (none: no threading) for the next message; the receipt."""
        if thread_ts is not None:
            body["thread_ts"] = thread_ts
            if message.group_key or message.subject:  # news: shown in the channel too
                body["reply_broadcast"] = True
        try:
            answer = await self._chat_post(body, message)
        except DeliveryError as err:
            if thread_ts is None or err.detail not in _THREAD_GONE:
                raise
            log.info(
                "slack thread takes no replies; starting anew", extra=message.log_fields(self.name)
            )
            body.pop("reply_broadcast", None)
            del body["thread_ts"]
            thread_ts = None
            answer = await self._chat_post(body, message)
        if thread_ts is not None and not in_thread(answer):
            log.info(
                "slack posted the reply at the top level; starting the thread anew",
                extra=message.log_fields(self.name),
            )
            thread_ts = None
        ts, channel = answer.get("ts"), answer.get("channel")
        ts = ts if isinstance(ts, str) and ts else None
        kept = thread_ts or ts  # the thread started, or replied to (touched: pruned when unused)
        if key and kept is not None:
            await self._threads.remember(key, kept, message)
        if ts is None or not isinstance(channel, str) or not channel:
            return None
        return orjson.dumps({"channel": channel, "ts": ts}).decode()

    async def _chat_post(self, body: dict[str, Any], message: Outgoing) -> dict[str, Any]:
        return await self._send(f"{self.settings.api_url}/chat.postMessage", body, message)


def as_sent(message: Outgoing) -> tuple[dict[str, Any], list[str]]:
    """The message sent for `message`, but for the keys of its delivery (channel, thread):
    its `json` part cut to Slack's limits, its mrkdwn sent verbatim; and what the cut changed,
    in words. The send's and `relay test`'s."""
    default = mrkdwn(default_text(message))
    payload, said = fit(message.parts.get("json", ""), default)
    return verbatim(payload), said


KIND = ChannelKind("slack", SlackSettings, SlackChannel, ("json",), says_nothing, as_sent)
