"""JSON log lines: a line with a secret in it is the same line, fields in the same order, the
secret as ***; each line's timestamp is its own record's."""

from __future__ import annotations

import io
import logging
import time

import orjson
import pytest

from relay.logs import JsonFormatter, ScrubSecrets, TextFormatter, _ScrubbingHandler

SECRET = "https://hooks.example.com/T0/B0/s3cr3t-t0ken"


def _line(scrub: ScrubSecrets, record: logging.LogRecord) -> dict[str, object]:
    handler = _ScrubbingHandler(scrub)
    handler.setFormatter(JsonFormatter())
    handler.setStream(io.StringIO())
    handler.handle(record)
    stream = handler.stream
    assert isinstance(stream, io.StringIO)
    line: dict[str, object] = orjson.loads(stream.getvalue())
    return line


def _record() -> logging.LogRecord:
    try:
        raise ValueError(f"refused by {SECRET}")
    except ValueError as exc:
        error = exc
    record = logging.getLogger("relay.test").makeRecord(
        "relay.test",
        logging.ERROR,
        "(unknown file)",
        0,
        "posting to %s failed",
        (SECRET,),
        (type(error), error, error.__traceback__),
        extra={
            "channel": "hooks",
            "url": SECRET,
            "attempts": 2,
            "latency_s": 0.25,
            "group": None,
            "tries": [SECRET, "timeout"],
            "labels": {"target": SECRET},
        },
    )
    record.created, record.msecs = 1_764_928_800.5, 500.0
    return record


def test_a_scrubbed_line_is_the_line_with_its_secrets_starred() -> None:
    scrub = ScrubSecrets()
    plain = _line(scrub, _record())  # no secret configured: nothing scrubbed
    scrub.set([SECRET])
    record = _record()
    scrubbed = _line(scrub, record)
    assert list(scrubbed) == list(plain)  # the same fields, in the same order
    expected = orjson.loads(orjson.dumps(plain).replace(SECRET.encode(), b"***"))
    assert scrubbed == expected
    assert SECRET not in orjson.dumps(scrubbed).decode()
    assert scrubbed["tries"] == ["***", "timeout"] and scrubbed["labels"] == {"target": "***"}
    assert "ValueError: refused by ***" in str(scrubbed["exc"])
    # the record itself is left as it was, for any other handler
    assert record.url == SECRET and record.args == (SECRET,) and record.exc_info is not None  # type: ignore[attr-defined]


def test_each_line_is_stamped_with_its_own_time_in_utc() -> None:
    formatter = JsonFormatter()
    logger = logging.getLogger("relay.test")
    # within one second, into the next, and back (a wall clock stepped back)
    for created in (1_764_928_800.25, 1_764_928_800.75, 1_764_928_801.0, 1_764_928_799.5):
        record = logger.makeRecord("relay.test", logging.INFO, "(unknown file)", 0, "x", (), None)
        record.created, record.msecs = created, (created % 1) * 1000
        stamp = orjson.loads(formatter.format(record))["ts"]
        second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        assert stamp == f"{second}.{int(record.msecs):03d}Z"


def test_a_text_line_starts_with_the_date_and_time_in_utc() -> None:
    """RELAY_LOG_FORMAT=text began with a local time alone (`23:59:59`): a log read across
    midnight (or from another time zone) could not say which day a line was. Now the stamp is
    the JSON lines' `ts`."""
    logger = logging.getLogger("relay.test")
    record = logger.makeRecord("relay.test", logging.WARNING, "(unknown file)", 0, "late", (), None)
    record.created, record.msecs = 1_764_979_199.25, 250.0  # 2025-12-05 23:59:59.25 UTC
    assert TextFormatter().format(record) == "2025-12-05T23:59:59.250Z WARNING late"


def test_a_text_line_leaves_out_the_fields_without_a_value() -> None:
    """A delivery of a run alone said `group=None` on every text line; the JSON line keeps
    `"group": null`, so that each line of a kind has the same keys for a log pipeline."""
    record = logging.makeLogRecord(
        {"msg": "sent", "levelname": "INFO", "run_id": "run_1", "group": None, "attempts": 0}
    )
    record.created, record.msecs = 1_764_979_199.25, 250.0
    assert TextFormatter().format(record).endswith(" INFO    sent run_id=run_1 attempts=0")
    assert orjson.loads(JsonFormatter().format(record))["group"] is None


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("run_1", "run_1"),
        ("a rule=x", '"a rule=x"'),
        ('say "hi"', r'"say \"hi\""'),
        ("", '""'),
        ("C:\\tmp", r'"C:\\tmp"'),
        (["server_error", "timeout"], "\"['server_error', 'timeout']\""),
    ],
)
def test_a_text_lines_field_values_are_quoted_as_logfmt_quotes_them(
    value: object, written: str
) -> None:
    """A run id `a rule=x` (run ids, tasks and tags come from outside) wrote `run_id=a rule=x`:
    a field `rule` of its own to whoever reads the line, or to Loki's `| logfmt`."""
    record = logging.makeLogRecord({"msg": "sent", "levelname": "INFO", "run_id": value})
    record.created, record.msecs = 1_764_979_199.25, 250.0
    assert TextFormatter().format(record).endswith(f" INFO    sent run_id={written}")
