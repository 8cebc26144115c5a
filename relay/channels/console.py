"""`console`: print the rendered message to stdout; for trying relay without any account."""

from __future__ import annotations

from relay.channels import ChannelEnv, ChannelKind, Outgoing
from relay.config import ChannelSettings
from relay.errors import DeliveryError


class ConsoleSettings(ChannelSettings):
    pass


class ConsoleChannel:
    def __init__(self, name: str, settings: ChannelSettings, env: ChannelEnv) -> None:
        self.name = name
        self.settings = settings
        self._out = env.stdout

    async def send(self, message: Outgoing) -> None:
        text = message.parts.get("txt", "")
        try:
            self._out.write(text if text.endswith("\n") else text + "\n")
            self._out.flush()
        except (OSError, ValueError) as exc:
            raise DeliveryError("other", retryable=True, detail=type(exc).__name__) from None


KIND = ChannelKind("console", ConsoleSettings, ConsoleChannel, ("txt",))
