"""Logging: one JSON object a line (default) or text, to stderr, secrets scrubbed.

Context fields (run_id, rule, channel, notification_id, reason, ...) are passed as `extra=`
and appear as top-level keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's traceback: formatted here, or already (scrubbed) in exc_text."""
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return record.exc_text or None


class _UtcStamp:
    """A record's time as ISO-8601 in UTC with milliseconds (2026-12-05T23:59:59.250Z): the JSON
    lines' `ts`, and the text lines' first word (a time alone read the same across midnight)."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # the last second stamped, as text

    def __call__(self, record: logging.LogRecord) -> str:
        return f"{self._utc_second(record.created)}.{int(record.msecs):03d}Z"

    def _utc_second(self, created: float) -> str:
        """`created`'s second in UTC as text: formatted once a second, not at every line (a
        sixth of what formatting a line cost)."""
        second, stamped = int(created), self._second  # one read: other threads log too
        if second != stamped[0]:
            stamped = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = stamped
        return stamped[1]


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._stamp = _UtcStamp()

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self._stamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_extras(record))
        if (exc := _exception(self, record)) is not None:
            data["exc"] = exc
        return orjson.dumps(data, default=str).decode()


# C0 and C1 controls, DEL, and the line and paragraph separators: line breaks to str.splitlines
# and to JSON-unaware readers, or (ESC, CSI) orders to the terminal that shows the text; and the
# bidirectional overrides, which make a terminal show text in another order than it is in
# ("Trojan Source": a run id that reads as another)
BIDI_OVERRIDES = "\u202a-\u202e\u2066-\u2069"  # embeddings, overrides, isolates (a class's body)
_UNPRINTABLE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{BIDI_OVERRIDES}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escaped(char: str) -> str:
    """One character as the escape sequence a reader can type back: `\\n`, `\\x1b`, `\\u202e`."""
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def typed_back(text: str) -> str:
    """`text` as one_line shows it, but each escaped character past ASCII as `\\u0085`, not
    `\\x85`: Go's `\\x85` (amtool's, and relay's matcher values) is a byte, no UTF-8 alone,
    where `\\u0085` is the character in Go, Python and JSON alike."""
    return _UNPRINTABLE.sub(
        lambda m: escaped(m[0]) if m[0] < "\x80" else f"\\u{ord(m[0]):04x}", text
    )


def one_line(value: object) -> str:
    """`value` as text that cannot start a line of its own nor steer a terminal: a run id or
    task name carrying a line break would otherwise write a forged line into a text log or a
    CLI listing, and one carrying ESC could recolour or clear the operator's screen."""
    return _UNPRINTABLE.sub(lambda m: escaped(m[0]), str(value))


def _logfmt(value: object) -> str:
    """A text line's field value as logfmt writes it: quoted when it is empty, holds a blank or
    `=`, or has anything escaped (`"`, `\\`, a line break, ESC ...: see one_line), so that a run
    id `a rule=x` from outside cannot read as a field of its own to the operator or a log
    pipeline (Loki's `| logfmt`)."""
    text = str(value)
    escaped = one_line(text.replace("\\", "\\\\").replace('"', '\\"'))
    if text and escaped == text and not _BLANK_OR_EQUALS.search(text):
        return text
    return f'"{escaped}"'


_BLANK_OR_EQUALS = re.compile(r"[\s=]")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._stamp = _UtcStamp()

    def format(self, record: logging.LogRecord) -> str:
        stamp = self._stamp(record)
        extras = _extras(record).items()  # a field without a value (`group=None`) is noise
        fields = " ".join(f"{k}={_logfmt(v)}" for k, v in extras if v is not None)
        said = one_line(record.getMessage())
        line = f"{stamp} {record.levelname:<7} {said} {fields}".rstrip()
        if (exc := _exception(self, record)) is not None:
            line += "\n" + exc
        return line


