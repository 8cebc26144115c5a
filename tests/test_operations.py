"""Operating relay: Prometheus metrics, config reload (file change and SIGHUP), refusal of bad
configs while the old one keeps serving."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay import reloading
from relay.config_digest import config_fingerprint
from relay.configure import compile_config, load
from relay.logs import TextFormatter
from relay.service import Service
from relay.settings import Settings
from relay.store.opening import open_store
from tests.conftest import RelayFactory, RelayProcess, Sink, hang, sdk_run, status

CONFIG = """\
defaults:
  retry: {{max_attempts: 1, max_age: 1h}}
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
rules:
  - name: {rule}
    match: {{status: [{status}]}}
    notify: [hook]
"""


def run_with(status_: str, run_id: str) -> dict[str, Any]:
    run = sdk_run("failed")
    run.update(id=run_id, status=status_)
    return run


async def metrics_text(r: Any) -> str:
    async with r.http.get(r.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not in metrics")


async def test_metrics_count_what_happened(relay: RelayFactory, sink: Sink) -> None:
    sink.responses = [status(200), status(400)]
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    await r.post([run_with("FAILED", "run_m1"), run_with("EXECUTING", "run_m2")])
    await sink.wait_for(1)
    await r.post(run_with("FAILED", "run_m3"))
    await sink.wait_for(2)
    await r.post(b"{not json")
    await asyncio.sleep(0.3)
    text = await metrics_text(r)
    assert value(text, 'relay_updates_received_total{source="http"}') == 3
    assert value(text, 'relay_rules_matched_total{rule="failures"}') == 2
    assert value(text, 'relay_notifications_sent_total{channel="hook"}') == 1
    assert value(text, 'relay_notifications_dead_total{channel="hook",reason="client_error"}') == 1
    assert value(text, 'relay_updates_rejected_total{reason="bad_request"}') == 1
    assert value(text, 'relay_outbox_notifications{state="dead"}') == 1
    assert value(text, 'relay_delivery_latency_seconds_count{channel="hook"}') == 1
    assert 'relay_build_info{version="' in text
    assert value(text, "relay_outbox_oldest_pending_age_seconds") == 0
    # no `_created` series beside each counter (prometheus-client's default), as Alertmanager
    assert "_created" not in text


async def test_every_channel_and_rule_is_counted_from_zero(relay: RelayFactory, sink: Sink) -> None:
    """A counter that first appears at 1 has no increase() to Prometheus: the shipped alerts
    (RelayNotificationsDead, RelayTemplateErrors, RelayConfigReloadFailed) missed the first
    dead letter, template error or refused reload after each restart. So the running config's
    channels and rules, and a reload's new ones, are exposed at 0 before anything happens."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    text = await metrics_text(r)
    for sample in (
        'relay_notifications_sent_total{channel="hook"}',
        'relay_notifications_muted_total{channel="hook"}',
        'relay_template_errors_total{channel="hook"}',
        'relay_notifications_failed_total{channel="hook",reason="server_error"}',
        'relay_notifications_dead_total{channel="hook",reason="client_error"}',
        'relay_rules_matched_total{rule="failures"}',
        'relay_config_reloads_total{result="failure"}',
        'relay_config_reloads_total{result="success"}',
    ):
        assert value(text, sample) == 0, sample
    path = Path(r.service.compiled.loaded.source.filename)
    path.write_text(CONFIG.format(url=sink.url, rule="crashes", status="CRASHED"))
    assert await r.service.reload("SIGHUP") is True
    text = await metrics_text(r)
    assert value(text, 'relay_rules_matched_total{rule="crashes"}') == 0
    assert value(text, 'relay_config_reloads_total{result="success"}') == 1


