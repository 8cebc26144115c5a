"""A generated Realtime feed: an Electric shape server serving --changes row changes, fast.

    PYTHONPATH=. python bench/shape_server.py [PORT] [--changes 200000] [--page 1000]

GET /realtime/v1/runs (any feed parameters) speaks the Electric flavour of TRIGGER.md §2.2:
offset -1 answers an empty snapshot (not up-to-date, with `electric-schema`); offset `0_inf`
answers page 1, offset `<p>_0` page p+1, each page ending up-to-date (body control message and
`electric-up-to-date` header; `electric-cursor` on live requests). Past the last page a request
is the follower's "I have it all": its time is recorded, and it gets a bare up-to-date (live
ones after --hold seconds). A request with another handle gets 409 must-refetch.

Pages hold --page changes: inserts of new runs (EXECUTING, every column) and updates of the runs
inserted by the page before (status, completedAt, cost, error: Electric's changed columns only;
every --failed-every-th run ends COMPLETED_WITH_ERRORS = FAILED, the others
COMPLETED_SUCCESSFULLY). So each change of a page is a different run, and --changes N makes N/2
runs. Rows come from the fixture session (tests/fakes/realtime.py), run ids are
run_bench<tag><10 digits>. Bodies are built from pre-encoded templates (no JSON encoding per
row), so the server costs little next to the follower. `GET /stats` answers the monotonic times
of the first request and of the first request past the end, and the changes served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

import orjson
from aiohttp import web
from bare_server import run_app

from tests.fakes.realtime import row_key, schema_header, session

_MARK = "__BENCH_ROW__"
HANDLE = "bench-handle-1"
UP_TO_DATE = orjson.dumps({"headers": {"control": "up-to-date"}})


def templates() -> dict[str, list[bytes]]:
    """Insert, failed-update and completed-update messages, split around the row id marks."""
    script = session()
    insert = dict(script[0].body[0]["value"])
    insert.update(id=_MARK, friendlyId=f"run_{_MARK}")
    failed = {**script[2].body[0]["value"], "id": _MARK}
    completed = {**failed, "status": "COMPLETED_SUCCESSFULLY", "error": None}
    relation = ["public", "TaskRun"]

    def message(operation: str, value: dict[str, Any]) -> list[bytes]:
        headers = {"operation": operation, "relation": relation}
        doc = {"key": row_key(_MARK), "value": value, "headers": headers}
        return orjson.dumps(doc).split(_MARK.encode())

    return {
        "insert": message("insert", insert),
        "failed": message("update", failed),
        "completed": message("update", completed),
    }


class Feed:
    def __init__(self, args: argparse.Namespace) -> None:
        self.runs = args.changes // 2
        self.half = max(args.page // 2, 1)  # runs inserted (and updated) per page
        self.pages = -(-self.runs // self.half) + 1
        self.failed_every, self.tag, self.hold_s = args.failed_every, args.tag, args.hold
        self.parts = templates()
        self.schema = schema_header()
        self.first: float | None = None
        self.done: float | None = None
        self.served = 0
        self.cursor = 58785300

    def _message(self, kind: str, run: int) -> bytes:
        return f"bench{self.tag}{run:010d}".encode().join(self.parts[kind])

    def page(self, p: int) -> bytes:
        """Page p (1-based): inserts of runs (p-1)h.. and updates of runs (p-2)h.."""
        out = []
        if p >= 2:
            for run in range((p - 2) * self.half, min((p - 1) * self.half, self.runs)):
                kind = "failed" if run % self.failed_every == 0 else "completed"
                out.append(self._message(kind, run))
        for run in range((p - 1) * self.half, min(p * self.half, self.runs)):
            out.append(self._message("insert", run))
        self.served += len(out)
        return b"[" + b",".join([*out, UP_TO_DATE]) + b"]"

    async def handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        self.first = self.first if self.first is not None else now
        query = request.query
        offset, live = query.get("offset", "-1"), query.get("live") == "true"
        headers = {"electric-handle": HANDLE}
        if offset == "-1":
            headers.update({"electric-offset": "0_inf", "electric-schema": self.schema})
            return _json(200, headers, b"[]")
        if query.get("handle") != HANDLE:
            body = b'[{"headers":{"control":"must-refetch"}}]'
            return _json(409, headers, body)
        asked = 1 if offset == "0_inf" else int(offset.split("_", 1)[0]) + 1
        headers["electric-up-to-date"] = ""
        if live:
            self.cursor += 20
            headers["electric-cursor"] = str(self.cursor)
        else:
            headers["electric-schema"] = self.schema
        if asked > self.pages:
            self.done = self.done if self.done is not None else now
            if live:
                await asyncio.sleep(self.hold_s)
            headers["electric-offset"] = offset
            return _json(200, headers, b"[" + UP_TO_DATE + b"]")
        headers["electric-offset"] = f"{asked}_0"
        return _json(200, headers, self.page(asked))

    async def stats(self, request: web.Request) -> web.Response:
        data = {"first": self.first, "done": self.done, "served": self.served}
        data.update(changes=2 * self.runs, pages=self.pages)
        return web.json_response(data)


def _json(status: int, headers: dict[str, str], body: bytes) -> web.Response:
    return web.Response(status=status, headers=headers, body=body, content_type="application/json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("port", type=int, nargs="?", default=0)
    p.add_argument("--changes", type=int, default=200_000, help="row changes in the feed")
    p.add_argument("--page", type=int, default=1000, help="changes per response")
    p.add_argument("--failed-every", type=int, default=5, help="every Nth run ends FAILED")
    p.add_argument("--hold", type=float, default=0.5, help="live hold past the end (s)")
    p.add_argument("--tag", default="rt", help="run id infix")
    args = p.parse_args(argv)
    if args.changes < 2 or args.page < 2 or args.failed_every < 1:
        p.error("--changes and --page at least 2, --failed-every at least 1")
    feed = Feed(args)
    app = web.Application()
    app.router.add_get("/realtime/v1/{tail:.*}", feed.handle)
    app.router.add_get("/stats", feed.stats)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_app(app, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
