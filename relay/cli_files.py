"""What a command is given to read: a file, or standard input for `-`, bounded, so that
`relay test /dev/zero` (or a wrong pipe) fails at once: it took 6 GB in 5 s, and on."""

from __future__ import annotations

import sys
from pathlib import Path

from relay.errors import InputError

MAX_INPUT_BYTES = 64 * 1024 * 1024  # a long recorded Realtime session fits; /dev/zero does not


def read_bounded(path: Path, command: str) -> bytes:
    """The bytes of `path` (`-`: standard input), at most MAX_INPUT_BYTES; InputError past
    them, naming `command`; OSError when the file cannot be read."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    else:
        with path.open("rb") as file:
            data = file.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InputError("", f"larger than {MAX_INPUT_BYTES >> 20} MiB; {command} reads no more")
    return data
