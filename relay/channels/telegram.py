"""`telegram`: messages through a Telegram bot, POST {api_url}/bot{token}/sendMessage.

The template (`telegram/<name>.html.j2`, autoescaped: every value it inserts is HTML-escaped)
renders the message text in Telegram's HTML. The channel sends it as
{chat_id, text, parse_mode: "HTML", link_preview_options: {is_disabled: true}}, with
`message_thread_id` (a forum topic) and `disable_notification` from the settings; the text is
first made into HTML Telegram takes, within its 4096 characters (relay.channels._telegram_html),
so no run data and no template can earn a 400 "can't parse entities" or "message is too long".

Recoveries (rules with `update_on_recovery`), as the Slack bot channel's: each sendMessage
returns the receipt {"to", "chat_id", "message_id"} (`to`: the chat_id as configured then), kept
with the notification; the recovery replaces that message's text (editMessageText) with the
`recovered` template's. Telegram answering "message is not modified" means it already reads so
(an earlier try's answer was lost): done. When Telegram will not edit it (deleted, too old,
another chat now), the recovery is sent as a reply to it (`reply_parameters`, with
`allow_sending_without_reply`: a message of its own when the alert is gone); with no receipt
(the alert's send failed, or the chat_id changed since), as a message of its own.

The bot token is in every request's path: it is never said. The shared client's errors name no
URL (timeouts, refused connections); Telegram's `description` is quoted with the token
redacted; the settings show it as a secret.

Failure classification; Telegram's `description` goes in `detail`:

    rate_limited  retryable, retry_after   HTTP 429: `parameters.retry_after` (seconds) of the
                                           body, else a Retry-After header
    server_error  retryable, Retry-After   HTTP 5xx, 408
    auth_error    permanent                HTTP 401 (token revoked or mistyped), 404 (no bot of
                                           that token), 403 (bot blocked, kicked, not a member)
    client_error  permanent                other 4xx: 400 chat not found, not enough rights,
                                           message thread not found, a group upgraded to a
                                           supergroup (`parameters.migrate_to_chat_id`: the
                                           detail names the chat_id to set) ...
    other         retryable                a 2xx answer that is not Telegram's JSON
    timeout, network: retryable, from channels/_http.py
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import replace
from typing import Any

import orjson
from pydantic import Field, field_validator

from relay.channels import (
    ChannelKind,
    HttpChannel,
    Outgoing,
    json_headers,
    sent_and_told,
)
from relay.channels._http_answers import (
    HttpResponse,
    api_base,
    classify_status,
    json_object,
    quoted,
)
from relay.channels._telegram_html import MAX_TEXT, telegram_html
from relay.config import ChannelSettings, RateLimit
from relay.config_base import Token
from relay.errors import DeliveryError
from relay.retry_after import body_retry_after, parse_retry_after

log = logging.getLogger("relay.channels.telegram")
_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,100}")
_USERNAME = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,31}")
_NUMERIC = re.compile(r"-?[0-9]{1,20}")
# what to do, after Telegram's words, for the refusals met setting a bot up
_HINTS = {
    "chat not found": "the bot is not in a chat of that chat_id: add it, or check the id"
    " (-100… for supergroups and channels)",
    "not enough rights": "the bot may not post there: make it an admin of the channel, or let"
    " members send messages",
    "bot was blocked by the user": "the user blocked the bot: unblock it",
    "bot was kicked": "add the bot to the chat again",
    "bot is not a member": "add the bot to the chat",
    "message thread not found": "no topic of that message_thread_id in the chat",
}
_STATUS_HINTS = {
    401: "bot_token was refused: revoked or mistyped (@BotFather → /token)",
    404: "no bot of that bot_token: mistyped? (@BotFather → /token)",
}


class TelegramSettings(ChannelSettings):
    bot_token: Token  # `<bot id>:<secret>`, as @BotFather gives it
    chat_id: int | str
    message_thread_id: int | None = Field(default=None, ge=1)  # a forum topic of the chat
    disable_notification: bool = False  # delivered without a sound
    api_url: str = "https://api.telegram.org"
    # Telegram takes about 20 messages a minute in a group (1 a second in a private chat)
    rate_limit: RateLimit | None = RateLimit(per_minute=20, burst=5)

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: Any) -> Any:
        if not _TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError(
                "bot_token must be the token @BotFather gives: <bot id>:<secret>"
                " (digits, a colon, then letters, digits, _ and -)"
            )
        return value

    @field_validator("chat_id", mode="before")
    @classmethod
    def _chat_id(cls, value: Any) -> int | str:
        """A numeric id (negative for groups, -100… for supergroups and channels; a string of
        digits too: `${TELEGRAM_CHAT_ID}` is one) or a public channel's @username."""
        if isinstance(value, int) and not isinstance(value, bool) and value != 0:
            return value
        text = value.strip() if isinstance(value, str) else None
        if text is not None and _NUMERIC.fullmatch(text) and int(text) != 0:
            return int(text)
        if text is not None and _USERNAME.fullmatch(text):
            return text
        raise ValueError(
            "chat_id must be a chat's numeric id (negative for a group: -100… for supergroups"
            " and channels) or a public channel's @username"
        )

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        base = api_base(value)
        if re.search(r"/bot[^/]*:", base):  # the token would be shown as a plain setting
            raise ValueError(
                "api_url is the Bot API server's base (https://api.telegram.org):"
                " the token goes in bot_token"
            )
        return base


