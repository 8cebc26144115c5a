"""What goes between relay serve and its delivery workers (relay.workers), and the child's ends.

Between the processes, two pipes per child:

- the child's stdin, commands from here: `wake <channel>` after a commit created work for it
  (the child also polls the store every second), `wake *`, `reload <n>` and n bytes: the config
  this process runs now, as it read it, its templates directory's files included (the child
  compiles that, not the files, which may have changed since; it starts with it too, from a
  file passed as --config-fd),
  `silences` (one was created or expired here: the child's cache of them is stale), and end of
  file: stop. A parent killed with -9 closes every stdin, so its children finish
  their in-flight sends and exit by themselves; read from the child's first moment, so that one
  still starting (waiting for its store, or for the predecessor its killed parent left) stops
  too. Why this pipe and not Linux's PR_SET_PDEATHSIG: it is there already, on every system,
  and its end is one event among the others; the signal fires on the death of the thread that
  forked, not the process, and races with a parent that dies before it is set.
- an events pipe (fd passed as --events-fd), one JSON line per delivery outcome
  (`{"kind", "channel", "reason", "attempts", "at"}`) and per request made to a receiver
  (`{"kind": "attempt", "channel", "type", "seconds"}`), a loop turn's lines in one write,
  which this process turns into its own metrics: /metrics stays one endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from base64 import b64decode, b64encode
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

READY = b'{"kind":"ready"}\n'


@dataclass(frozen=True)
class Outcome:
    """One delivery outcome as the events pipe carries it (what metrics need of a row)."""

    channel: str
    created_at: float


# (kind, outcome, reason, attempts): Metrics.delivery_event's shape. Of kind "held", the
# outcome's created_at is when the hold ends (outcomes.HoldEnd).
EventSink = Callable[[str, Outcome, str, int], None]


@dataclass(frozen=True)
class Attempt:
    """One request a worker's channel made to its receiver: Metrics.attempt's arguments."""

    channel: str
    type: str
    seconds: float


AttemptSink = Callable[[str, str, float], None]


def event_line(kind: str, outcome: Outcome, reason: str, attempts: int) -> str:
    """One outcome as the events pipe carries it: one JSON line."""
    line = {
        "kind": kind,
        "channel": outcome.channel,
        "reason": reason,
        "attempts": attempts,
        "at": outcome.created_at,
    }
    return orjson.dumps(line).decode() + "\n"


def attempt_line(attempt: Attempt) -> str:
    """One request to a receiver as the events pipe carries it: one JSON line."""
    line = {
        "kind": "attempt",
        "channel": attempt.channel,
        "type": attempt.type,
        "seconds": attempt.seconds,
    }
    return orjson.dumps(line).decode() + "\n"


class EventPipe:
    """The child's side of the events pipe. The outcomes of one turn of the event loop go in
    one write at its end: a write each (a system call here, and a wake-up and a read of the
    parent's loop for each line) cost CPU per notification in both processes. They are metrics
    only (the store holds the outcomes): a worker killed with -9 loses at most that turn's."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._held: list[str] = []

    def ready(self) -> None:
        """The child's first line: its delivery loops run."""
        self._held.append(READY.decode())
        self.flush()

    def outcome(self, kind: str, outcome: Outcome, reason: str, attempts: int) -> None:
        self._hold(event_line(kind, outcome, reason, attempts))

    def attempt(self, attempt: Attempt) -> None:
        self._hold(attempt_line(attempt))

    def _hold(self, line: str) -> None:
        self._held.append(line)
        if len(self._held) == 1:  # the turn's first: written once the turn's callbacks ran
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (the shutdown's last lines): at once
                self.flush()

    def flush(self) -> None:
        lines, self._held = self._held, []
        if lines:
            _write(self.out, "".join(lines))


def _write(out: IO[str], line: str) -> None:
    """A parent killed with -9 closed the pipe: its children finish their sends, recorded in
    the store, with nobody to count them, which is no error."""
    if out.closed:
        return
    try:
        out.write(line)
        out.flush()
    except OSError:  # BrokenPipeError: closed, so that nothing tries to flush it again
        with contextlib.suppress(OSError):
            out.close()


def config_payload(
    filename: str | None, text: str, templates: Mapping[str, bytes] | None = None
) -> bytes:
    """The config a child is to run: as the parent read it from `filename` (None: built in),
    with the files of its templates directory as the parent read them (None: read them)."""
    files = None if templates is None else {n: b64encode(d).decode() for n, d in templates.items()}
    return orjson.dumps({"config": filename, "text": text, "templates": files})


def read_config_payload(data: bytes) -> tuple[str | None, str, dict[str, bytes] | None]:
    config = orjson.loads(data)
    files = config.get("templates")
    templates = None if files is None else {n: b64decode(d) for n, d in files.items()}
    return config["config"], config["text"], templates


def read_event(line: bytes) -> tuple[str, Outcome, str, int] | Attempt | None:
    """An events pipe's line: an outcome (delivery_event's arguments), a request (Attempt), or
    None for a line this release cannot read."""
    try:
        data = orjson.loads(line)
        if data["kind"] == "attempt":
            return Attempt(str(data["channel"]), str(data["type"]), float(data["seconds"]))
        return (
            str(data["kind"]),
            Outcome(str(data["channel"]), float(data["at"])),
            str(data["reason"]),
            int(data["attempts"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


async def read_commands(
    wake: Callable[[str], None],
    wake_all: Callable[[], None],
    reload: Callable[[bytes], Any],
    stop: Callable[[], None],
    silences_changed: Callable[[], None],
) -> None:
    """The child's side of stdin: commands until end of file, then `stop`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command, _, arg = line.decode(errors="replace").strip().partition(" ")
        if command == "wake":
            wake_all() if arg == "*" else wake(arg)
        elif command == "reload":  # the parent's config follows: compiled as it read it
            try:
                config = await reader.readexactly(int(arg))
            except asyncio.IncompleteReadError:  # the parent died while writing it
                break
            reload(config)
        elif command == "silences":
            silences_changed()
    stop()
