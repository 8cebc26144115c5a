"""The baseline of bench/realtime_follow.py: the least a Python follower of a shape must do.

    python bench/bare_follower.py http://127.0.0.1:PORT --changes N [--timeout 120]

Long-polls GET /realtime/v1/runs like relay's follower (offset, handle, live, cursor; one
aiohttp session), parses each body with orjson and counts the change messages, nothing more:
no merging, decoding, rules or store. Once --changes changes arrived it makes one more request
(the shape server records it as the end, as for relay) and stops (or after --timeout); prints
one JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp
import orjson


async def follow(url: str, changes: int, timeout_s: float) -> dict[str, float | int]:
    params = {"tags": "bench", "offset": "-1"}
    seen = requests = 0
    t_start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        last = False
        while not last and time.monotonic() - t_start < timeout_s:
            last = seen >= changes
            async with session.get(url + "/realtime/v1/runs", params=params) as resp:
                body = await resp.read()
                headers = resp.headers
            requests += 1
            messages = orjson.loads(body)
            seen += sum(1 for m in messages if "key" in m)
            params["offset"] = headers.get("electric-offset", params["offset"])
            params["handle"] = headers.get("electric-handle", "")
            if any(m.get("headers", {}).get("control") == "up-to-date" for m in messages):
                params.update(live="true", cursor=headers.get("electric-cursor", ""))
    return {"t_start": t_start, "t_done": time.monotonic(), "changes": seen, "requests": requests}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the shape server, e.g. http://127.0.0.1:8080")
    p.add_argument("--changes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    result = asyncio.run(follow(args.url, args.changes, args.timeout))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