def telegram_message(rendered: str, default_text: str) -> tuple[dict[str, Any], list[str]]:
    """The sendMessage fields of a rendered `html` part (text within Telegram's HTML and
    limits; `default_text` when it shows nothing), and what was changed, in words."""
    text, cut = telegram_html(rendered)
    if not text:
        text, _ = telegram_html(html.escape(default_text, quote=False))
    body = {"text": text, "parse_mode": "HTML", "link_preview_options": {"is_disabled": True}}
    return body, ([f"text cut to Telegram's {MAX_TEXT} characters"] if cut else [])


# the message sent for one, but for the keys of its delivery (chat, reply): the send's and
# `relay test`'s
as_sent = sent_and_told(telegram_message, "html")


def _description(data: dict[str, Any], token: str) -> str:
    words = data.get("description")
    if not isinstance(words, str) or not words.strip():
        return ""
    return quoted(words, (token,), 200, "[token]")


def classify(response: HttpResponse, token: str = "") -> DeliveryError:
    """The DeliveryError for an answer of the Bot API that is not {"ok": true}; never quotes
    the token. A 2xx answer with ok:false is classified by its `error_code`."""
    data = json_object(response.body)
    if data is None and 200 <= response.status < 300:
        return DeliveryError("other", retryable=True, detail="Telegram answered without JSON")
    data = data or {}
    status = response.status
    code = data.get("error_code")
    if 200 <= status < 300:
        status = code if isinstance(code, int) and 400 <= code < 600 else 400
    base = classify_status(replace(response, status=status))
    assert base is not None
    words = _description(data, token)
    detail = f"{words} (HTTP {status})" if words else base.detail
    params = data.get("parameters")
    params = params if isinstance(params, dict) else {}
    reason, retry_after = base.reason, base.retry_after
    if status == 429:
        retry_after = body_retry_after(params.get("retry_after"))
        if retry_after is None:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
    elif status == 404:  # the Bot API's answer to a token it knows no bot of
        reason = "auth_error"
    migrated = params.get("migrate_to_chat_id")
    if isinstance(migrated, int) and not isinstance(migrated, bool):
        detail += f": the group is a supergroup now; set chat_id: {migrated}"
    elif hint := _STATUS_HINTS.get(status) or next(
        (h for k, h in _HINTS.items() if k in words.lower()), None
    ):
        detail += f": {hint}"
    return DeliveryError(
        reason, retryable=base.retryable, detail=detail, retry_after=retry_after, status=status
    )


def posted_at(receipt: str | None) -> dict[str, Any] | None:
    """{"to", "chat_id", "message_id"} of a sent message from its receipt; None if none."""
    value = json_object(receipt)
    if value is None:
        return None
    chat, message_id = value.get("chat_id"), value.get("message_id")
    if isinstance(chat, int | str) and isinstance(message_id, int) and message_id > 0:
        return value
    return None


class TelegramChannel(HttpChannel[TelegramSettings]):
    settings_model = TelegramSettings

    async def send(self, message: Outgoing) -> str | None:
        """Send (or for a recovery, edit) the message; the receipt of a sent one."""
        payload, _ = as_sent(message)
        where = posted_at(message.recovers.receipt) if message.recovers is not None else None
        if where is not None and await self._edit(where, payload, message):
            return None
        settings = self.settings
        body: dict[str, Any] = {"chat_id": settings.chat_id, **payload}
        if settings.message_thread_id is not None:
            body["message_thread_id"] = settings.message_thread_id
        if settings.disable_notification:
            body["disable_notification"] = True
        if where is not None and where.get("to") == settings.chat_id:  # a message id names a
            # message only within its chat: none of another chat is replied to
            body["reply_parameters"] = {
                "message_id": where["message_id"],
                "allow_sending_without_reply": True,
            }
        result = await self._call("sendMessage", body, message)
        chat = result.get("chat")
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        message_id = result.get("message_id")
        if not isinstance(message_id, int):
            return None
        sent = {"to": settings.chat_id, "chat_id": chat_id or settings.chat_id}
        return orjson.dumps({**sent, "message_id": message_id}).decode()

    async def _edit(
        self, where: dict[str, Any], payload: dict[str, Any], message: Outgoing
    ) -> bool:
        """Replace the text of the message at `where`; False when Telegram will not."""
        body = {"chat_id": where["chat_id"], "message_id": where["message_id"], **payload}
        try:
            await self._call("editMessageText", body, message)
        except DeliveryError as err:
            if "message is not modified" in err.detail:
                return True  # it reads so already: an earlier try's answer was lost
            if err.retryable or err.reason == "auth_error":
                raise
            log.info(
                "telegram message cannot be edited (%s); replying to it",
                err.detail,
                extra=message.log_fields(self.name),
            )
            return False
        return True

    async def _call(self, method: str, body: dict[str, Any], message: Outgoing) -> dict[str, Any]:
        """POST a Bot API method once; its `result`, or raise the classified error."""
        token = self.settings.bot_token.get_secret_value()
        url = f"{self.settings.api_url}/bot{token}/{method}"
        data = orjson.dumps(body)
        response = await self._http.request(
            "POST", url, data, json_headers(message), self._timeout_s
        )
        answer = json_object(response.body)
        if 200 <= response.status < 300 and answer is not None and answer.get("ok") is True:
            result = answer.get("result")
            return result if isinstance(result, dict) else {}
        raise classify(response, token)


KIND = ChannelKind("telegram", TelegramSettings, TelegramChannel, ("html",), as_sent=as_sent)
