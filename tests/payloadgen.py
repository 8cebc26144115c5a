"""A seeded generator of *valid* Trigger.dev payloads relay has never seen, with what relay must
make of each (an expectation computed here, independently of relay's own parsers).

Shapes and values follow Trigger.dev's public schemas (TRIGGER.md; trigger.dev @ b082e443):
* the SDK run object (`RunShape`, runStream.ts; SerializedError {message, name?, stackTrace?});
* the raw Realtime row of `public."TaskRun"` (`SubscribeRunRawShape`, api.ts), either typed (as
  @electric-sql/client hands it over) or as Electric's wire text (every value a string or null:
  't'/'f', bigint and float8 as text, jsonb as text, Postgres array literals);
* the alert webhooks (schemas/webhooks.ts: alert.run.failed, alert.deployment.failed/success,
  alert.error) and the legacy un-enveloped v1 run and deployment bodies.

Every optional field is null, missing or present; timestamps with and without milliseconds and
with offsets; statuses of every vocabulary and unknown ones; unknown extra fields everywhere.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

# -- statuses (TRIGGER.md §1.3) ----------------------------------------------------------------
# Written out from TRIGGER.md, not imported from relay.statuses: the generator is an oracle
# independent of the code it checks (a status relay forgot must still be generated).
CURRENT = [
    "PENDING_VERSION",
    "QUEUED",
    "DEQUEUED",
    "EXECUTING",
    "WAITING",
    "COMPLETED",
    "CANCELED",
    "FAILED",
    "CRASHED",
    "SYSTEM_FAILURE",
    "DELAYED",
    "EXPIRED",
    "TIMED_OUT",
]
V3 = ["WAITING_FOR_DEPLOY", "REATTEMPTING", "FROZEN", "INTERRUPTED"]
# raw TaskRunStatus → its v3 name where today's differs (the SDK up to 4.0.0-v4-beta.23): a
# rule on either name matches the row
RAW_V3 = {
    "WAITING_FOR_DEPLOY": "WAITING_FOR_DEPLOY",
    "RETRYING_AFTER_FAILURE": "REATTEMPTING",
    "PAUSED": "FROZEN",
    "WAITING_TO_RESUME": "FROZEN",
    "INTERRUPTED": "INTERRUPTED",
}
# raw TaskRunStatus → today's public status (apiStatusFromRunStatus)
RAW = {
    "DELAYED": "DELAYED",
    "PENDING": "QUEUED",
    "PENDING_VERSION": "PENDING_VERSION",
    "WAITING_FOR_DEPLOY": "PENDING_VERSION",
    "DEQUEUED": "DEQUEUED",
    "EXECUTING": "EXECUTING",
    "RETRYING_AFTER_FAILURE": "EXECUTING",
    "PAUSED": "WAITING",
    "WAITING_TO_RESUME": "WAITING",
    "COMPLETED_SUCCESSFULLY": "COMPLETED",
    "COMPLETED_WITH_ERRORS": "FAILED",
    "INTERRUPTED": "FAILED",
    "CANCELED": "CANCELED",
    "CRASHED": "CRASHED",
    "SYSTEM_FAILURE": "SYSTEM_FAILURE",
    "EXPIRED": "EXPIRED",
    "TIMED_OUT": "TIMED_OUT",
}
UNKNOWN = ["SUSPENDED", "PENDING_APPROVAL", "QUEUED_FOR_RETRY_V5"]
FAILURE = {"FAILED", "CRASHED", "SYSTEM_FAILURE", "TIMED_OUT", "INTERRUPTED"}
INTERNAL_CODES = [
    "COULD_NOT_FIND_EXECUTOR",
    "COULD_NOT_FIND_TASK",
    "COULD_NOT_IMPORT_TASK",
    "CONFIGURED_INCORRECTLY",
    "TASK_ALREADY_RUNNING",
    "TASK_EXECUTION_FAILED",
    "TASK_EXECUTION_ABORTED",
    "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE",
    "TASK_PROCESS_SIGKILL_TIMEOUT",
    "TASK_PROCESS_SIGSEGV",
    "TASK_PROCESS_SIGTERM",
    "TASK_PROCESS_OOM_KILLED",
    "TASK_PROCESS_MAYBE_OOM_KILLED",
    "TASK_RUN_CANCELLED",
    "TASK_INPUT_ERROR",
    "TASK_OUTPUT_ERROR",
    "TASK_MIDDLEWARE_ERROR",
    "HANDLE_ERROR_ERROR",
    "GRACEFUL_EXIT_TIMEOUT",
    "TASK_RUN_HEARTBEAT_TIMEOUT",
    "TASK_RUN_CRASHED",
    "TASK_RUN_UNCAUGHT_EXCEPTION",
    "MAX_DURATION_EXCEEDED",
    "DISK_SPACE_EXCEEDED",
    "POD_EVICTED",
    "POD_UNKNOWN_ERROR",
    "TASK_HAS_N0_EXECUTION_SNAPSHOT",
    "TASK_DEQUEUED_INVALID_STATE",
    "TASK_DEQUEUED_QUEUE_NOT_FOUND",
    "TASK_RUN_DEQUEUED_MAX_RETRIES",
    "TASK_RUN_STALLED_EXECUTING",
    "TASK_RUN_STALLED_EXECUTING_WITH_WAITPOINTS",
    "OUTDATED_SDK_VERSION",
    "TASK_DID_CONCURRENT_WAIT",
    "RECURSIVE_WAIT_DEADLOCK",
    "BATCH_ITEM_COULD_NOT_TRIGGER",
    "PAYLOAD_TOO_LARGE",
    "UNSPECIFIED_ERROR",
]

TASKS = [
    "billing/charge",
    "billing/refunds/issue",
    "sync-customer-data",
    "render-video",
    "a",
    "ü/τ",
]
TAGS = ["env:prod", "env:staging", "vip", "customer:cus_Q8x2", "plan:pro", "ünï:✓", "🚀", "a b"]
TAGS += ["NULL", "null", 'say "hi"', "back\\slash", "a,b", "{x}", " pad ", "x" * 128]
LONG = ["x" * 5000, "é" * 3001, "word " * 900, "at f (file.ts:1:1)\n" * 1500]
WEIRD = [
    "",
    " ",
    "<b>&amp;</b>",
    "{{ run.id }}",
    "{% raw %}",
    "*_~`>",
    "line\nbreak",
    "\u200b",
    "😀" * 3,
]
# unknown fields a run may carry whose names the default templates read off other events
SHADOWS = "environment project organization deployment tasks task vercel git classification alert"
SHADOWS += " recovered digest machine dashboardUrl isOutOfMemoryError realtimeStreams"
BASE = datetime(2026, 8, 20, 9, 14, 22, 460000, tzinfo=UTC)


@dataclass
class Expect:
    """What relay must make of one generated object."""

    id: str
    event: str = "run"
    status: str = ""
    v3_status: str | None = None  # a raw row's v3 status name (RAW_V3), which rules match too
    task: str = ""
    tags: list[str] = field(default_factory=list)
    cost: float = 0.0
    base_cost: float = 0.0
    duration: float = 0.0
    measured: bool = True  # the update carries a cost and duration (an alert webhook's does not)
    is_test: bool = False
    metadata: Any = None
    updated: datetime | None = None  # updatedAt as sent (None: the update carries none)


class Gen:
    """All randomness comes from one seeded random.Random."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.n = 0

    # -- small pieces ---------------------------------------------------------------------------
    def chance(self, p: float = 0.5) -> bool:
        return self.r.random() < p

    def pick(self, items: Any) -> Any:
        return self.r.choice(list(items))

    def word(self, n: int = 8) -> str:
        alphabet = string.ascii_letters + string.digits + "-_ äöü€😀τ"
        return "".join(self.r.choice(alphabet) for _ in range(self.r.randint(1, n)))

    def text(self) -> str:
        if self.chance(0.03):
            return self.pick(LONG)
        return self.pick(WEIRD) if self.chance(0.3) else self.word(30)

    def run_id(self) -> str:
        self.n += 1
        return f"run_{self.r.getrandbits(64):016x}{self.n}"

    def json_value(self, depth: int = 0) -> Any:
        kind = self.r.randint(0, 9 if depth < 5 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return self.chance()
        if kind == 2:
            return self.r.choice([self.r.randint(-(2**53), 2**53), 2**63 - 1, -(2**63), 2**64 - 1])
        if kind == 3:
            return self.pick([0.1, -1.5e-7, 3.0, 1e300, 12345.678])
        if kind <= 5:
            return self.text()
        if kind <= 7:
            return [self.json_value(depth + 1) for _ in range(self.r.randint(0, 4))]
        return {self.text(): self.json_value(depth + 1) for _ in range(self.r.randint(0, 5))}

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.chance(0.3):  # wide
            meta.update({f"k{i}": self.json_value(3) for i in range(self.r.randint(20, 60))})
        if self.chance(0.3):  # deep
            deep: Any = self.json_value(4)
            for i in range(self.r.randint(5, 30)):
                deep = {f"d{i}": deep}
            meta["deep"] = deep
        if self.chance(0.4):
            meta["customer"] = {"tier": self.pick(["enterprise", "free", None, 1, True])}
        elif self.chance(0.1):  # a key with a dot in it: the whole key is tried first
            meta["customer.tier"] = self.pick(["enterprise", 1, True, 1.0])
        if self.chance(0.2):
            meta["$$streams"] = ["openai"]
        if self.chance(0.3):
            meta.update({self.text(): self.json_value() for _ in range(3)})
        return meta

    def tags(self) -> list[str]:
        kind = self.r.randint(0, 3)
        if kind == 0:
            return []
        if kind == 3:  # many
            return list(dict.fromkeys(self.word(12) for _ in range(self.r.randint(10, 40))))
        return list(dict.fromkeys(self.pick([*TAGS, self.word()]) for _ in range(kind * 2)))

    def when(self, offset_ms: int = 0) -> datetime:
        return BASE + timedelta(milliseconds=offset_ms + self.r.randint(0, 10**8))

    def iso(self, at: datetime) -> str:
        """ISO-8601 as JS writes it (…123Z), without ms, or with a zone offset."""
        kind = self.r.randint(0, 3)
        if kind == 0:
            return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if kind == 1:
            return at.isoformat(timespec="seconds").replace("+00:00", "Z")
        zone = timezone(timedelta(hours=self.r.choice([-11, -5, 2, 5.5, 14])))
        spec = "milliseconds" if kind == 2 else "microseconds"
        return at.astimezone(zone).isoformat(timespec=spec)

    def pg_ts(self, at: datetime) -> str:
        """Postgres timestamp(3) text (trailing zeros trimmed) or the native backend's ISO."""
        ms = at.microsecond // 1000
        head = at.strftime("%Y-%m-%d %H:%M:%S")
        frac = f".{ms:03d}".rstrip("0").rstrip(".") if ms else ""
        if self.chance(0.2):
            return f"{head}{frac}".replace(" ", "T")
        return f"{head}{frac}"

    # -- errors -----------------------------------------------------------------------------------
    def task_run_error(self) -> dict[str, Any]:
        """A raw TaskRunError (the four shapes), sometimes with pieces missing or extra keys."""
        kind = self.pick(["BUILT_IN_ERROR", "CUSTOM_ERROR", "STRING_ERROR", "INTERNAL_ERROR"])
        if kind == "BUILT_IN_ERROR":
            err = {
                "type": kind,
                "name": self.pick(["Error", "TypeError", "UnexpectedExitError", self.text()]),
                "message": self.pick(
                    [self.text(), "Unexpected exit with code -1", "MANUAL_OOM_KILL_ERROR"]
                ),
                "stackTrace": self.pick(["", "Error: x\n    at f (file.ts:1:1)", self.text()]),
            }
        elif kind == "INTERNAL_ERROR":
            err = {"type": kind, "code": self.pick(INTERNAL_CODES)}
            if self.chance():
                err["message"] = self.pick([self.text(), "Process exited with SIGKILL", ""])
            if self.chance():
                err["stackTrace"] = self.text()
        else:
            raw = json.dumps(self.json_value()) if kind == "CUSTOM_ERROR" else self.text()
            err = {"type": kind, "raw": raw}
        for key in list(err):
            if key != "type" and self.chance(0.1):
                del err[key]  # missing pieces
        if self.chance(0.1):
            err[self.word()] = self.json_value()
        return err

    def sdk_error(self) -> dict[str, Any] | None:
        """SerializedError {message, name?, stackTrace?} (createJsonErrorObject)."""
        kind = self.r.randint(0, 4)
        if kind == 0:
            return {"message": f"trigger.dev internal error ({self.pick(INTERNAL_CODES)})"}
        err: dict[str, Any] = {"message": self.text()}
        if kind >= 2:
            err["name"] = self.pick(["Error", "AbortError", self.text()])
        if kind >= 3:
            err["stackTrace"] = self.text()
        if kind == 4 and self.chance(0.3):
            err = {"name": "Error"}  # missing pieces
        return err

    # -- the three shapes -------------------------------------------------------------------------
    def sdk_run(self) -> tuple[dict[str, Any], Expect]:
        rid, created = self.run_id(), self.when()
        status = self.pick(CURRENT + V3 + ["COMPLETED_WITH_ERRORS", "PENDING"] + UNKNOWN)
        public = {"COMPLETED_WITH_ERRORS": "FAILED", "PENDING": "QUEUED"}.get(status, status)
        exp = Expect(rid, status=public, task=self.pick([*TASKS, self.text()]))
        run: dict[str, Any] = {
            "id": rid,
            "taskIdentifier": exp.task,
            "status": status,
            "createdAt": self.iso(created),
            "updatedAt": self.iso(created + timedelta(seconds=5)),
        }
        optional: dict[str, Any] = {
            "payload": self.json_value(),
            "output": self.json_value(),
            "number": self.r.randint(0, 2**31),
            "durationMs": self.r.choice([0, 1532, 60000, 60001, 3_600_000, 2**31 - 1, 2.5]),
            "costInCents": self.r.choice(
                [0, 0.0025, 1.637, 5, 5.000001, 900.5, 1e300, 12345678901]
            ),
            "baseCostInCents": self.r.choice([0, 0.0025, 0.01]),
            "tags": self.tags(),
            "idempotencyKey": self.text(),
            "expiredAt": self.iso(self.when()),
            "ttl": self.pick(["10m", "1h", 3600]),
            "finishedAt": self.iso(self.when()),
            "startedAt": self.iso(self.when()),
            "delayedUntil": self.iso(self.when()),
            "queuedAt": self.iso(self.when()),
            "metadata": self.metadata(),
            "error": self.sdk_error() if self.chance(0.8) else self.task_run_error(),
            "isTest": self.chance(),
            "realtimeStreams": self.pick([[], ["openai"]]),
            "isFailed": self.chance(),
            self.word(): self.json_value(),  # unknown extra field
            self.pick(SHADOWS.split()): self.json_value(),
        }
        for key, value in optional.items():
            roll = self.r.random()
            if roll < 0.6:
                run[key] = value
            elif roll < 0.8 and key not in ("isTest",):
                run[key] = None
        exp.tags = run.get("tags") or []
        exp.cost = float(run.get("costInCents") or 0)
        exp.base_cost = float(run.get("baseCostInCents") or 0)
        exp.duration = float(run.get("durationMs") or 0)
        exp.is_test = bool(run.get("isTest"))
        exp.metadata = run.get("metadata")
        exp.updated = read_time(run["updatedAt"])
        return run, exp

    def raw_row(self) -> tuple[dict[str, Any], Expect]:
        """A TaskRun row: typed, or every value as Electric's wire text."""
        wire = self.chance()
        cuid = f"cm{self.r.getrandbits(80):020x}"
        rid = self.run_id()
        raw_status = self.pick(list(RAW) + UNKNOWN)
        public = RAW.get(raw_status, raw_status)
        created = self.when()
        exp = Expect(rid, status=public, v3_status=RAW_V3.get(raw_status), task=self.pick(TASKS))
        tags = self.tags() if self.chance(0.8) else self.pick([None, []])
        duration = self.r.choice([0, 14873, 60000, 60001, 2**31 - 1])
        cost = self.r.choice([0.0, 0.050270739999999994, 5.0, 5.5, 1e-7, 1.7976931348623157e308])
        base = self.r.choice([0.0, 0.0025])
        is_test = self.chance()
        meta = self.metadata() if self.chance(0.7) else None
        payload, payload_type = self.packet()
        output, output_type = self.packet()
        error = self.task_run_error() if self.chance(0.6) else None
        row: dict[str, Any] = {
            "id": cuid,
            "taskIdentifier": exp.task,
            "createdAt": self.pg_ts(created),
            "updatedAt": self.pg_ts(created + timedelta(seconds=3)),
            "friendlyId": rid,
            "status": raw_status,
        }
        optional: dict[str, Any] = {
            "startedAt": self.pg_ts(self.when()),
            "delayUntil": self.pick([self.pg_ts(self.when()), "infinity", "-infinity"]),
            "queuedAt": self.pg_ts(self.when()),
            "expiredAt": self.pg_ts(self.when()),
            "completedAt": self.pg_ts(self.when()),
            "number": self.r.randint(0, 2**31 - 1),
            "isTest": is_test,
            "usageDurationMs": duration,
            "costInCents": cost,
            "baseCostInCents": base,
            "ttl": self.pick(["10m", "1h"]),
            "payload": payload,
            "payloadType": payload_type,
            "metadata": None if meta is None else json.dumps(meta),
            "metadataType": "application/json",
            "output": output,
            "outputType": output_type,
            "runTags": tags,
            "error": error,
            "realtimeStreams": self.pick([[], ["default", "a b"]]),
        }
        for key, value in optional.items():
            roll = self.r.random()
            if roll < 0.75:
                row[key] = value
            elif roll < 0.9:
                row[key] = None
        if self.chance(0.2):
            row[self.word()] = self.text()  # a column a newer platform adds
        if self.chance(0.2):
            row[self.pick(SHADOWS.split())] = self.json_value()
        exp.tags = row.get("runTags") or []
        exp.cost = float(row.get("costInCents") or 0)
        exp.base_cost = float(row.get("baseCostInCents") or 0)
        exp.duration = float(row.get("usageDurationMs") or 0)
        exp.is_test = bool(row.get("isTest"))
        # a null metadataType: the SDK drops the metadata, relay reads it as JSON (its choice)
        exp.metadata = meta if row.get("metadata") is not None else None
        exp.updated = read_time(row["updatedAt"])
        return (self.as_wire(row) if wire else row), exp

    def next_update(self, first: Expect) -> tuple[dict[str, Any], Expect]:
        """A later (or, sometimes, an older: stale) update of the same run, in either shape."""
        obj, exp = self.sdk_run() if self.chance() else self.raw_row()
        assert first.updated is not None
        at = first.updated + timedelta(milliseconds=self.r.randint(-20000, 40000))
        if "friendlyId" in obj:
            obj["friendlyId"], obj["updatedAt"] = first.id, self.pg_ts(at)
        else:
            obj["id"], obj["updatedAt"] = first.id, self.iso(at)
        exp.id, exp.updated = first.id, read_time(obj["updatedAt"])
        if self.chance(0.4):  # the run recovers: a retry that succeeded
            obj["status"] = "COMPLETED_SUCCESSFULLY" if "friendlyId" in obj else "COMPLETED"
            exp.status = "COMPLETED"
        return obj, exp

    def alert_for(self, first: Expect) -> tuple[dict[str, Any], Expect]:
        """The alert.run.failed webhook of a run already pushed (it carries no updatedAt)."""
        body, exp = self.alert_run()
        body["object"]["run"]["id"] = exp.id = first.id
        return body, exp

    def packet(self) -> tuple[Any, str | None]:
        kind = self.r.randint(0, 4)
        value = self.json_value()
        if kind == 0:
            return json.dumps(value), "application/json"
        if kind == 1:
            meta = {"values": {"sentAt": ["Date"]}} if self.chance() else None
            body = {"json": value, **({"meta": meta} if meta else {})}
            if meta and self.chance():
                body["meta"]["v"] = 2
            return json.dumps(body), "application/super+json"
        if kind == 2:
            return f"packets/proj_x/run_y/{self.word()}.json", "application/store"
        if kind == 3:
            return self.text(), "text/plain"
        return None, None

    def as_wire(self, row: dict[str, Any]) -> dict[str, Any]:
        """Each value as Electric sends it: Postgres text or null."""
        out: dict[str, Any] = {}
        for key, value in row.items():
            if value is None or isinstance(value, str):
                out[key] = value
            elif isinstance(value, bool):
                out[key] = self.pick(["t", "true"] if value else ["f", "false"])
            elif isinstance(value, int | float):
                out[key] = repr(value) if isinstance(value, float) else str(value)
            elif isinstance(value, list):
                out[key] = pg_array(value, quote_all=self.chance())
            else:  # jsonb as Postgres prints it
                out[key] = json.dumps(value, separators=(", ", ": "))
        return out

    def alert(self) -> tuple[dict[str, Any], Expect]:
        kind = self.pick(
            [
                "run",
                "run",
                "deploy_failed",
                "deploy_success",
                "error",
                "legacy_run",
                "legacy_deploy",
            ]
        )
        return getattr(self, f"alert_{kind}")()

    def _common(self) -> dict[str, Any]:
        env_type = self.pick(["PRODUCTION", "STAGING", "DEVELOPMENT", "PREVIEW"])
        env = {"id": f"cm{self.word()}", "type": env_type, "slug": self.pick(["prod", "stg"])}
        if self.chance(0.3):
            env["branchName"] = self.text()
        return {
            "environment": env,
            "organization": {"id": "cmorg", "slug": "acme", "name": self.text()},
            "project": {"id": "cmp", "ref": "proj_abc", "slug": "billing", "name": self.text()},
        }

    def _envelope(self, kind: str, obj: dict[str, Any], version: str = "v1") -> dict[str, Any]:
        return {
            "id": f"cm{self.r.getrandbits(64):x}",
            "created": self.iso(self.when()),
            "webhookVersion": version,
            "type": kind,
            "object": obj,
        }

    def _alert_run(self) -> tuple[dict[str, Any], dict[str, Any], Expect]:
        rid = self.run_id()
        status = self.pick(["FAILED", "CRASHED", "SYSTEM_FAILURE", "TIMED_OUT", *CURRENT])
        task = {
            "id": self.pick(TASKS),
            "filePath": "src/trigger/x.ts",
            "version": "20260819.4",
            "sdkVersion": "4.5.12",
            "cliVersion": "4.5.12",
        }
        if self.chance():
            task["exportName"] = self.text()
        run: dict[str, Any] = {
            "id": rid,
            "number": self.r.randint(1, 99999),
            "status": status,
            "createdAt": self.iso(self.when()),
            "isTest": self.chance(),
            "tags": self.tags(),
            "error": self.task_run_error(),
            "isOutOfMemoryError": self.chance(),
            "machine": self.pick(["small-1x", "Unknown"]),
            "dashboardUrl": f"https://cloud.trigger.dev/orgs/a/projects/b/env/prod/runs/{rid}",
        }
        for key in ("startedAt", "completedAt"):
            if self.chance():
                run[key] = self.iso(self.when())
        if self.chance():
            run["idempotencyKey"] = self.text()
        exp = Expect(rid, status=status, task=task["id"], tags=run["tags"], is_test=run["isTest"])
        exp.measured = False
        return task, run, exp

    def alert_run(self) -> tuple[dict[str, Any], Expect]:
        task, run, exp = self._alert_run()
        return self._envelope("alert.run.failed", {"task": task, "run": run, **self._common()}), exp

    def alert_legacy_run(self) -> tuple[dict[str, Any], Expect]:
        task, run, exp = self._alert_run()
        legacy_run = {k: run[k] for k in ("id", "isTest", "createdAt")}
        legacy_run["idempotencyKey"] = run.get("idempotencyKey")  # null possible
        body = {
            "task": {"id": task["id"], "fileName": "src/x.ts", "exportName": "x"},
            "run": legacy_run,
            **self._common(),
            "error": run["error"],
        }
        exp.status, exp.tags = "FAILED", []
        return body, exp

    def _git(self) -> dict[str, Any]:
        git: dict[str, Any] = {
            "branch": self.text(),
            "commitSha": "9f2c1e7",
            "commitMessage": self.text(),
            "commitUrl": "https://github.com/a/b/commit/9f2c1e7",
            "branchUrl": "https://github.com/a/b/tree/main",
        }
        if self.chance():
            git.update(pullRequestNumber=12, pullRequestTitle=self.text(), pullRequestUrl="u")
        if self.chance():
            git["provider"] = "github"
        return git

    def _deployment(self, status: str, stamp: str) -> dict[str, Any]:
        body = {
            "deployment": {
                "id": f"deployment_{self.r.getrandbits(60):x}{self.n}",
                "status": status,
                "version": self.pick(["20260820.2", self.text()]),
                "shortCode": "k3m9x2pq",
                stamp: self.iso(self.when()),
            },
            **self._common(),
        }
        if self.chance():
            body["git"] = self._git()
        if self.chance(0.3):
            body["vercel"] = {"deploymentUrl": "https://x.vercel.app"}
        self.n += 1
        return body

    def alert_deploy_failed(self) -> tuple[dict[str, Any], Expect]:
        status = self.pick(["FAILED", "TIMED_OUT", "CANCELED"])
        obj = self._deployment(status, "failedAt")
        obj["error"] = {"name": self.pick(["BuildError", self.text()]), "message": self.text()}
        for key in ("stack", "stderr"):
            if self.chance():
                obj["error"][key] = self.text()
        exp = Expect(obj["deployment"]["id"], event="deployment.failed", status=status)
        return self._envelope("alert.deployment.failed", obj), exp

    def alert_deploy_success(self) -> tuple[dict[str, Any], Expect]:
        obj = self._deployment("DEPLOYED", "deployedAt")
        obj["tasks"] = [
            {
                "id": self.pick(TASKS),
                "filePath": "src/x.ts",
                "exportName": self.pick(["x", "@deprecated"]),
                "triggerSource": self.pick(["STANDARD", "SCHEDULED", "AGENT", "WEBHOOK"]),
            }
            for _ in range(self.r.randint(0, 30))
        ]
        exp = Expect(obj["deployment"]["id"], event="deployment.success", status="DEPLOYED")
        return self._envelope("alert.deployment.success", obj), exp

    def alert_legacy_deploy(self) -> tuple[dict[str, Any], Expect]:
        """A v1 channel's deployment body: no envelope; tasks' exportName may be null."""
        body, exp = self.alert_deploy_success() if self.chance() else self.alert_deploy_failed()
        obj = body["object"]
        for task in obj.get("tasks", []):
            task["exportName"] = self.pick([task["exportName"], None])
        obj["environment"].pop("branchName", None)
        return obj, exp

    def alert_error(self) -> tuple[dict[str, Any], Expect]:
        classification = self.pick(["new_issue", "regression", "unignored"])
        error = {
            "fingerprint": f"fp{self.r.getrandbits(40):x}{self.n}",
            "type": self.pick(["Error", "TypeError", self.text()]),
            "message": self.text(),
            # new Date(Number(x)) of a bad x is an Invalid Date: JSON.stringify writes null
            "firstSeen": self.pick([self.iso(self.when()), None]),
            "lastSeen": self.pick([self.iso(self.when()), self.iso(self.when()), None]),
            "occurrenceCount": self.r.randint(1, 10**6),
            "taskIdentifier": self.pick(TASKS),
        }
        self.n += 1
        if self.chance():
            error["stackTrace"] = self.text()
        common = self._common()
        common["environment"] = {"id": "cmenv", "name": self.text()}
        obj = {"classification": classification, "error": error, **common, "dashboardUrl": "u"}
        exp = Expect("", event="error", status=classification.upper(), task=error["taskIdentifier"])
        return self._envelope("alert.error", obj, "2025-01-01"), exp


def read_time(text: str) -> datetime:
    """A sent timestamp as an aware datetime (no zone: UTC, as Postgres text and Trigger.dev's
    raw rows mean it)."""
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def pg_array(items: list[Any], *, quote_all: bool = False) -> str:
    """A one-dimensional Postgres text[] literal, quoting elements only where Postgres does."""

    def element(item: Any) -> str:
        if item is None:
            return "NULL"
        text = str(item)
        plain = text and text.upper() != "NULL" and not any(c in text for c in '{},"\\ \t\n')
        if plain and not quote_all:
            return text
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "{" + ",".join(element(i) for i in items) + "}"
