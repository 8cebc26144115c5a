"""Lines logged in one event-loop turn go out in one write at the end of the turn; warnings,
errors and lines off the loop go out at once, after whatever the turn held."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

import orjson

from relay.logs import HELD_LINES, JsonFormatter, ScrubSecrets, _ScrubbingHandler


class _Writes(io.StringIO):
    """A stream that counts its writes: what each one was a system call on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _handler() -> tuple[_ScrubbingHandler, _Writes]:
    handler = _ScrubbingHandler(ScrubSecrets())
    handler.setFormatter(JsonFormatter())
    stream = _Writes()
    handler.setStream(stream)
    return handler, stream


def _log(handler: logging.Handler, msg: str, level: int = logging.INFO) -> None:
    record = logging.LogRecord("relay.test", level, "", 0, msg, None, None)
    handler.handle(record)


def _said(stream: _Writes) -> list[str]:
    return [str(orjson.loads(line)["msg"]) for line in stream.getvalue().splitlines()]


async def test_the_lines_of_one_loop_turn_go_out_in_one_write_at_its_end() -> None:
    handler, stream = _handler()
    for i in range(5):
        _log(handler, f"sent {i}")
    assert stream.writes == 0  # held until the turn ends
    await asyncio.sleep(0)
    assert (stream.writes, _said(stream)) == (1, [f"sent {i}" for i in range(5)])
    _log(handler, "sent 5")
    await asyncio.sleep(0)
    assert (stream.writes, _said(stream)[-1]) == (2, "sent 5")


async def test_a_warning_goes_out_at_once_after_the_lines_held_before_it() -> None:
    handler, stream = _handler()
    _log(handler, "sent")
    _log(handler, "receiver refused", logging.WARNING)
    assert _said(stream) == ["sent", "receiver refused"]  # before the turn ends
    await asyncio.sleep(0)
    assert _said(stream) == ["sent", "receiver refused"]


async def test_a_turn_holds_a_bounded_number_of_lines() -> None:
    handler, stream = _handler()
    for i in range(HELD_LINES):
        _log(handler, f"sent {i}")
    assert (stream.writes, len(_said(stream))) == (1, HELD_LINES)  # written without the turn
    await asyncio.sleep(0)
    assert stream.writes == 1


async def test_a_line_of_another_thread_goes_out_at_once_after_the_held_ones() -> None:
    handler, stream = _handler()
    _log(handler, "sent")
    thread = threading.Thread(target=_log, args=(handler, "store thread"))
    thread.start()
    thread.join(10)
    assert _said(stream) == ["sent", "store thread"]


def test_with_no_loop_each_line_goes_out_at_once() -> None:
    handler, stream = _handler()
    _log(handler, "started")
    _log(handler, "ready")
    assert (stream.writes, _said(stream)) == (2, ["started", "ready"])


async def test_a_flush_writes_what_the_turn_held() -> None:
    handler, stream = _handler()
    _log(handler, "stopping")
    handler.flush()  # as logging.shutdown at exit, when the loop may not turn again
    assert (stream.writes, _said(stream)) == (1, ["stopping"])
    await asyncio.sleep(0)
    assert stream.writes == 1
