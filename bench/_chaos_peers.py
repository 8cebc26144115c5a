"""Which relay process sent a request to the chaos sink (bench/chaos.py): the process group of
the process holding the other end of the connection, read from /proc (Linux; None elsewhere).

The sink and the replicas run on one machine, so the connection's client socket is in
/proc/net/tcp (its inode) and in the fd table of the process that opened it. Only processes of
the soak's own process groups are searched. Looked up once per connection, while it is open.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")


def _hex_addr(port: int) -> str:
    """127.0.0.1:port as /proc/net/tcp writes it (little-endian address, big-endian port)."""
    return f"0100007F:{port:04X}"


def socket_inode(client_port: int, server_port: int) -> str | None:
    """The inode of the client socket 127.0.0.1:client_port -> 127.0.0.1:server_port."""
    local, remote = _hex_addr(client_port), _hex_addr(server_port)
    with contextlib.suppress(OSError), (PROC / "net" / "tcp").open() as table:
        for line in table:
            fields = line.split()
            if len(fields) > 9 and fields[1] == local and fields[2] == remote:
                return fields[9]
    return None


def _group_of(pid: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = (PROC / pid / "stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[2])  # after the command's (name): pgrp
    return None


def _holds(pid: str, target: str) -> bool:
    with contextlib.suppress(OSError):
        for fd in (PROC / pid / "fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return True
    return False


def holder_group(inode: str, groups: set[int]) -> int | None:
    """The process group (of `groups`) of a process with socket `inode` open: a group's leader
    (relay serve), else any member (its delivery workers)."""
    target = f"socket:[{inode}]"
    for leader in groups:
        if _holds(str(leader), target):
            return leader
    for entry in PROC.iterdir():
        if entry.name.isdigit() and _group_of(entry.name) in groups and _holds(entry.name, target):
            return _group_of(entry.name)
    return None


def peer_group(groups: Callable[[], set[int]]) -> Callable[[int, int], int | None]:
    """A lookup (client port, server port) -> process group, among the groups `groups()` says."""

    def lookup(client_port: int, server_port: int) -> int | None:
        inode = socket_inode(client_port, server_port)
        return None if inode is None else holder_group(inode, groups())

    return lookup
