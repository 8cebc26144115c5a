"""relay serve --workers N: delivery in N child processes, everything else in this one.

One Python process runs intake, rules and delivery under one GIL, so it uses about one core.
With workers, this process keeps HTTP intake, the rules, the Realtime follower and retention;
each child (`relay serve --delivery-worker I`, same config and store) runs the delivery loops of
the channels it owns: channel names sorted, the i-th owned by worker i mod N. A channel has one
owner, so its rate limit, concurrency, ordering and Slack threads hold as in one process; the
store's claims and leases would keep a notification from going out twice anyway.

Between the processes, two pipes per child: see relay.worker_pipes.

A child that dies is started again after a second. What it had claimed goes back to the outbox
first with SQLite (each claim names the worker that holds it: ownership moves between workers
when a reload adds a channel); with PostgreSQL it waits for its lease, as any replica's.

Why not several workers per channel: tried, measured, not kept. Two workers sharing one webhook
channel (claiming as replicas do) drained 10,000 notifications at 1,910/s against 2,194/s with
one (concurrency 4), and at 3,722/s against 3,298/s at concurrency 64, each notification costing
26-78% more CPU: on SQLite every process commits on its own, under one file lock, so the group
commit that makes delivery cheap is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import IO

from relay.worker_pipes import READY, Attempt, AttemptSink, EventSink, read_event
from relay.worker_role import CONFIG_FD_FLAG, EVENTS_FLAG, WORKER_FLAG, owner

log = logging.getLogger("relay.workers")
RESTART_AFTER_S = 1.0


@dataclass
class _Child:
    index: int
    proc: asyncio.subprocess.Process | None = None
    supervisor: asyncio.Task[None] | None = None
    events: asyncio.StreamReader | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    down: bool = True  # not said it is ready yet, or died unasked and no successor said it since


class WorkerPool:
    """Starts, feeds, supervises and stops the delivery workers."""

    def __init__(
        self,
        count: int,
        config: Callable[[], bytes],
        channels: Callable[[], Collection[str]],
        on_event: EventSink,
        on_attempt: AttemptSink,
        *,
        on_death: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._count = count
        self._config = config  # config_payload of the config this process runs now
        self._channels = channels
        self._on_event = on_event
        self._on_attempt = on_attempt
        self._on_death = on_death  # with a worker's index, once it died unasked
        self._children = [_Child(i) for i in range(count)]
        self._stopping = False
        self._stopped = asyncio.Event()  # set with `_stopping`: ends a restart's pause
        self._spawning = 0  # children started whose pid is not in `pids` yet
        self._spawned = asyncio.Event()  # set while none is being started: stop() waits for it
        self._spawned.set()

    async def start(self) -> None:
        for child in self._children:
            child.supervisor = asyncio.create_task(
                self._supervise(child), name=f"worker {child.index}"
            )
        await asyncio.gather(*(c.started.wait() for c in self._children))

    def wake(self, channel: str) -> None:
        self._send(owner(channel, self._channels(), self._count), f"wake {channel}")

    def wake_all(self) -> None:
        for child in self._children:
            self._send(child.index, "wake *")

    def reload(self) -> None:
        payload = self._config()
        for child in self._children:
            self._send_config(child.index, payload)

    def silences_changed(self) -> None:
        for child in self._children:
            self._send(child.index, "silences")

    def down(self) -> list[int]:
        """The workers not delivering: not ready yet (one waits for the predecessor its killed
        parent left, see store._sqlite_holders), or dead and not running again yet. /readyz
        says so."""
        return [c.index for c in self._children if c.down]

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children if c.proc is not None]

    def indexed_pids(self) -> list[tuple[int, int]]:
        """(index, pid) of each worker running now (relay.worker_procs' figures)."""
        running = [c for c in self._children if c.proc is not None and c.proc.returncode is None]
        return [(c.index, c.proc.pid) for c in running if c.proc is not None]

    def known_pids(self) -> list[int] | None:
        """Every child this pool started, or None while one is starting (its pid not known)."""
        return None if self._spawning else self.pids()

    def _send_config(self, index: int, payload: bytes) -> None:
        self._send(index, f"reload {len(payload)}", payload)

    def _send(self, index: int, command: str, data: bytes = b"") -> None:
        proc = self._children[index].proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return  # a child being restarted polls the store, and runs our config, when back
        proc.stdin.write(command.encode() + b"\n" + data)

    async def _spawn(self, child: _Child) -> None:
        payload = self._config()
        read_fd, write_fd = os.pipe()
        self._spawning += 1
        self._spawned.clear()
        try:
            with _config_file() as config:
                config.write(payload)
                config.flush()
                config.seek(0)
                child.proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "relay",
                    "serve",
                    "--workers",
                    str(self._count),
                    WORKER_FLAG,
                    str(child.index),
                    EVENTS_FLAG,
                    str(write_fd),
                    CONFIG_FD_FLAG,
                    str(config.fileno()),
                    stdin=asyncio.subprocess.PIPE,
                    pass_fds=(write_fd, config.fileno()),
                )
            now = self._config()
            if now != payload:  # a reload while it was started went to the one it replaces
                self._send_config(child.index, now)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            self._spawning -= 1
            if not self._spawning:
                self._spawned.set()
            os.close(write_fd)
        reader = asyncio.StreamReader(limit=1 << 20)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        child.events = reader
        log.info("delivery worker started", extra={"worker": child.index, "pid": child.proc.pid})

    async def _supervise(self, child: _Child) -> None:
        """Run the child, relay its events, and start it again if it dies unasked."""
        while not self._stopping:
            if not await self._started(child):
                continue
            assert child.proc is not None and child.events is not None
            await self._relay_events(child)
            code = await child.proc.wait()
            if self._stopping:
                return
            child.down = True
            log.error(
                "delivery worker exited; starting it again",
                extra={"worker": child.index, "code": code},
            )
            if self._on_death is not None:
                await self._on_death(child.index)
            await self._pause()

    async def _started(self, child: _Child) -> bool:
        """Start the child; False, said and after a pause, if the system refused it (no process
        or descriptor left: a container's pids limit). That ended the supervisor, silently: the
        service never listened (at its start) or the worker never came back."""
        try:
            await self._spawn(child)
        except OSError as exc:
            log.error(
                "delivery worker could not be started; trying again",
                extra={"worker": child.index, "error": str(exc)},
            )
            child.started.set()  # the service starts all the same, /readyz saying so
            await self._pause()
            return False
        child.started.set()
        return True

    async def _relay_events(self, child: _Child) -> None:
        assert child.events is not None
        while line := await child.events.readline():
            if line == READY:
                child.down = False
                continue
            event = read_event(line)
            if isinstance(event, Attempt):
                self._on_attempt(event.channel, event.type, event.seconds)
            elif event is not None:
                self._on_event(*event)

    def stopping(self) -> None:
        """The service is stopping: a child that exits from now on is not started again (Ctrl-C
        or systemd's stop signal the whole process group: the children may exit first)."""
        self._stopping = True
        self._stopped.set()

    async def _pause(self) -> None:
        """RESTART_AFTER_S before a start again, cut short by a stop: a SIGTERM during it
        waited it out."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), RESTART_AFTER_S)

    async def stop(self, grace_s: float) -> None:
        """Close every child's stdin (its signal to finish and exit), then wait, then kill.

        A child being started again (its predecessor died a second ago) is waited for first:
        listed before its start returned, it was left out, running, and its supervisor with
        it, which this waits for: SIGTERM at that moment hung the service until SIGKILL."""
        self.stopping()
        await self._spawned.wait()  # no new start begins now: each checks `_stopping` first
        for child in self._children:
            if child.proc is not None and child.proc.stdin is not None:
                child.proc.stdin.close()
        procs = [c.proc for c in self._children if c.proc is not None]
        late: set[asyncio.Task[int]] = set()
        if procs:  # none when the system refused every start
            _, late = await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in procs], timeout=grace_s + 5
            )
        for proc in procs:
            if proc.returncode is None:
                log.warning("delivery worker did not stop in time; killed", extra={"pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for task in late:
            await task
        for child in self._children:
            if child.supervisor is not None:
                await asyncio.gather(child.supervisor, return_exceptions=True)


def _config_file() -> IO[bytes]:
    """An empty file with no name, gone once the worker and this process have closed it: in
    memory where it can be (memfd). A temporary file in /tmp left a read-only root filesystem
    (Docker --read-only, Kubernetes readOnlyRootFilesystem) with no worker: `relay serve
    --workers N` hung before listening, deaf to SIGTERM."""
    memfd_create = getattr(os, "memfd_create", None)  # Linux
    if memfd_create is None:
        return tempfile.TemporaryFile()
    return os.fdopen(memfd_create("relay-config"), "w+b")