async def test_updates_received_and_refused_are_counted_from_zero(
    relay: RelayFactory, sink: Sink
) -> None:
    """relay_updates_received_total and relay_updates_rejected_total appeared at their first
    update: a batch of 500 posted just after a start was a series born at 500, which
    increase() and the dashboard's ingest rate read as 0, as they read the first refusals
    (RelayRejectingUpdates, the rejections panel), and an alert on nothing received
    (`rate(relay_updates_received_total[1h]) == 0`) had no series to fire on. Their label
    values are a fixed set: every source and every reason the README names is there at 0."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    text = await metrics_text(r)
    for source in ("http", "trigger_alerts", "realtime"):
        assert value(text, f'relay_updates_received_total{{source="{source}"}}') == 0, source
    reasons = ("bad_request", "unauthorized", "not_configured", "too_large")
    for reason in (*reasons, "store_unavailable", "busy"):
        assert value(text, f'relay_updates_rejected_total{{reason="{reason}"}}') == 0, reason


async def test_each_refused_update_is_counted_by_its_reason_and_nothing_else_is(
    relay: RelayFactory, sink: Sink
) -> None:
    """relay_updates_rejected_total counts refused updates (POST /v1/runs, the alert webhook)
    by why: a wrong token, a coding relay cannot undo, alerts not configured, a body past the
    limit. A refused admin request, a path that is no endpoint, is no update refused."""
    config = "server: {auth_token: t0ken, admin_token: adm1n, max_body_bytes: 1024}\n"
    r = await relay(config + CONFIG.format(url=sink.url, rule="failures", status="failure"))
    runs, token = r.url + "/v1/runs", {"Authorization": "Bearer t0ken"}
    requests = [
        ("POST", runs, {}, b"[]"),  # 401
        ("POST", runs, {**token, "Content-Encoding": "br"}, b"[]"),  # 415
        ("POST", r.url + "/v1/trigger/alerts", {}, b"{}"),  # 404
        ("POST", runs, token, b"[" + b" " * 2048 + b"]"),  # 413
        ("GET", r.url + "/v1/dlq", {}, b""),  # 401, not an update
        ("POST", r.url + "/v1/silences", {"Authorization": "Bearer adm1n"}, b"[]"),  # 400
        ("GET", r.url + "/v1/nothing", {}, b""),  # 404
    ]
    answers = []
    for method, url, headers, body in requests:
        async with r.http.request(method, url, headers=headers, data=body) as resp:
            answers.append(resp.status)
    assert answers == [401, 415, 404, 413, 401, 400, 404]
    text = await metrics_text(r)
    counted = {"unauthorized": 1, "bad_request": 1, "not_configured": 1, "too_large": 1}
    for reason in (*counted, "store_unavailable", "busy", "shutting_down"):
        sample = f'relay_updates_rejected_total{{reason="{reason}"}}'
        assert value(text, sample) == counted.get(reason, 0), reason


async def test_a_reload_logs_what_relay_check_warns_of(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """A misspelled run status was refused (a reload kept the running config and said why);
    it is a warning now, so a reload takes it: the log says what `relay check` would, as the
    start does, or the rule that never fires went unnoticed."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    path = Path(r.service.compiled.loaded.source.filename)
    path.write_text(CONFIG.format(url=sink.url, rule="failures", status="FAILLED"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="relay"):
        assert await r.service.reload("SIGHUP") is True
    said = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert any("'FAILLED' is not a status relay knows (did you mean FAILED?)" in m for m in said)


WHEN_CONFIG = """\
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
rules:
  - name: {rule}
    {condition}
    notify: [hook]
    continue: true
  - name: after
    match: {{status: [failure]}}
    notify: [hook]
"""
RAISES = 'when: "run.metadata.retries > 2"'


async def test_a_when_that_raises_is_counted_and_later_rules_still_match(
    relay: RelayFactory, sink: Sink
) -> None:
    """`none > 2` raises: the rule does not match, which only a log line said; an operator
    alerting on relay saw nothing. Counted by rule, as Prometheus counts its rule evaluation
    failures, also for the rules of a reloaded config; the update is taken and the next rule
    still matches it."""
    r = await relay(WHEN_CONFIG.format(url=sink.url, rule="retries", condition=RAISES))
    assert value(await metrics_text(r), 'relay_rule_evaluation_failures_total{rule="retries"}') == 0
    assert (await r.post(run_with("FAILED", "run_w1")))[0] == 202
    assert [x.json()["rule"] for x in await sink.wait_for(1)] == ["after"]
    text = await metrics_text(r)
    assert value(text, 'relay_rule_evaluation_failures_total{rule="retries"}') == 1
    assert value(text, 'relay_rule_evaluation_failures_total{rule="after"}') == 0
    path = Path(r.service.compiled.loaded.source.filename)
    path.write_text(WHEN_CONFIG.format(url=sink.url, rule="retries2", condition=RAISES))
    assert await r.service.reload("SIGHUP") is True
    assert (await r.post(run_with("FAILED", "run_w2")))[0] == 202
    await sink.wait_for(2)
    text = await metrics_text(r)
    assert value(text, 'relay_rule_evaluation_failures_total{rule="retries2"}') == 1


async def test_a_task_regex_stopped_for_taking_too_long_is_counted(
    relay: RelayFactory, sink: Sink
) -> None:
    """A `task_regex` that backtracks past its 1 s is stopped and does not match: counted in
    relay_rule_evaluation_failures_total as a `when:` that raised is (README), which no test
    held; the update is taken and the next rule still matches it."""
    backtracks = "match: {task_regex: '^(a|aa)+$'}"
    r = await relay(WHEN_CONFIG.format(url=sink.url, rule="slow", condition=backtracks))
    run = run_with("FAILED", "run_r1")
    run["taskIdentifier"] = "a" * 40 + "!"
    assert (await r.post(run))[0] == 202
    assert [x.json()["rule"] for x in await sink.wait_for(1)] == ["after"]
    text = await metrics_text(r)
    assert value(text, 'relay_rule_evaluation_failures_total{rule="slow"}') == 1
    assert value(text, 'relay_rule_evaluation_failures_total{rule="after"}') == 0


async def metrics_after_failures(
    relay: RelayFactory,
    sink: Sink,
    answer: Any,
    attempts: int,
    tries: int | None = None,
    counted: str | None = None,
) -> str:
    """/metrics once one FAILED run met a sink giving `answer` `tries` times (default: all),
    and, if given, the sample `counted` is above 0 (counted once the outcome is written, which
    a loaded machine does well after the last answer)."""
    sink.default = answer
    config = CONFIG.format(url=sink.url, rule="failures", status="failure")
    r = await relay(config.replace("max_attempts: 1,", f"max_attempts: {attempts},"))
    await r.post(run_with("FAILED", "run_f1"))
    await sink.wait_for(tries or attempts)
    await asyncio.sleep(0.3)
    text = await metrics_text(r)
    deadline = time.monotonic() + 60
    while counted is not None and value(text, counted) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        text = await metrics_text(r)
    return text


async def test_every_failed_try_counts_quick_retries_too(relay: RelayFactory, sink: Sink) -> None:
    """A channel failing every try shows in failed_total before anything goes dead (an
    operator's rate(failed_total) alert), as alertmanager_notifications_failed_total does."""
    dead = 'relay_notifications_dead_total{channel="hook",reason="server_error"}'
    text = await metrics_after_failures(relay, sink, status(500), attempts=3, counted=dead)
    assert (
        value(text, 'relay_notifications_failed_total{channel="hook",reason="server_error"}') == 3
    )
    assert value(text, dead) == 1


async def test_the_oldest_pending_notification_ages_while_a_channel_is_down(
    relay: RelayFactory, sink: Sink
) -> None:
    text = await metrics_after_failures(relay, sink, status(503, {"Retry-After": "600"}), 5, 1)
    assert value(text, 'relay_outbox_notifications{state="pending"}') == 1
    assert value(text, "relay_queue_depth") == 1  # SPEC §6 names the queue depth
    assert 0.2 < value(text, "relay_outbox_oldest_pending_age_seconds") < 60


async def test_a_changed_config_file_is_reloaded(
    relay: RelayFactory, sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloading, "WATCH_EVERY_S", 0.1)  # it looks every second otherwise
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    path = Path(r.service.compiled.loaded.source.filename)
    path.write_text(CONFIG.format(url=sink.url, rule="crashes-only", status="CRASHED"))
    for _ in range(600):
        if r.service.compiled.rules.rules[0].name == "crashes-only":
            break
        await asyncio.sleep(0.05)
    await r.post([run_with("FAILED", "run_r1"), run_with("CRASHED", "run_r2")])
    await sink.wait_for(1)
    await asyncio.sleep(0.3)
    assert [(g.json()["rule"], g.json()["run"]["id"]) for g in sink.received] == [
        ("crashes-only", "run_r2")
    ]
    assert value(await metrics_text(r), 'relay_config_reloads_total{result="success"}') == 1


async def test_a_new_templates_dir_is_watched_from_the_reload_that_names_it(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """One change, one reload: the reload that brings a templates.dir starts watching its files
    (before, the next poll saw them as a change and reloaded again)."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    hashes = [value(await metrics_text(r), "relay_config_hash")]
    (tmp_path / "tpl" / "webhook").mkdir(parents=True)
    template = tmp_path / "tpl" / "webhook" / "run.json.j2"
    template.write_text('{"mine": {{ run.id | tojson }}}')
    path = Path(r.service.compiled.loaded.source.filename)
    text = CONFIG.format(url=sink.url, rule="failures", status="failure")
    path.write_text(f"templates: {{dir: {tmp_path / 'tpl'}}}\n{text}")
    assert await r.service.reload_if_changed() is True
    hashes.append(value(await metrics_text(r), "relay_config_hash"))
    assert await r.service.reload_if_changed() is None
    template.write_text('{"mine": {{ run.taskIdentifier | tojson }}}')
    assert await r.service.reload_if_changed() is True
    metrics = await metrics_text(r)
    assert value(metrics, 'relay_config_reloads_total{result="success"}') == 2
    # the config digest, as Alertmanager's config_hash: every change of config or template shows
    hashes.append(value(metrics, "relay_config_hash"))
    assert len(set(hashes)) == 3 and all(0 < h < 2**52 for h in hashes), hashes


def touch(path: Path, by_s: int = 5) -> None:
    """`touch`: the file's mtime moved on, its content as it was."""
    mtime = path.stat().st_mtime_ns + by_s * 10**9
    os.utime(path, ns=(mtime, mtime))


async def test_files_rewritten_unchanged_are_not_reloaded_but_sighup_reloads(
    relay: RelayFactory,
    sink: Sink,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `touch`, or a config-management tool rewriting the same content every minute (a new
    file renamed over the old), reloaded and logged "config reloaded" each time. Only a change
    of content reloads now; a SIGHUP always does (after an edit of something relay does not
    watch), and a changed template still does, and so does a file put back as it runs after a
    refused edit."""
    caplog.set_level(logging.DEBUG, logger="relay")
    monkeypatch.setattr(reloading, "WATCH_EVERY_S", 3600)  # this test looks, not the watch
    template = tmp_path / "tpl" / "webhook" / "run.json.j2"
    template.parent.mkdir(parents=True)
    template.write_text('{"mine": {{ run.id | tojson }}}')
    text = CONFIG.format(url=sink.url, rule="failures", status="failure")
    r = await relay(f"templates: {{dir: {tmp_path / 'tpl'}}}\n{text}")
    path = Path(r.service.compiled.loaded.source.filename)
    touch(path)
    assert await r.service.reload_if_changed() is None
    staged = tmp_path / "staged.yaml"
    staged.write_text(path.read_text())
    staged.rename(path)  # a new inode, the same content
    assert await r.service.reload_if_changed() is None
    touch(template)
    assert await r.service.reload_if_changed() is None
    assert await r.service.reload_if_changed() is None  # the touch is not seen again
    template.write_text('{"mine": {{ run.taskIdentifier | tojson }}}')
    assert await r.service.reload_if_changed() is True
    assert await r.service.reload("SIGHUP") is True
    running = path.read_text()
    path.write_text("rules: [not a rule]\n")
    assert await r.service.reload_if_changed() is False  # refused: the old config runs on
    path.write_text(running)  # put back as it runs: reloaded, the operator sees it taken
    assert await r.service.reload_if_changed() is True
    said = [rec.getMessage() for rec in caplog.records if "reloaded" in rec.getMessage()]
    assert said.count("config reloaded") == 3, said
    assert said.count("config files rewritten unchanged; not reloaded") == 3, said
    assert value(await metrics_text(r), 'relay_config_reloads_total{result="success"}') == 3


async def test_sighup_on_the_built_in_default_loads_a_config_yaml_written_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started without a config file (the built-in default), SIGHUP looks for ./config.yaml
    again rather than for a file called <built-in>; that file is then watched."""
    monkeypatch.chdir(tmp_path)
    settings = Settings(listen="127.0.0.1:0", store_url=f"sqlite:///{tmp_path / 'relay.db'}")
    service = Service(settings, compile_config(load(settings)))
    await service.start()
    try:
        assert service.compiled.loaded.builtin
        assert await service.reload("SIGHUP") is True  # still no file: the default again
        rule = "channels: {{out: {{type: console}}}}\nrules: [{{name: {}, notify: [out]}}]\n"
        (tmp_path / "config.yaml").write_text(rule.format("mine"))
        assert await service.reload("SIGHUP") is True
        assert [r.name for r in service.compiled.rules.rules] == ["mine"]
        (tmp_path / "config.yaml").write_text(rule.format("edited"))
        assert await service.reload_if_changed() is True
        assert [r.name for r in service.compiled.rules.rules] == ["edited"]
    finally:
        await service.shutdown()


async def test_a_file_renamed_over_the_config_is_a_change_even_with_its_size_and_mtime(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """`rsync -a`, `cp -p` then `mv`: the new file may carry the old one's size and mtime."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    path = Path(r.service.compiled.loaded.source.filename)
    staged = tmp_path / "staged.yaml"
    staged.write_text(CONFIG.format(url=sink.url, rule="renamed!", status="failure"))
    before = path.stat()
    assert staged.stat().st_size == before.st_size
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    staged.rename(path)
    assert await r.service.reload_if_changed() is True
    assert r.service.compiled.rules.rules[0].name == "renamed!"


def configmap_version(mount: Path, version: int) -> None:
    """What the kubelet does to a ConfigMap volume: the files in a new `..<version>` directory,
    the `..data` link swapped to it, the old directory deleted."""
    files = mount / f"..{version}" / "webhook"
    files.mkdir(parents=True)
    (files / "run.json.j2").write_text(f'{{"version": {version}}}')
    os.symlink(files.parent.name, mount / "..data_tmp")
    os.rename(mount / "..data_tmp", mount / "..data")
    if not (mount / "webhook").is_symlink():
        os.symlink("..data/webhook", mount / "webhook")
    if version:
        shutil.rmtree(mount / f"..{version - 1}")


def test_the_watch_survives_a_configmap_update_of_the_templates(tmp_path: Path) -> None:
    """A look at templates.dir while the kubelet deleted the old version raised (rglob), which
    ended the config-watch task: no file change was seen again until a restart."""
    mount = tmp_path / "templates"
    mount.mkdir()
    configmap_version(mount, 0)
    config = tmp_path / "config.yaml"
    config.write_text(f"templates: {{dir: {mount}}}\n")
    compiled = compile_config(load(Settings(config=config)))

    def updates() -> None:
        for version in range(1, 300):
            configmap_version(mount, version)

    kubelet = threading.Thread(target=updates)
    kubelet.start()
    try:
        while kubelet.is_alive():
            config_fingerprint(compiled)
    finally:
        kubelet.join()
    assert "..299/webhook/run.json.j2" in str(config_fingerprint(compiled))


async def test_a_config_written_in_place_is_not_loaded_half_written(
    relay: RelayFactory, sink: Sink
) -> None:
    """nano, VS Code or `cat >` truncate the file, then write it: a poll in between loaded an
    empty config, and the runs that came in before the next poll matched no rule, ever."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    path = Path(r.service.compiled.loaded.source.filename)
    path.write_text("")  # truncated...
    looking = asyncio.create_task(r.service.reload_if_changed())
    await asyncio.sleep(0)  # the watcher sees the change
    path.write_text(CONFIG.format(url=sink.url, rule="edited", status="failure"))  # ...written
    assert await looking is None
    assert [rule.name for rule in r.service.compiled.rules.rules] == ["failures"]
    assert await r.service.reload_if_changed() is True
    assert [rule.name for rule in r.service.compiled.rules.rules] == ["edited"]


async def test_an_edit_a_sighup_loaded_is_not_loaded_again_by_the_watch(
    relay: RelayFactory, sink: Sink
) -> None:
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    path = Path(r.service.compiled.loaded.source.filename)
    path.write_text(CONFIG.format(url=sink.url, rule="edited", status="failure"))
    looking = asyncio.create_task(r.service.reload_if_changed())
    await asyncio.sleep(0)  # the watcher saw the change and lets it settle
    assert await r.service.reload("SIGHUP") is True
    assert await looking is None
    assert value(await metrics_text(r), 'relay_config_reloads_total{result="success"}') == 1


async def test_an_invalid_new_config_is_refused_and_the_old_one_kept(
    relay: RelayFactory, sink: Sink
) -> None:
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    path = Path(r.service.compiled.loaded.source.filename)
    path.write_text("rules: [this is not a rule]\nbogus: 1\n")
    assert await r.service.reload("test") is False
    await r.post(run_with("FAILED", "run_kept"))
    [got] = await sink.wait_for(1)
    assert got.json()["rule"] == "failures"
    assert value(await metrics_text(r), 'relay_config_reloads_total{result="failure"}') >= 1


async def test_a_refused_config_shows_until_a_reload_succeeds(
    relay: RelayFactory, sink: Sink
) -> None:
    """RelayConfigReloadFailed fired on increase() of the failure counter over 15 minutes: it
    resolved by itself while the broken file stayed on disk, a relay restarted then failing to
    start. As Alertmanager's and Prometheus' config_last_reload_successful, a gauge says it
    until the file loads: 1 from the start, 0 from a refused reload, 1 again from a good one."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    path = Path(r.service.compiled.loaded.source.filename)
    good = path.read_text()
    last = "relay_config_last_reload_successful"
    assert value(await metrics_text(r), last) == 1
    path.write_text("rules: [this is not a rule]\n")
    assert await r.service.reload("test") is False
    assert value(await metrics_text(r), last) == 0
    path.write_text(good)
    assert await r.service.reload_if_changed() is True
    assert value(await metrics_text(r), last) == 1


async def test_a_reload_refused_for_an_unset_variable_says_a_restart_reads_it(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator adds `secret: ${PAGER_SECRET}`, exports PAGER_SECRET in their shell and sends
    SIGHUP: the reload was refused with "environment variable PAGER_SECRET is not set", true of
    relay's environment, fixed at its start, and not of theirs. The line says so now; another
    problem gets no such hint."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    path = Path(r.service.compiled.loaded.source.filename)
    good = path.read_text()
    assert "RELAY_TEST_NEVER_SET" not in os.environ
    refusals = []
    unset = ('/hook"}', '/hook", secret: ${RELAY_TEST_NEVER_SET}}')
    for edit in (unset, ("rules:", "bogus: 1\nrules:")):
        path.write_text(good.replace(*edit))
        caplog.clear()
        assert await r.service.reload("SIGHUP") is False
        [line] = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
        refusals.append(getattr(line, "hint", None))
    assert refusals == [
        "relay serve reads variables from the environment it was started with:"
        " one set since needs a restart",
        None,
    ]


@pytest.mark.parametrize("emptied", ["", "# all commented out\n", "{}\n"])
async def test_an_emptied_config_file_is_refused_on_reload(
    relay: RelayFactory, sink: Sink, emptied: str
) -> None:
    """A truncated file would load as every default: no rules, no channels, intake open."""
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    Path(r.service.compiled.loaded.source.filename).write_text(emptied)
    assert await r.service.reload("test") is False
    await r.post(run_with("FAILED", "run_kept"))
    [got] = await sink.wait_for(1)
    assert got.json()["rule"] == "failures"


async def test_a_reload_waits_for_a_config_file_being_rewritten_in_place(
    relay: RelayFactory, sink: Sink
) -> None:
    """A SIGHUP (or a reload that waited for the one before it) while the file is rewritten
    in place read what was written so far: cut after `channels:` it loaded with no rules, and
    the runs accepted until the next reload alerted nobody."""
    full = CONFIG.format(url=sink.url, rule="failures", status="failure")
    r = await relay(full)
    half = full[: full.index("rules:")]
    with Path(r.service.compiled.loaded.source.filename).open("w") as file:
        file.write(half)
        file.flush()
        reloading = asyncio.create_task(r.service.reload("SIGHUP"))
        await asyncio.sleep(0.05)
        file.write(full[len(half) :])
    assert await reloading is True
    assert [rule.name for rule in r.service.compiled.rules.rules] == ["failures"]


async def test_sighup_reloads_a_running_relay(
    relay_process: Callable[..., RelayProcess], sink: Sink, tmp_path: Path
) -> None:
    proc = relay_process(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    await asyncio.to_thread(proc.start)
    config = Path(proc.env["RELAY_CONFIG"])
    # same size and a fast write could keep the mtime: SIGHUP must reload regardless
    config.write_text(CONFIG.format(url=sink.url, rule="sighup-rule", status="failure"))
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    for _ in range(1200):
        if any(e.get("msg") == "config reloaded" for e in proc.logs):
            break
        await asyncio.sleep(0.05)
    assert any(e.get("msg") == "config reloaded" for e in proc.logs)
    config.write_text("nonsense: [")
    proc.proc.send_signal(signal.SIGHUP)
    for _ in range(1200):
        if any("refused" in str(e.get("msg")) for e in proc.logs):
            break
        await asyncio.sleep(0.05)
    refused = [e for e in proc.logs if "refused" in str(e.get("msg"))]
    assert refused and refused[0]["problems"]
    assert proc.proc.poll() is None  # still serving


async def _service_sending(tmp_path: Path, sink: Sink) -> tuple[Service, str]:
    """A relay whose one notification is in flight to a receiver that answers in 0.5 s."""
    sink.responses = [hang(0.5)]
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    store_url = f"sqlite:///{tmp_path / 'relay.db'}"
    settings = Settings(config=config, listen="127.0.0.1:0", store_url=store_url)
    service = Service(settings, compile_config(load(settings)))
    host, port = await service.start()
    async with aiohttp.ClientSession() as http:
        await http.post(f"http://{host}:{port}/v1/runs", json=run_with("FAILED", "run_drain"))
    await sink.wait_for(1)
    return service, store_url


async def _counts_after(store_url: str) -> dict[str, int]:
    store = open_store(store_url, "", 30.0)
    await store.open()
    try:
        return await store.counts()
    finally:
        await store.close()


async def test_a_sighup_during_shutdown_starts_no_delivery(tmp_path: Path, sink: Sink) -> None:
    """SIGTERM stops the work: a SIGHUP while in-flight sends drain must not start new
    delivery loops, which nothing would stop before the process exits."""
    service, store_url = await _service_sending(tmp_path, sink)
    service.request_stop()
    stopping = asyncio.create_task(service.shutdown())
    await asyncio.sleep(0.1)  # shutdown waits for the send in flight
    assert await service.reload("SIGHUP") is False
    await stopping
    loops = [t for t in asyncio.all_tasks() if t.get_name().startswith("delivery:")]
    assert not [t for t in loops if not t.done()]
    assert (await _counts_after(store_url))["sent"] == 1


async def test_a_sigterm_while_a_reload_reads_the_file_keeps_the_running_config(
    tmp_path: Path, sink: Sink
) -> None:
    """The file is read and compiled off the event loop (2,000 rules take seconds): a stop
    requested meanwhile must not swap in a new config and delivery on the way out."""
    service, store_url = await _service_sending(tmp_path, sink)
    running = service.delivery
    config = Path(service.compiled.loaded.source.filename)
    config.write_text(CONFIG.format(url=sink.url, rule="renamed", status="failure"))
    reloading = asyncio.create_task(service.reload("SIGHUP"))
    await asyncio.sleep(0)  # the reload waits for the file to settle, then reads it
    service.request_stop()
    assert await reloading is False
    assert service.delivery is running
    assert [rule.name for rule in service.compiled.rules.rules] == ["failures"]
    await service.shutdown()
    assert (await _counts_after(store_url))["sent"] == 1


async def test_shutdown_during_a_reload_still_drains_the_replaced_delivery(
    tmp_path: Path, sink: Sink
) -> None:
    """A reload waits for the old delivery's sends; SIGTERM cancelling that reload must not
    cut them off: shutdown waits for them too, and their outcome is recorded."""
    service, store_url = await _service_sending(tmp_path, sink)
    service._reload_soon()  # as SIGHUP does
    await asyncio.sleep(0.1)  # the reload swapped and waits for the old delivery
    service.request_stop()
    await service.shutdown()
    assert (await _counts_after(store_url))["sent"] == 1
    assert len(sink.received) == 1


async def test_serve_runs_on_uvloop_when_it_is_installed(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    proc = relay_process(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    await asyncio.to_thread(proc.start)
    [listening] = [e for e in proc.logs if e.get("msg") == "listening"]
    installed = importlib.util.find_spec("uvloop") is not None  # the dev extra has it
    assert listening["event_loop"] == ("uvloop" if installed else "asyncio")


def test_a_text_log_line_stays_one_line_whatever_a_run_carries() -> None:
    """A run id or task with a line break wrote a forged line into a text log (`RELAY_LOG_FORMAT
    =text`): what comes from outside is written with its line breaks escaped."""
    forged = "run_1\n12:00:00 ERROR   store unavailable\r\u2028\x1b[2J\u202e"
    record = logging.makeLogRecord(
        {"msg": "rule matched: %s", "args": (forged,), "levelname": "INFO", "run_id": forged}
    )
    line = TextFormatter().format(record)
    assert not any(c in line for c in "\n\r\u2028\x1b\u202e")  # nor an ESC that clears the screen
    assert line.endswith(r'run_id="run_1\n12:00:00 ERROR   store unavailable\r\u2028\x1b[2J\u202e"')


async def _reloaded_while_waiting(
    tmp_path: Path, sink: Sink, templates: dict[str, str], before: str, after: str
) -> list[Any]:
    """The bodies a failing run's notification went out with: first answered 503 with a
    Retry-After under config `before`, then sent again after a reload to `after`."""
    (tmp_path / "tpl" / "webhook").mkdir(parents=True)
    for name, body in templates.items():
        (tmp_path / "tpl" / "webhook" / f"{name}.json.j2").write_text(body)
    config = tmp_path / "config.yaml"
    config.write_text(before)
    sink.responses = [status(503, {"Retry-After": "1"})]
    settings = Settings(config=config, listen="127.0.0.1:0", store_url=f"sqlite:///{tmp_path}/r.db")
    service = Service(settings, compile_config(load(settings)))
    host, port = await service.start()
    try:
        async with aiohttp.ClientSession() as http:
            await http.post(f"http://{host}:{port}/v1/runs", json=run_with("FAILED", "run_w"))
        await sink.wait_for(1)
        config.write_text(after)
        assert await service.reload("SIGHUP")
        received = await sink.wait_for(2)
    finally:
        service.request_stop()
        await service.shutdown()
    return [json.loads(r.body) for r in received]


def _retried_config(sink: Sink) -> str:
    text = CONFIG.replace("max_attempts: 1", "max_attempts: 3")
    return "templates: {dir: ./tpl}\n" + text.format(
        url=sink.url, rule="failures", status="failure"
    )


async def test_a_notification_retried_after_a_reload_renders_the_rule_s_new_template(
    tmp_path: Path, sink: Sink
) -> None:
    """The config in force at send time renders, as Alertmanager's: a rule whose `template`
    a reload changed while its notification waited out a 503's Retry-After renders the new
    one (the old name, kept with the row, was the old config's: with the channel's type
    changed too it no longer existed and the message fell back to plain text)."""
    text = _retried_config(sink)
    bodies = await _reloaded_while_waiting(
        tmp_path,
        sink,
        {"old": '{"v": "old"}', "new": '{"v": "new"}'},
        text + "    template: old\n",
        text + "    template: new\n",
    )
    assert bodies == [{"v": "old"}, {"v": "new"}]


async def test_a_reload_that_makes_a_rule_match_another_event_keeps_a_waiting_run_s_template(
    tmp_path: Path, sink: Sink
) -> None:
    """A rule that a reload points at deployment alerts (same name, `event:` changed) renders
    those with `deployment_failed`; a run's notification that waited out a 503 meanwhile is
    still a run, and renders the run template, not a deployment's on a run's body."""
    text = _retried_config(sink)
    deployments = "    match: {event: deployment.failed}\n"
    after = text.replace("    match: {status: [failure]}\n", deployments)
    assert after != text
    bodies = await _reloaded_while_waiting(
        tmp_path,
        sink,
        {"run": '{"v": "run"}', "deployment_failed": '{"v": "deploy"}'},
        text,
        after,
    )
    assert bodies == [{"v": "run"}, {"v": "run"}]


async def test_a_notification_retried_after_a_reload_removed_its_rule_still_goes_out(
    tmp_path: Path, sink: Sink
) -> None:
    """A rule renamed by a reload while its notification waits out a 503, in a config with
    time intervals (looked up by rule name at send time): the retry goes out, not muted by a
    rule of another name nor failed for a rule that is no longer there."""
    text = _retried_config(sink)
    after = text.replace("  - name: failures\n", "  - name: renamed\n") + (
        "    mute_time_intervals: [later]\n"
        "time_intervals:\n  - {name: later, time_intervals: [{years: ['2099']}]}\n"
    )
    assert "renamed" in after
    bodies = await _reloaded_while_waiting(tmp_path, sink, {"run": '{"v": "run"}'}, text, after)
    assert bodies == [{"v": "run"}, {"v": "run"}]


TWO_CHANNELS = """\
defaults:
  retry: {{min_backoff: 100ms, max_backoff: 200ms}}
channels:
{channels}
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [{notify}]
"""


async def test_a_reload_that_removes_a_channel_says_what_it_still_owes(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """A channel removed while its notification is being retried: the notification stays
    pending (README "Reload"), and the reload now says so in a log line with the channel and
    the count (only the outbox gauges showed it, an alert half an hour later). Once the channel
    returns, the notification goes with the id it had."""
    sink.default = status(503)
    hook = f'  hook: {{type: webhook, url: "{sink.url}/hook"}}'
    other = f'  other: {{type: webhook, url: "{sink.url}/other"}}'
    both = "\n".join([hook, other])
    r = await relay(TWO_CHANNELS.format(channels=both, notify="hook"))
    path = Path(r.service.compiled.loaded.source.filename)
    assert (await r.post(run_with("FAILED", "run_owed")))[0] == 202
    first = (await sink.wait_for(1))[0]
    path.write_text(TWO_CHANNELS.format(channels=other, notify="other"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="relay"):
        assert await r.service.reload("SIGHUP") is True
    owed = [rec for rec in caplog.records if rec.msg.startswith("a removed channel's")]
    assert [(rec.channel, rec.pending) for rec in owed] == [("hook", 1)]  # type: ignore[attr-defined]
    sink.default = None
    path.write_text(TWO_CHANNELS.format(channels=both, notify="hook"))
    assert await r.service.reload("SIGHUP") is True
    for _ in range(600):
        async with r.http.get(r.url + "/v1/notifications", params={"run_id": "run_owed"}) as resp:
            (row,) = (await resp.json())["notifications"]
        if row["state"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert row["state"] == "sent"
    assert sink.received[-1].headers["webhook-id"] == first.headers["webhook-id"] == row["id"]
