"""Block Kit as Slack takes it: a rendered `slack/<name>.json.j2` part kept to Slack's message
keys, every length Slack checks clamped (relay.channels.slack lists them), its mrkdwn texts
sent verbatim (no @here parsed into a mention), and the two forms a refused message is sent
again in (its text cut, its text alone).
"""

from __future__ import annotations

from typing import Any, TypeGuard

import orjson

from relay.filters import http_url, mrkdwn, truncate_chars

_LAYOUT_KEYS = ("blocks", "attachments")
MAX_BLOCKS, MAX_TEXT = 50, 40_000
# Slack's documented `text` limit is 40,000 (it truncates), but it now answers msg_too_long from
# about 4,000 (Slack's SDK maintainer, seratch/ChatGPT-in-Slack#102): a longer text is sent
# again cut to what every Slack takes, the section limit
SAFE_TEXT = 3000
_TEXT_LIMITS = {"header": 150, "section": 3000, "markdown": 12_000}
_MESSAGE_KEYS = ("text", "blocks", "attachments", "mrkdwn", "username", "icon_emoji", "icon_url")


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters; a closing ``` fence survives the cut."""
    if len(text) <= limit:
        return text
    if text.rstrip().endswith("```"):
        return truncate_chars(text, limit - 3) + "```"
    return truncate_chars(text, limit)


def _clip_object(obj: Any, limit: int) -> Any:
    """A text object ({"type", "text"}) with its text clipped; anything else unchanged."""
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return {**obj, "text": _clip(obj["text"], limit)}
    return obj


def _has_text(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("text"), str) and bool(obj["text"].strip())


def _clamp_button(element: Any) -> Any:
    if not isinstance(element, dict) or element.get("type") != "button":
        return element
    url = element.get("url")
    if isinstance(url, str) and len(url) > 3000:
        return None  # a cut URL would lead nowhere
    return {**element, "text": _clip_object(element.get("text"), 75)}


def _clamp_block(block: Any) -> dict[str, Any] | None:
    """One block within Slack's limits, or None when nothing sendable is left of it."""
    if not isinstance(block, dict):
        return None
    out, kind = dict(block), block.get("type")
    if isinstance(out.get("block_id"), str):
        out["block_id"] = out["block_id"][:255]
    if kind in ("header", "section"):
        if "text" in out:
            out["text"] = _clip_object(out["text"], _TEXT_LIMITS[kind])
        fields = out.get("fields")
        if isinstance(fields, list):
            out["fields"] = [_clip_object(f, 2000) for f in fields[:10]]
        if not _has_text(out.get("text")) and not (kind == "section" and out.get("fields")):
            return None
    elif kind == "markdown" and isinstance(out.get("text"), str):
        out["text"] = _clip(out["text"], _TEXT_LIMITS[kind])
    elif kind in ("context", "actions") and isinstance(out.get("elements"), list):
        if kind == "context":
            out["elements"] = [_clip_object(e, 3000) for e in out["elements"][:10]]
        else:
            buttons = (_clamp_button(e) for e in out["elements"][:25])
            out["elements"] = [e for e in buttons if e is not None]
        if not out["elements"]:
            return None
    return out


def fit(rendered: str, default_text: str) -> tuple[dict[str, Any], list[str]]:
    """The rendered part as a Slack message (known keys only, every length within limits) and
    what that changed of it, in words (a key Slack does not take, a block dropped or cut,
    blocks past MAX_BLOCKS, the text cut): the one cut, for the send and for `relay test`, which
    shows the message as sent (a block the template got wrong never reached Slack, and nothing
    said so). Parsed and cut once: the send parsed and cut the part twice, once to say."""
    try:
        value: Any = orjson.loads(rendered)
    except orjson.JSONDecodeError:
        value = rendered
    return fit_value(value, default_text)


def fit_value(value: Any, default_text: str) -> tuple[dict[str, Any], list[str]]:
    """fit, of the rendered part already parsed (or the text that is not JSON)."""
    if isinstance(value, list):
        value = {"blocks": value}
    if not isinstance(value, dict):
        value = {"text": str(value)}
    said = [
        f"`{key}` dropped (not a Slack message key)" for key in value if key not in _MESSAGE_KEYS
    ]
    message = {key: value[key] for key in _MESSAGE_KEYS if key in value}
    blocks = message.pop("blocks", None)
    if isinstance(blocks, list) and (kept := _fit_blocks(blocks, said)):
        message["blocks"] = kept
    text = message.get("text")
    if isinstance(text, str) and len(text) > MAX_TEXT:
        said.append(f"text cut to {MAX_TEXT} characters")
    message["text"] = _clip(text if _shows(text) else default_text, MAX_TEXT)
    return message, said


def _shows(text: Any) -> TypeGuard[str]:
    """Whether a message's `text` says something: it is kept (cut at most), not the default."""
    return isinstance(text, str) and bool(text.strip())


