"""Prometheus Alertmanager as a baseline: find (or apt-get install) it, configure it, start it.

The configuration is the Alertmanager equivalent of relay's one rule "status FAILED → webhook":
alerts labelled status="FAILED" go to a webhook receiver pointing at the bench sink, everything
else to a receiver without integrations. `group_by: ['run_id']` makes every run its own group
(one webhook per alert), `group_wait: 0s` sends a new group at once, `repeat_interval` is long
and `send_resolved: false`, so each run is delivered exactly once. Clustering is disabled
(`--cluster.listen-address=`), storage is a fresh temp dir, the port a free one on 127.0.0.1.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import _debian
from _procs import Child, Children

from tools.ports import free_port

NAMES = ("alertmanager", "prometheus-alertmanager")  # upstream, Debian
PACKAGE = "prometheus-alertmanager"


def find() -> str | None:
    return _debian.find(NAMES)


def ensure(install: bool) -> tuple[str | None, str]:
    """The Alertmanager binary, installing the Debian package when allowed (root, apt-get);
    else None and why."""
    return _debian.ensure(NAMES, PACKAGE, install)


def config_yaml(sink_port: int, group_interval: str) -> str:
    timing = f"group_wait: 0s\n  group_interval: {group_interval}\n  repeat_interval: 24h"
    return f"""\
route:
  receiver: blackhole
  group_by: ['run_id']
  {timing}
  routes:
    - receiver: sink
      matchers: ['status="FAILED"']
receivers:
  - name: blackhole
  - name: sink
    webhook_configs:
      - url: http://127.0.0.1:{sink_port}/alertmanager
        send_resolved: false
"""


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start(
    children: Children, binary: str, work: Path, sink_port: int, group_interval: str = "5s"
) -> tuple[Child, str]:
    """Alertmanager on a free port of 127.0.0.1 with its own storage under `work`; (child, URL)."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "alertmanager.yml"
    config.write_text(config_yaml(sink_port, group_interval))
    port = free_port()
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    child = children.spawn("alertmanager", argv)
    child.watch(child.proc.stdout, lambda line: None)
    child.watch(child.proc.stderr, lambda line: None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30.0
    while not _ready(url):
        if child.proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n  ".join(child.tail)
            raise RuntimeError(f"alertmanager did not start (rc={child.proc.poll()}):\n  {tail}")
        time.sleep(0.1)
    return child, url
