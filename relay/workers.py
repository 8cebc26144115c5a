"""relay serve --workers N: delivery in N child processes, everything else in this one.

One Python process runs intake, rules and delivery under one GIL, so it uses about one core.
With workers, this process keeps HTTP intake, the rules, the Realtime follower and retention;
each child (`relay serve --delivery-worker I`, same config and store) runs the delivery loops of
the channels it owns: channel names sorted, the i-th owned by worker i mod N. A channel has one
owner, so its rate limit, concurrency, ordering and Slack threads hold as in one process; the
store's claims and leases would keep a notification from going out twice anyway.

Between the processes, two pipes per child:

- the child's stdin, commands from here: `wake <channel>` after a commit created work for it
  (the child also polls the store every second), `wake *`, `reload <n>` and n bytes: the config
  this process runs now, as it read it, its templates directory's files included (the child
  compiles that, not the files, which may have changed since; it starts with it too, from a
  file passed as --config-fd),
  `silences` (one was created or expired here: the child's cache of them is stale), and end of
  file: stop. A parent killed with -9 closes every stdin, so its children finish
  their in-flight sends and exit by themselves; read from the child's first moment, so that one
  still starting (waiting for its store, or for the predecessor its killed parent left) stops
  too. Why this pipe and not Linux's PR_SET_PDEATHSIG: it is there already, on every system,
  and its end is one event among the others; the signal fires on the death of the thread that
  forked, not the process, and races with a parent that dies before it is set.
- an events pipe (fd passed as --events-fd), one JSON line per delivery outcome (a loop
  turn's lines in one write), which this process turns into its own metrics: /metrics stays
  one endpoint.

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
from base64 import b64decode, b64encode
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

log = logging.getLogger("relay.workers")
WORKER_FLAG = "--delivery-worker"
EVENTS_FLAG = "--events-fd"
CONFIG_FD_FLAG = "--config-fd"  # a file holding the parent's config: `config_payload`
RESTART_AFTER_S = 1.0
ORPHANS_EVERY_S = 1.0
READY = b'{"kind":"ready"}\n'


@dataclass(frozen=True)
class Role:
    """This process's part: everything (workers=0), intake with `workers` children, or the
    delivery worker number `index` (its outcomes written to `events`)."""

    workers: int = 0
    index: int | None = None
    events: IO[str] | None = None

    def owned(self, channels: Collection[str]) -> list[str]:
        """The channels this process delivers."""
        if self.index is None:
            return [] if self.workers else list(channels)
        return sorted(owned(self.index, channels, self.workers))

    @property
    def holder(self) -> str:
        """How this process names itself in the leases it takes."""
        return "" if self.index is None else holder(self.index)


@dataclass(frozen=True)
class Outcome:
    """One delivery outcome as the events pipe carries it (what metrics need of a row)."""

    channel: str
    created_at: float


# (kind, outcome, reason, attempts): Metrics.delivery_event's shape
EventSink = Callable[[str, Outcome, str, int], None]


def holder(index: int) -> str:
    """The lease holder name of delivery worker `index` (the same for its successor, which is
    started only after the dead one's claims were released)."""
    return f"worker {index}"


def owner(channel: str, channels: Collection[str], count: int) -> int:
    """The worker that delivers `channel`: its place among the sorted channel names, mod N."""
    ordered = sorted(channels)
    return ordered.index(channel) % count if channel in ordered else 0


def owned(index: int, channels: Collection[str], count: int) -> set[str]:
    return {name for name in channels if owner(name, channels, count) == index}


def event_line(kind: str, outcome: Outcome, reason: str, attempts: int) -> str:
    """One outcome as the events pipe carries it: one JSON line."""
    line = {
        "kind": kind,
        "channel": outcome.channel,
        "reason": reason,
        "attempts": attempts,
        "at": outcome.created_at,
    }
    return orjson.dumps(line).decode() + "\n"


class EventPipe:
    """The child's side of the events pipe. The outcomes of one turn of the event loop go in
    one write at its end: a write each (a system call here, and a wake-up and a read of the
    parent's loop for each line) cost CPU per notification in both processes. They are metrics
    only (the store holds the outcomes): a worker killed with -9 loses at most that turn's."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._held: list[str] = []

    def ready(self) -> None:
        """The child's first line: its delivery loops run."""
        self._held.append(READY.decode())
        self.flush()

    def outcome(self, kind: str, outcome: Outcome, reason: str, attempts: int) -> None:
        self._held.append(event_line(kind, outcome, reason, attempts))
        if len(self._held) == 1:  # the turn's first: written once the turn's callbacks ran
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (the shutdown's last lines): at once
                self.flush()

    def flush(self) -> None:
        lines, self._held = self._held, []
        if lines:
            _write(self.out, "".join(lines))


def _write(out: IO[str], line: str) -> None:
    """A parent killed with -9 closed the pipe: its children finish their sends, recorded in
    the store, with nobody to count them, which is no error."""
    if out.closed:
        return
    try:
        out.write(line)
        out.flush()
    except OSError:  # BrokenPipeError: closed, so that nothing tries to flush it again
        with contextlib.suppress(OSError):
            out.close()


def config_payload(
    filename: str | None, text: str, templates: Mapping[str, bytes] | None = None
) -> bytes:
    """The config a child is to run: as the parent read it from `filename` (None: built in),
    with the files of its templates directory as the parent read them (None: read them)."""
    files = None if templates is None else {n: b64encode(d).decode() for n, d in templates.items()}
    return orjson.dumps({"config": filename, "text": text, "templates": files})


def read_config_payload(data: bytes) -> tuple[str | None, str, dict[str, bytes] | None]:
    config = orjson.loads(data)
    files = config.get("templates")
    templates = None if files is None else {n: b64decode(d) for n, d in files.items()}
    return config["config"], config["text"], templates


def read_event(line: bytes) -> tuple[str, Outcome, str, int] | None:
    try:
        data = orjson.loads(line)
        return (
            str(data["kind"]),
            Outcome(str(data["channel"]), float(data["at"])),
            str(data["reason"]),
            int(data["attempts"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


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
        on_death: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._count = count
        self._config = config  # config_payload of the config this process runs now
        self._channels = channels
        self._on_event = on_event
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
        parent left, see store.sqlite), or dead and not running again yet. /readyz says so."""
        return [c.index for c in self._children if c.down]

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children if c.proc is not None]

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
            if event is not None:
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


async def reap_orphans_forever(own: Callable[[], Collection[int] | None]) -> None:
    """As PID 1 (the Docker image has no init), wait for the orphans the kernel gives it.

    A process whose parent exits in the container (`docker exec relay sh -c 'job &'`) becomes
    PID 1's child; nothing else waits for it, so once it exits it stays a zombie (`<defunct>`)
    until the container stops. Every second this waits for exited children that are not
    `own` (the delivery workers, which asyncio waits for; None: one is starting, skip a turn).
    """
    while True:
        await asyncio.sleep(ORPHANS_EVERY_S)
        own_pids = own()
        if own_pids is not None:
            reap_orphans(own_pids)


def reap_orphans(own: Collection[int]) -> int:
    """Wait for the exited children not in `own`, until the next exited one is `own` or none
    is left; how many. WNOWAIT looks without waiting, so asyncio still sees its own exit."""
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # no children at all
            return reaped
        if info is None or info.si_pid in own:
            return reaped
        os.waitpid(info.si_pid, 0)
        log.debug("orphaned process reaped", extra={"pid": info.si_pid})
        reaped += 1


async def read_commands(
    wake: Callable[[str], None],
    wake_all: Callable[[], None],
    reload: Callable[[bytes], Any],
    stop: Callable[[], None],
    silences_changed: Callable[[], None],
) -> None:
    """The child's side of stdin: commands until end of file, then `stop`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command, _, arg = line.decode(errors="replace").strip().partition(" ")
        if command == "wake":
            wake_all() if arg == "*" else wake(arg)
        elif command == "reload":  # the parent's config follows: compiled as it read it
            try:
                config = await reader.readexactly(int(arg))
            except asyncio.IncompleteReadError:  # the parent died while writing it
                break
            reload(config)
        elif command == "silences":
            silences_changed()
    stop()
