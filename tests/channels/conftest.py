"""The fixtures every channel's tests use: the shared HTTP client a channel sends with."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.channels._http import HttpClient


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    yield client
    await client.close()