class ScrubSecrets(logging.Filter):
    """Replace any configured secret value in what a line says with ***: in its message, field
    values and traceback, before the line is formatted, so that a secret that happens to read
    like a part of the line's frame (`null`, `true`, a number, a level) leaves the line whole."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()
        self._lasting: tuple[str, ...] = ()  # the environment's (the store's password)

    def set(self, secrets: Iterable[str]) -> None:
        """The config's secrets (replacing the last config's), besides the lasting ones."""
        every = (*self._lasting, *secrets)
        forms = {form for s in every for form in _written(s) if len(s) >= 4}
        self.secrets = tuple(sorted(forms, key=len, reverse=True))

    def lasting(self, secrets: Iterable[str]) -> None:
        """Secrets of the process's settings, kept through every config reload."""
        self._lasting = tuple(secrets)
        self.set(())

    def record(self, record: logging.LogRecord, formatter: logging.Formatter) -> logging.LogRecord:
        """A copy of `record` whose message, fields and traceback are scrubbed: its attributes
        copied as one dict, then its fields scrubbed in place (copy.copy went through a failed
        __copy__ lookup and __reduce_ex__, then a second pass over the fields took the copy's
        fields out and put them back: nearly half of what scrubbing a line cost)."""
        cls = type(record)
        scrubbed = cls.__new__(cls)
        scrubbed.__dict__ = fields = record.__dict__.copy()
        for key in fields.keys() - _STANDARD:
            fields[key] = self._value(fields[key])
        scrubbed.msg, scrubbed.args = self.scrub(record.getMessage()), None
        if record.exc_info:
            scrubbed.exc_text = self.scrub(formatter.formatException(record.exc_info))
            scrubbed.exc_info = None
        return scrubbed

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):  # nearly every field: checked first
            return self.scrub(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, tuple):
            return tuple(self._value(v) for v in value)
        if isinstance(value, list | set | frozenset):
            return [self._value(v) for v in value]
        if isinstance(value, dict):
            return {self._value(k): self._value(v) for k, v in value.items()}
        return self.scrub(value if isinstance(value, str) else str(value))

    def scrub(self, text: str) -> str:
        """`text` with every form of every secret replaced by ***: also for text that is cut
        before it is logged (a cut secret no longer matches whole)."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def _written(secret: str) -> set[str]:
    """`secret` as a value can carry it: as is, URL-encoded, or inside a JSON or Python string
    (a body or an exception message quoting it)."""
    return {
        secret,
        orjson.dumps(secret).decode()[1:-1],  # a `"` or `\` in a password, in a JSON line
        repr(secret)[1:-1],  # in a text line's list or dict field
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    }


# Lines held for one event-loop turn at most (see _ScrubbingHandler); more are written at once.
HELD_LINES = 256


class _ScrubbingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Scrubs and formats each line at once. An INFO or DEBUG line logged on a running event
    loop is written at the end of the loop's turn, with the others of that turn in one write:
    a write per line ("notification sent" under load) cost its system call and a pass of the
    interpreter lock to the store's thread each time. Warnings and errors, lines of other
    threads and lines with no loop are written at once; the held ones go before them, and at
    logging.shutdown (a normal exit, relay.signals.exit_now)."""

    def __init__(self, scrub: ScrubSecrets) -> None:
        super().__init__(sys.stderr)
        self.scrub = scrub
        self._held: list[str] = []  # guarded by self.lock, as emit and flush are

    def emit(self, record: logging.LogRecord) -> None:
        loop = asyncio._get_running_loop()
        if loop is None or record.levelno >= logging.WARNING:
            self.flush()
            super().emit(record)
            return
        try:
            self._held.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if len(self._held) == 1:
            loop.call_soon(self.flush)
        elif len(self._held) >= HELD_LINES:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self._held = self._held, []
            with contextlib.suppress(OSError, ValueError):  # stderr closed: lost, as before
                if lines:
                    self.stream.write("".join(line + self.terminator for line in lines))
                super().flush()
        finally:
            self.release()

    def format(self, record: logging.LogRecord) -> str:
        if self.scrub.secrets and self.formatter is not None:
            record = self.scrub.record(record, self.formatter)
        return super().format(record)


