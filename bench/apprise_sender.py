"""The Apprise baseline of bench/delivery.py: send --count notifications with Apprise's json://
notifier to the bench sink, one after the other as `Apprise.notify` does; print one JSON result.

    python bench/apprise_sender.py http://127.0.0.1:PORT/path --count 10000 [--timeout 300]

Each notification is a title and a body naming a run id, like a run-failed alert. Sending stops
after --count notifications or --timeout seconds. Needs `apprise` (pip install apprise; not a
dependency of relay).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from urllib.parse import urlsplit

import apprise


def send_all(url: str, count: int, timeout_s: float) -> dict[str, float | int]:
    parts = urlsplit(url)
    notifier = apprise.Apprise()
    if not notifier.add(f"json://{parts.netloc}{parts.path}"):
        raise SystemExit(f"apprise refused the URL {url}")
    ok = failed = 0
    t_start = time.monotonic()
    for i in range(count):
        if time.monotonic() - t_start > timeout_s:
            break
        run_id = f"run_benchap{i:010d}"
        body = f"Run {run_id} of sync-customer-data FAILED: Stripe API responded with 429"
        if notifier.notify(title=f"sync-customer-data {run_id} FAILED", body=body):
            ok += 1
        else:
            failed += 1
    return {"t_start": t_start, "t_done": time.monotonic(), "sent": ok, "failed": failed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the sink, e.g. http://127.0.0.1:8080/apprise")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds of sending at most")
    args = p.parse_args(argv)
    logging.getLogger("apprise").setLevel(logging.ERROR)
    print(json.dumps(send_all(args.url, args.count, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
