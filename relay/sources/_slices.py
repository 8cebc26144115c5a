"""A batch of a feed's rows handed to intake a slice at a time, and what the slices came to.

A snapshot, or a catch-up after an outage, is one batch of every run of the shape (its rows are
emitted only at the up-to-date that ends it): decoded whole, its payloads, outputs and metadata
parsed into Python objects at once, a 64 MiB batch held ~400 MB beside its rows. Decoded and
submitted SLICE_BYTES of rows at a time, in order, it holds one slice's. Each slice is its own
commit: a kill between two leaves the position of the batch before, and its runs are submitted
again after the restart, which intake deduplicates, as for a kill during any batch. An inhibit
rule sees a slice's runs together, as a pushed batch's: a source run in a later slice inhibits
from then on, as if it had come in a later answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from relay.errors import InputError
from relay.formats.electric import parse_raw_run
from relay.formats.electric_values import Schema
from relay.intake import IntakeResult
from relay.model import Run

log = logging.getLogger("relay.realtime")
SLICE_BYTES = 4 * 1024 * 1024


def slices(rows: list[dict[str, Any]], limit: int = SLICE_BYTES) -> Iterator[list[dict[str, Any]]]:
    """`rows` in order, cut where their text adds up to more than `limit` (a larger row alone)."""
    out: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        weight = sum(len(v) if isinstance(v, str) else 8 for v in row.values())
        if out and size + weight > limit:
            yield out
            out, size = [], 0
        out.append(row)
        size += weight
    if out:
        yield out


def decoded(rows: list[dict[str, Any]], schema: Schema, feed: str) -> list[Run]:
    """The runs of `rows` (raw rows of `feed`); a row that cannot be decoded is logged, skipped."""
    runs = []
    for row in rows:
        run = _run_of(row, schema, feed)
        if run is not None:
            runs.append(run)
    return runs


_IDS = frozenset({"id", "friendlyId"})


def _run_of(row: dict[str, Any], schema: Schema, feed: str) -> Run | None:
    """The run of `row`. A column no run can hold (a float8 cost of NaN or Infinity, a NULL in
    `runTags`) is dropped, named in a warning, so the run still meets the rules: a POSTed row
    gets a 400 naming it, a feed's has no sender to tell and would never alert. A row whose
    ids cannot be read is skipped."""
    while True:
        try:
            return parse_raw_run(row, schema=schema)
        except InputError as exc:
            column = _COLUMN.split(exc.field, maxsplit=1)[0]
            where = {
                "feed": feed,
                "row_id": row.get("id"),
                "field": exc.field,
                "error": exc.message,
            }
            if column in _IDS or row.get(column) is None:
                log.warning("realtime row skipped: cannot decode it", extra=where)
                return None
            log.warning("realtime column dropped: cannot decode it", extra=where)
            row = {**row, column: None}


_COLUMN = re.compile(r"[.\[]")


@dataclass
class Submitted:
    """What the slices of one batch came to."""

    runs: int = 0
    notifications: int = 0
    newest_ms: int = 0  # the newest updatedAt of the runs submitted
    finished: bool = False  # one of them has finished

    def add(self, runs: Sequence[Run], result: IntakeResult) -> None:
        self.runs += len(runs)
        self.notifications += result.notifications
        self.newest_ms = max(self.newest_ms, *((r.updated_at_ms or 0) for r in runs))
        self.finished = self.finished or any(r.finishedAt is not None for r in runs)

    def lag_ms(self, now_s: float) -> int | None:
        """From the newest run's updatedAt to `now_s`; None when no run had one."""
        return round(now_s * 1000 - self.newest_ms) if self.newest_ms else None
