"""`console`: print the rendered message to stdout; for trying relay without any account.

Control characters (but tab and newline) are printed as `\\xNN`: run data must not drive the
terminal (ESC sequences clear it, retitle it, write the clipboard; a lone CR hides a line).
"""

from __future__ import annotations

import re

from relay.channels import ChannelEnv, ChannelKind, HoldsNothing, Outgoing
from relay.config import ChannelSettings
from relay.errors import DeliveryError
from relay.logs import BIDI_OVERRIDES, escaped

_CONTROLS = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{BIDI_OVERRIDES}]")


def printable(text: str) -> str:
    """`text` with CRLF as LF, and every other control character but tab, and the bidirectional
    overrides (which make a terminal show text in another order), escaped (relay.logs)."""
    return _CONTROLS.sub(lambda m: escaped(m[0]), text.replace("\r\n", "\n"))


class ConsoleSettings(ChannelSettings):
    pass


class ConsoleChannel(HoldsNothing):
    def __init__(self, name: str, settings: ChannelSettings, env: ChannelEnv) -> None:
        self.name = name
        self.settings = settings
        self._out = env.stdout

    async def send(self, message: Outgoing) -> None:
        text = printable(message.parts.get("txt", ""))
        try:
            self._out.write(text if text.endswith("\n") else text + "\n")
            self._out.flush()
        except (OSError, ValueError) as exc:
            raise DeliveryError("other", retryable=True, detail=type(exc).__name__) from None


KIND = ChannelKind("console", ConsoleSettings, ConsoleChannel, ("txt",))
