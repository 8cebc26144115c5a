"""What a Realtime feed asks for (TRIGGER.md §2.1): `feed_of()` turns a configured feed into
its endpoint, parameters and stable key; `request_headers()` are the SDK's."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from relay.config_sources import RealtimeFeed

TRIGGER_VERSION = "4.5.12"  # the SDK (packages/core) version relay speaks like
ELECTRIC_VERSION = "1.0.0-beta.1"  # without it the proxy answers with legacy header names
API_VERSION = "2025-07-16"  # without it the server rewrites DEQUEUED to EXECUTING


def request_headers(secret_key: str, branch: str | None = None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {secret_key}",
        "trigger-version": TRIGGER_VERSION,
        "x-trigger-electric-version": ELECTRIC_VERSION,
        "x-trigger-api-version": API_VERSION,
    }
    if branch is not None:
        headers["x-trigger-branch"] = branch
    return headers


@dataclass(frozen=True)
class Feed:
    key: str  # stable from the definition: where its position is stored
    path: str
    params: dict[str, str]
    single_run: bool = False


def feed_of(spec: RealtimeFeed) -> Feed:
    """The endpoint, parameters and stored-position key of a configured feed."""
    if spec.run_id is not None:
        return Feed(f"run:{spec.run_id}", f"/realtime/v1/runs/{quote(spec.run_id)}", {}, True)
    if spec.batch_id is not None:
        return Feed(f"batch:{spec.batch_id}", f"/realtime/v1/batches/{quote(spec.batch_id)}", {})
    tags = spec.tags or []
    key = f"tags:{','.join(sorted(set(tags)))}|{spec.created_at}"
    params = {"createdAt": spec.created_at}
    if tags:
        params["tags"] = ",".join(tags)
    return Feed(key, "/realtime/v1/runs", params)
