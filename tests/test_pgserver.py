"""The tests' throwaway PostgreSQL server (tools/pgserver.py) does not outlive its session.

Its atexit stop never runs when the process that started it is killed -9 (a test session
killed by a CI timeout, a mutation run's pytest killed per mutant): 66 servers were found
running after one mutation pass. A watchdog stops and removes such a server.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.pgserver import PgUnavailable, start_server

REPO = Path(__file__).resolve().parents[1]
STARTER = """
from tools.pgserver import PgUnavailable, start_server
try:
    server = start_server()
except PgUnavailable as exc:
    print("unavailable", exc, flush=True)
else:
    print(server.root, server.port, flush=True)
    import time
    time.sleep(120)
"""


def processes_naming(root: Path) -> list[str]:
    """The command lines of the machine's processes that name `root`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(root).encode() in word for word in words):
            found.append(" ".join(w.decode(errors="replace") for w in words))
    return found


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_a_server_whose_starter_was_killed_is_stopped_and_removed() -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        line = starter.stdout.readline().split()
        if line[:1] == ["unavailable"]:
            pytest.skip(" ".join(line[1:]))
        root, port = Path(line[0]), int(line[1])
        assert (root / "data" / "postmaster.pid").exists()
        assert not refused(port)
    finally:
        starter.kill()
        starter.wait(10)
    for _ in range(300):  # the watchdog's immediate stop takes about a second
        if not root.exists() and refused(port):
            break
        time.sleep(0.1)
    assert not root.exists()
    assert refused(port)
    assert processes_naming(root) == []


def test_a_server_destroyed_in_its_process_leaves_no_watchdog_behind() -> None:
    try:
        server = start_server()
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    assert processes_naming(server.root)  # the server, and its watchdog
    server.destroy()
    assert not server.root.exists()
    assert processes_naming(server.root) == []
