"""What the tests of the channels with one rendered part (telegram, googlechat, pushover)
share: a channel of given settings and the failure of a send, the shipped templates and the
events each is shown on, rendering one, everything an error can show (`said`), a settings file's problems, the CLI's outputs (`relay check`,
`config show`, `test`, `send-test`), and waiting for a dead letter."""

from __future__ import annotations

import asyncio
import io
import json
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from relay.channels import REGISTRY, Channel, ChannelEnv, Outgoing, settings_models
from relay.channels._http import HttpClient
from relay.cli import main as relay_cli
from relay.config_load import parse_config
from relay.errors import ConfigError, DeliveryError
from relay.grouping import digest_context
from relay.model import Notification, Run
from relay.templating import RenderContext, Renderer
from tests.conftest import Relay, alert_event, sdk_run

RENDERER = Renderer()
TEMPLATES = ("run", "run_failed", "recovered", "error", "deployment_failed", "deployment_success")
# the Trigger.dev alert each alert template is shown on (the others: an SDK run)
ALERTS = {"error": "alert.error", "deployment_failed": "alert.deployment.failed"}
ALERTS |= {"deployment_success": "alert.deployment.success"}
# run data that looks like markup to every channel
HOSTILE = '[click](https://evil.test) @everyone <@&123> **b** ||s|| ``` # h\n> q "x" </script>'
_RUN_LINK = "https://cloud.trigger.dev/projects/v3/proj_abc123/runs/x"
_ODD_LINK = "https://cloud.trigger.dev/runs/x?a=1&b=<2>"


def sdk(name: str, **changes: Any) -> dict[str, Any]:
    """The SDK run fixture `name`, with `changes`, as a template sees it."""
    return Run.model_validate({**sdk_run(name), **changes}).as_dict()


def make_channel(http: HttpClient, settings: dict[str, Any], timeout: float = 2.0) -> Channel:
    """The channel `oncall` of `settings` (of its `type`), sending with `http` within
    `timeout` seconds unless its settings say otherwise."""
    kind = REGISTRY[settings["type"]]
    env = ChannelEnv(http, io.StringIO(), timeout)
    return kind.create("oncall", kind.settings.model_validate(settings), env)


async def failure_of(ch: Channel, message: Outgoing) -> DeliveryError:
    """The DeliveryError `ch` raises sending `message` (it must raise one)."""
    with pytest.raises(DeliveryError) as info:
        await ch.send(message)
    return info.value


def said(err: BaseException) -> str:
    """Everything an error can show: its words, repr and traceback, with its causes."""
    return str(err) + repr(err) + "".join(traceback.format_exception(err))


def render_part(
    channel_type: str,
    part: str,
    template: str,
    run: dict[str, Any],
    link: str | None = None,
    **extra: Any,
) -> str:
    """`channel_type`'s shipped `template` rendered for `run` (rule prod-failures, channel
    oncall): its `part`, which must not be the plain fallback."""
    ctx = RenderContext(run, "prod-failures", "oncall", channel_type, "ntf_0123", link, **extra)
    rendered = RENDERER.render(channel_type, template, (part,), ctx)
    assert not rendered.fallback, rendered.error
    return rendered.parts[part]


def render_odd(channel_type: str, part: str, template: str, run: dict[str, Any]) -> str:
    """`template` (or `digest`, of two such runs and a hostile group) rendered for an odd
    `run`, with a rule name and a link that look like markup."""
    group = digest_context("grp_1", {"env": HOSTILE}, [run, run]) if template == "digest" else None
    ctx = RenderContext(run, "r<b>&", "oncall", channel_type, "ntf_1", _ODD_LINK, group)
    rendered = RENDERER.render(channel_type, template, (part,), ctx)
    assert not rendered.fallback, rendered.error
    return rendered.parts[part]


def render_golden(channel_type: str, part: str, template: str) -> str:
    """A shipped template on the event its golden file shows: an alert template on its
    Trigger.dev alert, the others on an SDK run (completed for `run` and `recovered`)."""
    if template in ALERTS:
        run = alert_event(ALERTS[template])
        return render_part(channel_type, part, template, run, run.get("dashboardUrl"))
    run = sdk("completed" if template in ("run", "recovered") else "failed")
    return render_part(channel_type, part, template, run, _RUN_LINK)


def settings_problems(channel: str) -> list[tuple[str, str]]:
    """(the key, the message) of each problem `relay check` finds in a file with the one
    `channel` (`name: {type: …}`)."""
    text = f"channels:\n  {channel}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", settings_models(), env={})
    return [(p.path.rsplit(".", 1)[-1], p.message) for p in info.value.problems]


def check_and_show(config: Path) -> dict[str, str]:
    """What `relay check` and `relay config show` say of `config` (stdout and stderr), by
    command (`check`, `config`); both must pass."""
    outputs = {}
    for args in (["check", str(config)], ["config", "show", "--config", str(config)]):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = relay_cli(args)
        outputs[args[0]] = out.getvalue() + err.getvalue()
        assert code == 0, outputs
    return outputs


def relay_test(tmp_path: Path, config: Path) -> tuple[dict[str, Any], str]:
    """`relay test --json` of a failed run (id run_1) under `config`: its one message, and
    all it printed."""
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({**sdk_run("failed"), "id": "run_1"}))
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        assert relay_cli(["test", str(failed), "--config", str(config), "--json"]) == 0
    [message] = json.loads(out.getvalue())[0]["messages"]
    return message, out.getvalue()


async def send_test(channel: str, config: Path) -> str:
    """`relay send-test channel` under `config`, which must pass: all it printed."""
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = await asyncio.to_thread(relay_cli, ["send-test", channel, "--config", str(config)])
    assert code == 0, out.getvalue()
    return out.getvalue()


async def dead_letter(r: Relay) -> Notification:
    """The one notification `r` dead-lettered, once it has."""
    for _ in range(200):
        if (await r.service.store.counts())["dead"]:
            break
        await asyncio.sleep(0.05)
    [dead] = await r.service.store.dead_letters()
    return dead


def hides_its_cause(err: BaseException) -> bool:
    """Whether `err` does not show the error it was raised from (the aiohttp error the client
    turned into it: `from None`)."""
    return err.__suppress_context__ or err.__context__ is None