def _fit_blocks(blocks: list[Any], said: list[str]) -> list[dict[str, Any]]:
    """The first MAX_BLOCKS of `blocks` that Slack can show, each within its limits; what was
    dropped or cut added to `said`."""
    kept: list[tuple[int, dict[str, Any]]] = []
    for i, block in enumerate(blocks, 1):
        clamped = _clamp_block(block)
        kind = block.get("type") if isinstance(block, dict) else None
        if clamped is None:
            said.append(f"block {i} ({kind}) dropped: nothing Slack can show")
            continue
        if len(kept) < MAX_BLOCKS and clamped != block:
            said.append(f"block {i} ({kind}) cut to Slack's limits")
        kept.append((i, clamped))
    if len(kept) > MAX_BLOCKS:
        past = kept[MAX_BLOCKS:]
        said.append(f"blocks {past[0][0]}-{past[-1][0]} dropped: Slack takes {MAX_BLOCKS} blocks")
    return [block for _, block in kept[:MAX_BLOCKS]]


def slack_message(rendered: str, default_text: str) -> dict[str, Any]:
    """The rendered part as a Slack message (see fit)."""
    return fit(rendered, default_text)[0]


def says_nothing(value: Any) -> str | None:
    """Why a rendered part (parsed) makes a message of nothing (no text, no block, no
    attachment kept: Slack would get only relay's one-line default), else None. The renderer
    counts it a template failure, so the plain fallback tells of the run and the error is
    logged."""
    if isinstance(value, dict) and _shows(value.get("text")):
        return None  # its text is kept: no block need be fitted to know (most messages)
    message = fit_value(value, "")[0]
    attachments = message.get("attachments")
    if message["text"] or message.get("blocks") or (isinstance(attachments, list) and attachments):
        return None
    return "no text, blocks or attachments Slack can show"


def verbatim(message: dict[str, Any]) -> dict[str, Any]:
    """`message` with every mrkdwn text object of its blocks sent `verbatim` unless the template
    chose: Slack's default (false) parses a plain @here, @channel or @user-group in run data
    into a mention, which escaping &, <, > cannot stop. Manual links and mentions (<url|x>,
    <!here>) still work, plain URLs are no longer linked."""
    blocks = message.get("blocks")
    if not isinstance(blocks, list):
        return message
    return {**message, "blocks": [_verbatim_block(block) for block in blocks]}


def _verbatim_block(block: Any) -> Any:
    if not isinstance(block, dict):
        return block
    out = dict(block)
    if "text" in out:
        out["text"] = _verbatim_object(out["text"])
    for key in ("fields", "elements"):
        if isinstance(out.get(key), list):
            out[key] = [_verbatim_object(obj) for obj in out[key]]
    return out


def _verbatim_object(obj: Any) -> Any:
    if isinstance(obj, dict) and obj.get("type") == "mrkdwn" and "verbatim" not in obj:
        return {**obj, "verbatim": True}
    return obj


def shorter_body(body: dict[str, Any]) -> dict[str, Any] | None:
    """`body` with its text cut to SAFE_TEXT; None when it is no longer than that."""
    text = body.get("text")
    if not isinstance(text, str) or len(text) <= SAFE_TEXT:
        return None
    return {**body, "text": _clip(text, SAFE_TEXT)}


def plain_body(body: dict[str, Any], clear: bool) -> dict[str, Any] | None:
    """`body` as its text alone (blocks and attachments dropped, or emptied when `clear`), its
    buttons' links after it, all cut to SAFE_TEXT (a longer text Slack refuses as msg_too_long,
    and this is the message's last try); None when it has neither, so nothing to fall back from."""
    if not any(body.get(key) for key in _LAYOUT_KEYS):
        return None
    plain = {key: value for key, value in body.items() if key not in _LAYOUT_KEYS}
    links = _fitting(_button_links(body.get("blocks")), SAFE_TEXT // 2)
    text = plain.get("text")
    if links or isinstance(text, str):  # cut as Slack takes it: this is the last try
        plain["text"] = _clip(text if isinstance(text, str) else "", SAFE_TEXT - len(links)) + links
    if clear:
        plain.update(blocks=[], attachments=[])
    return plain


def _fitting(links: list[str], limit: int) -> str:
    """The `links` in order, one per line after the text, that fit in `limit` characters (one
    too long is left out, not those after it)."""
    kept = ""
    for link in links:
        if len(kept) + 1 + len(link) <= limit:
            kept += f"\n{link}"
    return kept


def _button_links(blocks: Any) -> list[str]:
    """The http(s) buttons of `blocks` as mrkdwn links (<url|label>): the dashboard link the
    shipped templates give only as a button, kept when a message goes out as its text alone."""
    links: list[str] = []
    for block in blocks if isinstance(blocks, list) else []:
        elements = block.get("elements") if isinstance(block, dict) else None
        for element in elements if isinstance(elements, list) else []:
            url = element.get("url") if isinstance(element, dict) else None
            if (url := _link_target(url)) is not None:
                label = element.get("text")
                label = label.get("text") if isinstance(label, dict) else None
                links.append(f"<{url.replace('&', '&amp;')}|{mrkdwn(label or url, 200)}>")
    return links


def _link_target(value: Any) -> str | None:
    """A plain http(s) URL (`HTTPS://` too, given back as https://) that fits in <url|label>
    (as the templates' `link` macro has it); else None."""
    url = http_url(value)
    fits = url is not None and len(url) <= 1500
    return url if fits and not any(c.isspace() or c in "|<>" for c in url or "") else None
