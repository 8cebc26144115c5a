"""relay.heap: a serving process freezes its long-lived heap, and a reload lets the replaced
config go (a frozen cycle is never collected)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import heap
from tests.conftest import RelayFactory, Sink

CONFIG = """\
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
rules:
  - name: {rule}
    match: {{status: [FAILED]}}
    notify: [hook]
"""


@pytest.fixture
def settled() -> Iterator[None]:
    """The test process's heap settled as `relay serve`'s is, and unfrozen after the test."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_freezes_what_is_alive(settled: None) -> None:
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD  # young collections 10x rarer
    heap.resettle()
    assert gc.get_freeze_count() > 0


def test_resettle_leaves_an_unsettled_heap_alone() -> None:
    assert gc.get_freeze_count() == 0
    heap.resettle()
    assert gc.get_freeze_count() == 0


async def test_a_reload_lets_the_replaced_config_go(
    relay: RelayFactory, sink: Sink, settled: None
) -> None:
    r = await relay(CONFIG.format(url=sink.url, rule="first"))
    heap.settle()  # as `relay serve` does once started
    replaced = weakref.ref(r.service.compiled.renderer)
    path = Path(r.service.compiled.loaded.source.filename)
    path.write_text(CONFIG.format(url=sink.url, rule="second"))
    assert await r.service.reload("SIGHUP") is True
    assert [rule.name for rule in r.service.config.rules] == ["second"]
    assert replaced() is None
