"""`relay replicas`: the relay processes alive on a shared store (PostgreSQL), by their
heartbeats, and the channels each delivers — amtool's `cluster show` for relay's replicas.
Each `relay serve` and each of its `--workers` delivery workers is one; a serve with workers
delivers nothing itself (its channels: none)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from relay.cli_store import print_table, reading, said_whole, wants_json
from relay.settings import Settings

if TYPE_CHECKING:
    from relay.store import Replica, Store

# SQLite has no heartbeats to list: said instead of "none", which reads as "nothing runs"
ONE_OWNER = (
    "a SQLite store has no replicas: one relay serve (and its --workers) owns the file;"
    " replicas share a PostgreSQL store"
)


def cmd_replicas(args: argparse.Namespace, settings: Settings) -> int:
    shared, found = asyncio.run(reading(settings, _replicas))
    if not shared:  # said: "none" reads as "none runs"
        as_json = wants_json(args)
        print(ONE_OWNER, file=sys.stderr if as_json else sys.stdout)
        if as_json:
            print("[]")
        return 0
    views = [replica_view(r) for r in found]
    if said_whole(views, as_json=wants_json(args), none="no replica alive on the store"):
        return 0
    rows = [
        [v["host"], v["pid"], _delivered(v["channels"]), f"{v['expires_in_s']:.1f} s", v["holder"]]
        for v in views
    ]
    print_table(["HOST", "PID", "CHANNELS", "EXPIRES IN", "HOLDER"], rows, right={1, 3})
    return 0


async def _replicas(store: Store) -> tuple[bool, list[Replica]]:
    """Whether the store is one replicas share, and those alive on it."""
    return store.shared, await store.replicas()


def replica_view(replica: Replica) -> dict[str, Any]:
    """A replica as `--json` shows it, with the host and pid its holder name carries."""
    parts = replica.holder.split(":")
    host, pid = (":".join(parts[:-2]), parts[-2]) if len(parts) >= 3 else (replica.holder, "")
    return {
        "holder": replica.holder,
        "host": host,
        "pid": pid,
        "channels": None if replica.channels is None else list(replica.channels),
        "expires_in_s": round(replica.expires_in_s, 1),
    }


def _delivered(channels: list[str] | None) -> str:
    """A replica's channels in the table: none for a serve whose workers deliver (or an idle
    one), all for a relay older than the channels' naming (it delivers them all)."""
    if channels is None:
        return "all (an older relay)"
    return ",".join(channels) or "none"