SCRUB = ScrubSecrets()


class MalformedRequests(logging.Filter):
    """aiohttp logs each malformed request (a 400 from its parser) at ERROR, with a traceback
    quoting the client's bytes (up to a whole oversized header): any client could flood the log.
    Such a record becomes one WARNING line naming the kind of problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError  # noqa: PLC0415 - CLI start

        exc = record.exc_info[1] if record.exc_info else None
        bad = isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500
        if bad and record.levelno >= logging.ERROR:
            args = record.args if isinstance(record.args, tuple) else ()
            record.__dict__.update(
                status=getattr(exc, "code", None),
                error=type(exc).__name__,
                remote=str(args[0]) if args else None,
            )
            record.msg, record.args = "malformed HTTP request refused", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


class PoolReconnects(logging.Filter):
    """asyncpg's pool logs each failed reconnect during a PostgreSQL outage (every 1 s, doubling
    to 60 s) with a traceback: 15 lines a try for "connection refused". One line in words."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            record.__dict__["error"] = _error_words(exc)
            record.msg, record.args = "PostgreSQL unreachable: the connection pool tries again", ()
            record.exc_info, record.exc_text = None, None
        return True


def _error_words(exc: BaseException) -> str:
    """In words: "connection refused", "timeout", or the kind of error; never its text (it may
    quote a host or a user)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return type(exc).__name__


LINE_EVERY_S = 10.0


class CountedLines:
    """At most one line of a kind per key every LINE_EVERY_S, counting what happened since the
    last one: refused ingest requests (a wrong token must show in the log, a scanner must not
    flood it), a channel's delivery or the silences' reload while the store fails. A trouble
    over (`settled`) has its line, as often at most, apart: a trouble starting again just after
    a line said the last one was over is told at once (sharing one slot, a disk full again 2 s
    after freeing had no line for 10 s). `every_s` replaces LINE_EVERY_S for a kind of line
    that says the same each time (a template's bug, not a trouble that comes and goes)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, every_s: float | None = None
    ) -> None:
        self._clock = clock
        self._every_s = every_s
        self._logged: dict[Hashable, float] = {}  # when the last line of failures was told
        self._settled: dict[Hashable, float] = {}  # when the last line of a trouble over was
        self._since: dict[Hashable, int] = {}  # failures no line told; a key here: not over

    def due(self, key: Hashable, *, until_settled: bool = False) -> int | None:
        """Count one failure; when a line is due, the failures it reports (None: no line).
        `until_settled`: once told, the trouble stays open till `settled` says it is over (a
        store that failed once and answers again is said to, where a refusal is not)."""
        self._since[key] = self._since.get(key, 0) + 1
        count = self._take(key, self._logged)
        if count is not None and until_settled:
            self._since[key] = 0
        return count

    def settled(self, key: Hashable) -> int | None:
        """After a success: the failures no line told yet, when a line is due. Else the last
        ones of a trouble were never told: no failure came to carry them."""
        return self._take(key, self._settled) if key in self._since else None

    def _take(self, key: Hashable, told: dict[Hashable, float]) -> int | None:
        """The count since the last line when a line of this kind (`told`) is due, else None."""
        now, every_s = self._clock(), self._every_s
        if now - told.get(key, -math.inf) < (LINE_EVERY_S if every_s is None else every_s):
            return None
        told[key] = now
        return self._since.pop(key)


class _Fields(logging.Filter):
    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.update(self.fields)
        return True


def tag_lines(**fields: Any) -> None:
    """Add `fields` to every line this process logs (a delivery worker's `worker` index)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Fields(fields))


def setup_logging(fmt: str, level: str) -> None:
    # No line says where it was logged from, nor which thread or process logged it: records do
    # not collect those (the logging HOWTO's "Optimization"; a frame walk and a getpid() a line).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = _ScrubbingHandler(SCRUB)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())
    pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, PoolReconnects) for f in pool.filters):
        pool.addFilter(PoolReconnects())
