"""Config loading: every bad config gets its clear error with file:line; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from relay import yamlconf
from relay.channels import settings_models
from relay.config import Defaults, RetryPolicy
from relay.config_digest import config_hash
from relay.config_load import parse_config
from relay.configure import compile_config, load
from relay.dashboard_links import dashboard_link
from relay.durations import format_duration, parse_duration
from relay.errors import ConfigError, Problem, did_you_mean, in_file_order
from relay.interpolation import Interpolated, interpolate
from relay.settings import load_settings
from relay.sizes import format_size, parse_size
from tests.conftest import run_cli_in_process

GOOD = """\
server:
  auth_token: ${TOKEN}
channels:
  out: {type: console}
  hook:
    type: webhook
    url: ${HOOK_URL:-http://127.0.0.1:9/x}
    headers: {X-Team: core}
rules:
  - name: failures
    match: {status: [failure], task: "billing/*", tags: {any: [env:prod]}}
    notify: [out, hook]
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", settings_models(), env or {})
    return [str(p) for p in info.value.problems]


def test_good_config_loads_with_interpolation() -> None:
    loaded = parse_config(GOOD, "c.yaml", settings_models(), {"TOKEN": "tok-123456"})
    config = loaded.config
    assert config.server.auth_token is not None
    assert config.server.auth_token.get_secret_value() == "tok-123456"
    assert config.channels["hook"].type == "webhook"
    assert "tok-123456" in loaded.secrets()
    assert "http://127.0.0.1:9/x" in loaded.secrets()  # webhook URLs embed keys: secret


def test_one_name_stands_for_a_list_of_one_wherever_a_list_of_names_goes() -> None:
    """`status: FAILED` and `task: "billing/*"` were read as lists of one, `notify: pager` was
    refused ("expected a list"): one name is one channel, tag or group path, as it is a status."""
    text = GOOD.replace("notify: [out, hook]", "notify: hook\n    group_by: taskIdentifier")
    text = text.replace("{any: [env:prod]}", "{any: env:prod, all: vip, none: canary}")
    [rule] = parse_config(text, "c.yaml", settings_models(), {"TOKEN": "tok-123456"}).config.rules
    assert (rule.notify, rule.group_by) == (["hook"], ["taskIdentifier"])
    assert rule.match.tags is not None
    assert (rule.match.tags.any, rule.match.tags.all, rule.match.tags.none) == (
        ["env:prod"],
        ["vip"],
        ["canary"],
    )


def test_header_values_are_scrubbed_when_they_are_credentials_not_every_word() -> None:
    """`X-Team: core` (SPEC's own example) made every "core" in the logs read "***" (a rule
    `core-failures`, a task `core/sync`); credentials by name or by length are still scrubbed."""
    headers = "{X-Team: core, X-Api-Key: k1x, Authorization: 'Bearer t', X-Route: 'a1b2c3d4e5'}"
    text = GOOD.replace("{X-Team: core}", headers)
    loaded = parse_config(text, "c.yaml", settings_models(), {"TOKEN": "tok-123456"})
    secrets = loaded.secrets()
    assert {"k1x", "Bearer t", "a1b2c3d4e5"} <= set(secrets)
    assert "core" not in secrets


def test_a_header_value_of_8_characters_is_long_enough_to_be_a_credential() -> None:
    text = GOOD.replace("{X-Team: core}", "{X-Route: a1b2c3d4, X-Team: corecor}")
    secrets = parse_config(text, "c.yaml", settings_models(), {"TOKEN": "tok-123456"}).secrets()
    assert "a1b2c3d4" in secrets and "corecor" not in secrets


def test_every_secret_of_a_rotation_is_scrubbed() -> None:
    """A webhook's `secret: [old, new]` (a rotation): both, not only a lone one."""
    rotation = ["whsec_b2xkLXNlY3JldC0xMjM0NQ==", "whsec_bmV3LXNlY3JldC02Nzg5MA=="]
    text = GOOD.replace("{X-Team: core}", f"{{X-Team: core}}\n    secret: [{', '.join(rotation)}]")
    loaded = parse_config(text, "c.yaml", settings_models(), {"TOKEN": "tok-123456"})
    assert set(rotation) <= set(loaded.secrets())


def test_webhooks_default_to_16_in_flight_other_types_to_4() -> None:
    text = GOOD.replace(
        "  out: {type: console}",
        "  out: {type: console}\n  few: {type: webhook, url: http://127.0.0.1:9/y, concurrency: 2}",
    )
    env = {"TOKEN": "tok-123456"}
    channels = parse_config(text, "c.yaml", settings_models(), env).config.channels
    assert (channels["hook"].concurrency, channels["out"].concurrency) == (16, 4)
    assert channels["few"].concurrency == 2
    assert problems(text.replace("concurrency: 2", "concurrency: 257"), env) == [
        "c.yaml:5: channels.few.concurrency: must be at most 256 (got 257)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: {bogus: 1}\n", "c.yaml:1: server.bogus: unknown key"),
        (
            "rules:\n  - name: a\n    notify: [nope]\n",
            "c.yaml:3: rules[0].notify[0]: unknown channel 'nope'",
        ),
        (
            "channels:\n  x: {type: carrier-pigeon}\n",
            "c.yaml:2: channels.x.type: unknown channel type",
        ),
        ("channels:\n  x: {url: 1}\n", "c.yaml:2: channels.x: a channel needs a `type`"),
        ("channels:\n  x: {type: webhook}\n", "c.yaml:2: channels.x.url: required key is missing"),
        (
            "channels:\n  x: {type: webhook, url: ftp://a/b}\n",
            "channels.x.url: url must be an http",
        ),
        (  # each send failed as `invalid URL`; `relay check` said OK
            "channels:\n  x: {type: webhook, url: 'http://127.0.0.1:99999/b?k=s3cr3t'}\n",
            "c.yaml:2: channels.x.url: url has no valid host and port",
        ),
        (
            "channels:\n  x: {type: webhook, url: 'https://[::1/b?k=s3cr3t'}\n",
            "c.yaml:2: channels.x.url: url is not a valid URL",
        ),
        *(  # no request can be made of these hosts: every send was dead as `invalid URL`
            (
                f"channels:\n  x: {{type: webhook, url: '{url}'}}\n",
                "c.yaml:2: channels.x.url: url has no valid host and port",
            )
            for url in (
                "https://hooks..example.com/b",
                "https://exa mple.com/b",
                "https://.example.com/b",
            )
        ),
        (
            "channels:\n  x: {type: slack, webhook_url: 'https://hooks.slack .com/services/T'}\n",
            "c.yaml:2: channels.x.webhook_url: webhook_url has no valid host and port",
        ),
        (
            "channels:\n  x: {type: webhook, url: 'http://a/b', secret: nope!}\n",
            "secret must be whsec_",
        ),
        (
            "channels:\n  x: {type: webhook, url: 'http://a/b', secret: [nope!]}\n",
            "c.yaml:2: channels.x.secret: secret must be whsec_",
        ),
        (  # 15 bytes: one short of the least Standard Webhooks key relay takes
            "channels:\n  x: {type: webhook, url: 'http://a/b', secret: whsec_YWFhYWFhYWFhYWFhYWFh}\n",
            "c.yaml:2: channels.x.secret: secret must decode to at least 16 bytes",
        ),
        (
            "channels:\n  x: {type: webhook, url: 'http://a/b', secret: []}\n",
            "c.yaml:2: channels.x.secret: secret: give one whsec_ secret",
        ),
        ("defaults: {timeout: soon}\n", "c.yaml:1: defaults.timeout: expected a duration"),
        ("defaults: {dashboard_url: 'https://x/{nope}'}\n", "unknown placeholder {nope}"),
        ("defaults: {dashboard_url: 'https://x/{run_id!r}'}\n", "unknown placeholder {run_id!r}"),
        ("defaults: {dashboard_url: 'https://x/{run_id'}\n", "dashboard_url: a lone { or }"),
        ("defaults: {dashboard_url: 'https://x/}/{run_id}'}\n", "dashboard_url: a lone { or }"),
        ("defaults: {retry: {max_attempts: 0}}\n", "defaults.retry.max_attempts"),
        (
            "rules:\n  - name: a\n    notify: []\n",
            "rules[0].notify: List should have at least 1 item",
        ),
        ("rules:\n  - notify: [x]\n", "rules[0].name: required key is missing"),
        (  # the runs a rule fired for are stored joined with \x1f: it never recorded them
            'rules:\n  - {name: "a\\x1fb", notify: [c]}\nchannels: {c: {type: console}}\n',
            "c.yaml:2: rules[0].name: a rule name cannot contain control characters",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {status: [FAILED, 5]}}\nchannels: {c: {type: console}}\n",
            "rules[0].match.status[1]: expected a string",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {task_regex: '('}}\nchannels: {c: {type: console}}\n",
            "invalid regex",
        ),
        (  # re.compile's OverflowError was a traceback in relay check
            "rules:\n  - {name: a, notify: [c], match: {task_regex: 'a{99999999999}'}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.task_regex: invalid regex: the repetition number is too large",
        ),
        (  # the regex module's compile wrote it out: seconds and gigabytes (relay.regexes)
            "rules:\n  - {name: a, notify: [c], match: {task_regex: '(?:(?:a{100}){100}){100}'}}\nchannels: {c: {type: console}}\n",
            "rules[0].match.task_regex: invalid regex: its nested repeats multiply past 10,000",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {event: nope}}\nchannels: {c: {type: console}}\n",
            "unknown event",
        ),
        # an empty list: `task: []` and `tags: {any: []}` matched every run, `status: []` none
        (
            "rules:\n  - {name: a, notify: [c], match: {task: []}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.task: List should have at least 1 item",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {tags: {any: []}}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.tags.any: List should have at least 1 item",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {status: []}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.status: List should have at least 1 item",
        ),
        # empty text (a `${TASK:-}` left unset): only a run without a task, or tagged "", met it
        (
            "rules:\n  - {name: a, notify: [c], match: {task: ''}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.task: an empty glob matches only a run without a task",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {task: [b/*, '']}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.task: an empty glob matches only a run without a task",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {tags: {all: [x, '']}}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.tags.all: an empty tag: only a run tagged with empty text",
        ),
        # bounds no value meets (NaN compares false with all): a rule that never fires
        (
            "rules:\n  - {name: a, notify: [c], match: {cost_cents: {gt: 500, lt: 100}}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.cost_cents: no value is above the lower bound",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {duration_ms: {gt: 5, lte: 5}}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.duration_ms: no value is above the lower bound",
        ),
        (  # `{}` holds for every run: a bound or a tag list left out
            "rules:\n  - {name: a, notify: [c], match: {duration_ms: {}}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.duration_ms: empty: give at least one of gt, gte, lt, lte",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {tags: {}}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.tags: empty: give at least one of any, all, none",
        ),
        (  # a value left out is null: the same condition left out
            "rules:\n  - {name: a, notify: [c], match: {cost_cents: {gt: }}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.cost_cents: empty: give at least one of gt, gte, lt, lte",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {tags: {any: null}}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.tags: empty: give at least one of any, all, none",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {cost_cents: {gt: .nan}}}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].match.cost_cents.gt: Input should be a finite number",
        ),
        (
            "rules:\n  - {name: a, notify: [c], match: {cost_cents: {gt: true}}}\nchannels: {c: {type: console}}\n",
            "expected a number",
        ),
        (
            "rules:\n  - {name: a, notify: [c], continue: maybe}\nchannels: {c: {type: console}}\n",
            "rules[0].continue",
        ),
        (
            "rules:\n  - {name: a, notify: [c]}\n  - {name: a, notify: [c]}\nchannels: {c: {type: console}}\n",
            "c.yaml:3: rules[1].name: duplicate rule name",
        ),
        (
            "rules:\n  - {name: a, notify: [c], group_wait: 10s}\nchannels: {c: {type: console}}\n",
            "group_* options need `group_by`",
        ),
        (
            "rules:\n  - {name: a, notify: [c], group_by: ['...', taskIdentifier]}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].group_by: `...` (every run a group of its own) cannot go with other paths",
        ),
        (  # Alertmanager: "duplicated label in group_by"; it was accepted
            "rules:\n  - {name: a, notify: [c], group_by: [taskIdentifier, taskIdentifier]}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].group_by: 'taskIdentifier' is listed twice",
        ),
        (  # Alertmanager: "group_interval cannot be zero"; it was accepted
            "rules:\n  - {name: a, notify: [c], group_by: [], group_interval: 0s}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].group_interval: must be more than 0 (got 0s)",
        ),
        *(  # Alertmanager: "repeat_interval cannot be zero"; it was accepted (read as 5m)
            (
                f"rules:\n  - {{name: a, notify: [c], group_by: [], repeat_interval: {zero}}}\nchannels: {{c: {{type: console}}}}\n",
                "c.yaml:2: rules[0].repeat_interval: must be more than 0 (got 0s): group_interval's"
                " value (5m unless set) closes a group soonest",
            )
            for zero in ("0", "0s", "0ms")
        ),
        (  # Alertmanager: "duplicated label in group_by"; `...` twice said it "cannot go with
            # other paths", when there is no other path
            "rules:\n  - {name: a, notify: [c], group_by: ['...', '...']}\nchannels: {c: {type: console}}\n",
            "c.yaml:2: rules[0].group_by: '...' is listed twice",
        ),
        (  # in the units it was written in, not "greater than or equal to 3600"
            "defaults:\n  retention: 30m\n",
            "c.yaml:2: defaults.retention: must be at least 1h (got 30m)",
        ),
        (
            "server:\n  auth_token: ${UNSET_VAR}\n",
            "c.yaml:2: server.auth_token: environment variable UNSET_VAR is not set",
        ),
        ("a: [1, 2\n", "c.yaml:2: invalid YAML"),
        (  # a tab, and a line indented off by one: PyYAML's words alone named no fix
            "channels:\n\tc: {type: console}\n",
            "c.yaml:2: invalid YAML: found character '\\t' that cannot start any token;"
            " indent with spaces, not tabs",
        ),
        (
            "rules:\n  - name: a\n    match: {}\n   notify: [c]\n",
            "c.yaml:4: invalid YAML: expected <block end>, but found '<block mapping start>'"
            " (check this line's indentation against the lines above)",
        ),
        ("- 1\n- 2\n", "the top level must be a mapping"),
        ("server: {max_body_bytes: 1}\nserver: {}\n", "c.yaml:2: server: duplicate key"),
        ("server: {<<: 5}\n", "c.yaml:1: a merge key (<<) takes a mapping, or a list of mappings"),
        (
            "sources: {realtime: {api_url: x, secret_key: k, feeds: [{tags: [a]}]}}\n",
            "api_url must be an http",
        ),
        ("sources: {realtime: {secret_key: k, feeds: []}}\n", "sources.realtime.feeds"),
        (
            "sources: {realtime: {secret_key: k, feeds: [{tags: [a], run_id: r}]}}\n",
            "exactly one of tags, run_id, batch_id",
        ),
        (
            "sources: {realtime: {secret_key: k, feeds: [{tags: [a], created_at: soon}]}}\n",
            "created_at must be a duration Trigger.dev reads",
        ),
        # forms relay's durations take but Trigger.dev would drop (then no window at all)
        *(
            (
                "sources: {realtime: {secret_key: k, feeds: [{tags: [a], created_at: 'W'}]}}\n".replace(
                    "W", window
                ),
                "c.yaml:1: sources.realtime.feeds[0].created_at: created_at must be a duration",
            )
            for window in ("1.5h", "3600", "250ms", "1y", " 24h")
        ),
        # what Trigger.dev would read as another feed, or as every run of the environment
        *(
            (
                "sources: {realtime: {secret_key: k, feeds: [FEED]}}\n".replace("FEED", feed),
                f"c.yaml:1: sources.realtime.feeds[0].{field}",
            )
            for feed, field in (
                ("{tags: ['a,b']}", "tags: a feed's tags cannot be empty or contain a comma"),
                ("{tags: ['']}", "tags: a feed's tags cannot be empty"),
                ("{tags: [a, '']}", "tags: a feed's tags cannot be empty"),
                # what Trigger.dev answers 400 "Invalid tag" for, at every request: a double
                # quote, a backslash, a control character or DEL (UNSAFE_REALTIME_TAG_CHARS in
                # apps/webapp/app/v3/electricShape.server.ts, checked by
                # apps/webapp/app/routes/realtime.v1.runs.ts @ b082e44389337dc6505d590737a6df70867cc8f4)
                *(
                    (f"{{tags: [ok, {tag}]}}", "tags: a feed's tags cannot hold a double quote")
                    for tag in ("'say \"hi\"'", "'a\\b'", '"a\\tb"', '"a\\x7fb"', '"\\x01"')
                ),
                ("{run_id: ''}", "run_id: "),
                ("{batch_id: ''}", "batch_id: "),
            )
        ),
        (
            "sources: {trigger_alerts: {secrett: x}}\n",
            "sources.trigger_alerts.secrett: unknown key",
        ),
        ("a: !!python/object:os.system echo\n", "c.yaml:1: cannot read this value"),
        # explicit tags PyYAML itself fails on with KeyError, IndexError, AttributeError
        ("a: !!bool maybe\n", "c.yaml:1: cannot read this value"),
        ('a: !!int ""\n', "c.yaml:1: cannot read this value"),
        ("a: !!timestamp soon\n", "c.yaml:1: cannot read this value"),
        ("? [1, 2]\n: x\n", "mapping keys must be plain scalars"),
    ],
)
def test_bad_config_is_named_with_its_line(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_a_webhook_secret_of_16_bytes_is_enough() -> None:
    """README: `whsec_<base64>` of at least 16 bytes; 16 exactly is taken, unpadded too."""
    for key in ("YWFhYWFhYWFhYWFhYWFhYQ==", "YWFhYWFhYWFhYWFhYWFhYQ", "YWFhYWFhYWFhYWFhYWFhYWE"):
        text = f"channels:\n  x: {{type: webhook, url: 'http://a/b', secret: whsec_{key}}}\n"
        [channel] = parse_config(text, "c.yaml", settings_models(), {}).config.channels
        assert channel == "x"


_NAMED = """\
channels:
  prod-failures: {type: console}
time_intervals:
  - {name: business-hours, time_intervals: [{weekdays: [monday]}]}
rules:
  - name: prod-failures-to-pagerduty
    match: {status: failure}
    notify: [prod-failures]
    group_by: [taskIdentifier]
    mute_time_intervals: [%s]
inhibit_rules:
  - {name: storm, source_digest: {rule: %s, min_count: 3}, target_match: {rule: x}}
"""


def test_check_suggests_the_time_interval_and_rule_a_misspelt_name_meant() -> None:
    """`unknown time interval 'buisness-hours'` and `unknown rule: 'prod-failures-to-pagerdty'`
    came without the suggestion an unknown channel gets."""
    found = problems(_NAMED % ("buisness-hours", "prod-failures-to-pagerdty"))
    assert found == [
        "c.yaml:10: rules[0].mute_time_intervals[0]: unknown time interval 'buisness-hours'"
        " (did you mean 'business-hours'?)",
        "c.yaml:12: inhibit_rules[0].source_digest.rule: unknown rule:"
        " 'prod-failures-to-pagerdty' (did you mean 'prod-failures-to-pagerduty'?)",
    ]
    unrelated = problems(_NAMED % ("nights", "deploy-failures"))
    assert not [p for p in unrelated if "did you mean" in p], unrelated


def test_check_names_relays_key_for_an_alertmanager_key(tmp_path: Path) -> None:
    """An Alertmanager operator writes `receiver:` in a rule (and `receivers:`, `route:`,
    `send_resolved:` on a rule) by habit: `relay check` said `unknown key` and nothing more,
    spelling finding nothing near. It names relay's key now; a near spelling still wins."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "receivers: []\nroute: {}\nchannels: {out: {type: console}}\nrules:\n"
        "  - {name: a, receiver: out, send_resolved: true, matchers: []}\n"
    )
    checked = run_cli_in_process("check", str(config))
    assert checked.returncode == 1
    assert checked.stderr.splitlines()[:-1] == [
        f"{config}:1: receivers: unknown key (Alertmanager's 'receivers' is relay's 'channels')",
        f"{config}:2: route: unknown key (Alertmanager's 'route' is relay's 'rules')",
        f"{config}:5: rules[0].notify: required key is missing",
        f"{config}:5: rules[0].receiver: unknown key (Alertmanager's 'receiver' is relay's"
        " 'notify')",
        f"{config}:5: rules[0].send_resolved: unknown key (Alertmanager's 'send_resolved' is"
        " relay's 'update_on_recovery')",
        f"{config}:5: rules[0].matchers: unknown key (did you mean 'match'?)",
    ]


def test_an_unknown_key_with_none_near_lists_the_keys_of_its_mapping() -> None:
    """`match: {cost: ...}`, `smtp: {user: ...}`, `cost_cents: {'>': 5}`: a newcomer's guesses
    that no spelling is near. `relay check` said `unknown key` and nothing more, and the
    operator went to the reference for `cost_cents`; it lists the keys that mapping takes now,
    those of the channel's own type."""
    text = (
        "channels:\n  mail: {type: email, from: a@example.com, to: [b@example.com],"
        " smtp: {host: h, user: u}}\n"
        "rules:\n  - {name: a, notify: [mail], match: {cost: {gt: 5}}}\n"
        "  - {name: b, notify: [mail], match: {cost_cents: {'>': 5}}}\n"
    )
    assert problems(text) == [
        "c.yaml:2: channels.mail.smtp.user: unknown key; known here: host, port, starttls,"
        " tls, username, password, ca_file, validate_certs, hello",
        "c.yaml:4: rules[0].match.cost: unknown key; known here: event, status, task,"
        " task_regex, tags, cost_cents, base_cost_cents, duration_ms, is_test, metadata",
        "c.yaml:5: rules[1].match.cost_cents.>: unknown key; known here: gt, gte, lt, lte",
    ]


@pytest.mark.parametrize(
    ("word", "meant"),
    [
        ("prod-failurs", "prod-failures"),  # one letter left out
        ("prod-faliures", "prod-failures"),  # two swapped
        ("prod_failures", "prod-failures"),  # _ for -
        ("Prod_Failures_To_PagerDuty", "prod-failures-to-pagerduty"),  # scored 0.73
        ("ONCALL_SLACK", "oncall-slack"),  # scored 0
        ("oncall-slakc", "oncall-slack"),
        ("ops-pager", "ops_pager"),
        ("slack", None),  # unrelated: nothing
        ("staging-failures", None),
        ("deploy-alerts", None),
    ],
)
def test_a_misspelt_name_gets_the_name_it_meant_and_no_other(word: str, meant: str | None) -> None:
    names = ["prod-failures", "prod-failures-to-pagerduty", "oncall-slack", "ops_pager", "email"]
    assert did_you_mean(word, names) == (f" (did you mean {meant}?)" if meant else "")


@pytest.mark.parametrize(
    ("word", "meant"),
    [
        ("ONCALL_SLACK", "oncall_slack"),
        ("Oncall-Slack", "oncall-slack"),
        ("oncal_slack", "oncall_slack"),
    ],
)
def test_of_two_names_folded_alike_the_one_as_written_is_meant(word: str, meant: str) -> None:
    """`oncall-slack` and `oncall_slack` fold alike: `ONCALL_SLACK` was told `oncall-slack`
    (the last one folded), not the name that differs from it by case alone."""
    assert did_you_mean(word, ["oncall-slack", "oncall_slack"]) == f" (did you mean {meant}?)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # an apostrophe in '...', or text after a closing quote: no indentation slip
            "rules:\n  - name: 'it's'\n",
            "c.yaml:2: invalid YAML: expected <block end>, but found '<scalar>' (text after a"
            " closing quote: quote the whole value; within '...' write a ' as '')",
        ),
        (
            'server: {}\nname: "a" b\n',
            "c.yaml:2: invalid YAML: expected <block end>, but found"
            " '<scalar>' (text after a closing quote: quote the whole value; within '...' write a"
            " ' as '')",
        ),
        (  # a scalar on a line of its own, indented off: the indentation
            "a:\n  b: 1\n c\n",
            "c.yaml:3: invalid YAML: expected <block end>, but found '<scalar>'"
            " (check this line's indentation against the lines above)",
        ),
        ("a: [1]\n]\n", "c.yaml:2: invalid YAML: expected <block end>, but found ']'"),
        (  # a rule's key at its `-` (PyYAML found a key, '?'): no fix was named
            "rules:\n  - name: a\n  notify: [c]\n",
            "c.yaml:3: invalid YAML: expected <block end>, but found '?'"
            " (check this line's indentation against the lines above)",
        ),
        (  # a key indented past the one above: read as that one's value going on
            "channels:\n  s:\n    token: x\n     channel: y\n",
            "c.yaml:4: invalid YAML: mapping values are not allowed here"
            " (check this line's indentation against the lines above)",
        ),
        (  # the same words for a `: ` in a plain value on its key's line: quote it
            "rules:\n  - name: a\n    when: run.x: 1\n",
            "c.yaml:3: invalid YAML: mapping values are not allowed here"
            " (a value holding ': ' must be quoted)",
        ),
    ],
)
def test_yaml_slip_hint_fits_the_slip(text: str, expected: str) -> None:
    """ "expected <block end>, but found" named an indentation slip for every thing found: a
    text after a closing quote (`'it's'`) or a stray bracket was told to check indentation."""
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "{customer: {tier: gold}}",
            "metadata.customer: expected text, a number, true/false or"
            " null; a nested key is written as a dotted path (`customer.tier: enterprise`)",
        ),
        (
            "{tier: [gold, silver]}",
            "metadata.tier: expected text, a number, true/false or null (one value to equal)",
        ),
    ],
)
def test_a_metadata_value_that_is_no_scalar_is_one_problem(value: str, expected: str) -> None:
    """A mapping or a list as a value to equal was four problems, one per type it is not
    (`metadata.customer.str: Input should be a valid string`, `.int`, `.float`, `.bool`),
    none saying what to write instead."""
    text = f"rules:\n  - {{name: a, notify: [c], match: {{metadata: {value}}}}}\n"
    found = problems(text + "channels: {c: {type: console}}\n")
    assert found == [f"c.yaml:2: rules[0].match.{expected}"]


def test_a_dashboard_url_may_hold_literal_braces() -> None:
    defaults = Defaults(dashboard_url="https://x/{{a}}/{run_id}?t={task}")
    assert dashboard_link(defaults)({"id": "run_1", "taskIdentifier": "a/b"}) == (
        "https://x/%7Ba%7D/run_1?t=a%2Fb"  # `{a}`, as a URL carries it (web_url)
    )


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("ftp://x/{run_id}", "must start with https:// (or http://)"),
        ("/runs/{run_id}", "must start with https:// (or http://)"),
        ("https:///runs/{run_id}", "makes no link: it needs a host"),
        ("https://{project_ref} x/{run_id}", "makes no link: it needs a host"),
    ],
)
def test_a_dashboard_url_that_makes_no_web_link_is_refused(pattern: str, why: str) -> None:
    """Accepted before, and every notification went out without a link: web_url drops what
    is no absolute http(s) URL with a host when the link is made."""
    [found] = problems(f"defaults:\n  dashboard_url: '{pattern}'\n")
    assert found.startswith(f"c.yaml:2: defaults.dashboard_url: {why}"), found
    Defaults(dashboard_url="HTTPS://{project_ref}.example/r/{run_id}")  # fine


def test_a_choice_field_lists_its_choices_at_its_line() -> None:
    """A Literal field (pagerduty's severity) said pydantic's "Input should be 'critical',
    'error', 'warning' or 'info'"; now in relay's words, as the environment's choices are."""
    key = "a" * 32
    text = f"channels:\n  p:\n    type: pagerduty\n    routing_key: {key}\n    severity: loud\n"
    assert problems(text) == [
        "c.yaml:5: channels.p.severity: expected one of critical, error, warning, info"
    ]


def test_every_problem_is_reported_not_just_the_first() -> None:
    found = problems("server: {bogus: 1, max_body_bytes: -5}\ndefaults: {timeout: x}\n")
    assert len(found) == 3, found


def test_problems_never_quote_secret_values() -> None:
    text = "server: {auth_token: 12}\nchannels:\n  h: {type: webhook, url: '${URL}', bogus: 1}\n"
    found = problems(text, {"URL": "https://hooks.example/SECRETPATH"})
    assert found and all("SECRETPATH" not in p for p in found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *(
            (
                f"channels:\n  h:\n    type: {kind}\n    webhook_url: ${{URL}}\n",
                "c.yaml:4: channels.h.webhook_url: webhook_url is not a valid URL",
            )
            for kind in ("slack", "discord", "msteams")
        ),
        (
            "sources:\n  realtime:\n    secret_key: tr_k\n    api_url: ${URL}\n"
            "    feeds: [{tags: [a]}]\n",
            "c.yaml:4: sources.realtime.api_url: api_url is not a valid URL",
        ),
    ],
)
def test_a_broken_url_is_refused_without_quoting_it(text: str, expected: str) -> None:
    """Python's URL parser names the [bracketed] part it cannot read, and that message was the
    problem `relay check` printed: here a piece of the password."""
    found = problems(text, {"URL": "https://relay:Pw[0rdSECRET]@hooks.example.com/x"})
    assert found == [expected], found


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*x9Pw0rdSECRET", "c.yaml:2: invalid YAML: found undefined alias (quote a value"),
        ("!x9Pw0rdSECRET", "c.yaml:2: cannot read this value (unknown tag; quote a value"),
        ("!x9!Pw0rdSECRET", "c.yaml:2: invalid YAML: found undefined tag handle (quote a"),
        ("!!str!x9Pw0rdSECRET", "c.yaml:2: cannot read this value (unknown tag"),
    ],
)
def test_a_password_read_as_alias_or_tag_is_not_repeated(value: str, expected: str) -> None:
    """An unquoted password starting with * or ! is an alias or a tag to YAML: the problem
    quoted the name, i.e. the password, in `relay check` output and the startup log."""
    found = problems(f"server:\n  auth_token: {value}\n")
    assert any(p.startswith(expected) for p in found), found
    assert not any("Pw0rd" in p for p in found), found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "channels:\n  h:\n    type: webhook\n    url: http://127.0.0.1:9/\n"
            '    headers: {Authorization: "Bearer ${KEY}\\nX-Injected: 1"}\n',
            "c.yaml:5: channels.h.headers.Authorization: header values cannot contain line breaks",
        ),
        (  # a DEL or other control (from an env var): the same ValueError at every send
            "channels:\n  h:\n    type: webhook\n    url: http://127.0.0.1:9/\n"
            '    headers: {Authorization: "Bearer ${KEY}\\x7f", X-Tab: "a\\tb"}\n',
            "c.yaml:5: channels.h.headers.Authorization: header values cannot contain control",
        ),
        (
            "channels:\n  h:\n    type: webhook\n    url: 'http://relay:${KEY}@127.0.0.1:9/'\n"
            "    headers: {Authorization: 'Bearer ${KEY}'}\n",
            "c.yaml:2: channels.h: url carries a user:password and headers an Authorization",
        ),
        (
            "sources:\n  realtime:\n    api_url: 'https://u:${KEY}@api.trigger.dev'\n"
            "    secret_key: ${KEY}\n    feeds: [{tags: [a]}]\n",
            "c.yaml:3: sources.realtime.api_url: api_url cannot carry a user:password",
        ),
        (
            'sources:\n  realtime:\n    secret_key: "tr_${KEY}\\nX: 1"\n    feeds: [{tags: [a]}]\n',
            "c.yaml:3: sources.realtime.secret_key: cannot contain line breaks",
        ),
        (
            "sources:\n  realtime:\n    secret_key: ${UNSET:- }\n    feeds: [{tags: [a]}]\n",
            "c.yaml:3: sources.realtime.secret_key: secret_key is empty",
        ),
    ],
)
def test_what_the_http_client_refuses_at_every_send_is_refused_at_load(
    text: str, expected: str
) -> None:
    """aiohttp raises ValueError on a header value with a line break, and on a URL's user:password
    beside an Authorization header: each send (and `relay send-test`) died with a traceback."""
    found = problems(text, {"KEY": "s3cr3t-value"})
    assert len(found) == 1 and found[0].startswith(expected), found
    assert "s3cr3t" not in found[0]


@pytest.mark.parametrize("name", ["X-Équipe", "X(Team)", "X-Team\t", "X Team", "X-Team:", ""])
def test_a_webhook_header_name_that_no_receiver_takes_is_refused_at_load(name: str) -> None:
    """Not an HTTP token: sent as is, and every receiver answered 400, so each notification
    went dead; `relay check` said the config was fine."""
    text = f"channels:\n  h:\n    type: webhook\n    url: http://127.0.0.1:9/\n    headers: {{{name!r}: v}}\n"
    [found] = problems(text.replace("'", '"'))
    assert found.startswith(f"c.yaml:5: channels.h.headers.{name}: header names are"), found


@pytest.mark.parametrize(
    "name",
    ["Transfer-Encoding", "content-encoding", "CONNECTION", "Upgrade", "Webhook-Version", "HOST"],
)
def test_a_webhook_header_relay_or_the_http_client_sets_is_refused_at_load(name: str) -> None:
    """The docs reserve `webhook-*`, but only three such names were refused; and a
    Transfer-Encoding (or Content-Encoding) of the user's lied about the body: every receiver
    answered 400, so each notification went dead while `relay check` said OK."""
    text = f"channels:\n  h:\n    type: webhook\n    url: http://127.0.0.1:9/\n    headers: {{{name}: v}}\n"
    [found] = problems(text)
    assert found == f"c.yaml:5: channels.h.headers.{name}: header {name} is set by relay", found


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("Subject", "write it in the template's subject part (email/<template>.subject.j2)"),
        ("To", "the channel's `to`"),
        ("cc", "the channel's `cc`"),
    ],
)
def test_an_email_header_relay_sets_says_where_relay_takes_it_from(name: str, where: str) -> None:
    """Alertmanager sets an email's subject with `headers: {Subject: ...}`; relay refused it
    with "header Subject is set by relay" and left the operator to find the subject template."""
    text = (
        "channels:\n  m:\n    type: email\n    smtp: {host: 127.0.0.1}\n    from: a@example.com\n"
        f"    to: [b@example.com]\n    headers: {{{name}: x}}\n"
    )
    [found] = problems(text)
    assert found == f"c.yaml:7: channels.m.headers: header {name} is set by relay: {where}"


def test_yaml_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    found = problems("\n".join(lines) + "\n")
    assert any("YAML nodes" in p for p in found)


def test_oversized_config_is_refused() -> None:
    found = problems("# " + "x" * (5 * 1024 * 1024) + "\n")
    assert any("larger than" in p for p in found)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("4h", 14400),
        ("1d", 86400),
        ("250ms", 0.25),
        ("1h30m", 5400),
        ("1w", 604800),
        ("1y", 365 * 86400),  # Prometheus' year
        (15, 15),
        ("2.5", 2.5),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "5 minutes", "m5", "-1s", "1x", True, None, [1], float("nan"), "inf", "-nan"]
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "problem"),
    [  # what each refusal tells an operator, word for word
        ("defaults: {retention: 3650d1h}", "retention: duration must be between 0 and 10 years"),
        (  # Prometheus takes no space between the parts either
            "defaults: {retention: '1h 30m'}",
            "retention: expected a duration like 30s, 5m, 4h, 1h30m or 250ms",
        ),
        (
            "defaults: {timeout: .inf}",
            "timeout: not a duration; use 30s, 5m, 4h, 1h30m, 250ms or a number of seconds",
        ),
        ("defaults: {timeout: true}", "timeout: expected a duration like 30s, 5m, 4h"),
        ("defaults: {timeout: ''}", "timeout: expected a duration like 30s, 5m, 4h"),
        ("defaults: {timeout: [1]}", "timeout: expected a duration like 30s, 5m, 4h"),
        (
            "defaults: {retry: {min_backoff: 2d, max_backoff: 1d}}",
            "retry: min_backoff 2d is more than max_backoff 1d: the backoff starts at min_backoff"
            " and doubles up to max_backoff",
        ),
    ],
)
def test_a_duration_refused_says_why(text: str, problem: str) -> None:
    assert problems(text) == [f"c.yaml:1: defaults.{problem}"]


def test_ten_years_is_the_longest_duration() -> None:
    config = parse_config("defaults: {retention: 10y}", "c.yaml", settings_models(), {}).config
    assert config.defaults.retention == 3650 * 86400


def test_a_negative_duration_says_what_was_written() -> None:
    """`timeout: '-0'` was told "must be more than 0 (got -0s)", `-1` no value at all, `-5s`
    "expected a duration like 30s" (it is one, negative)."""
    text = "defaults:\n  timeout: '-0'\n  retention: -5s\nchannels: {c: {type: console, timeout: -1.5}}\n"
    assert problems(text) == [
        "c.yaml:2: defaults.timeout: a duration cannot be negative (got -0)",
        "c.yaml:3: defaults.retention: a duration cannot be negative (got -5s)",
        "c.yaml:4: channels.c.timeout: a duration cannot be negative (got -1.5)",
    ]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1048576, 1048576),
        ("1048576", 1048576),
        ("512KiB", 512 * 1024),
        ("1MiB", 1024 * 1024),
        ("1Mi", 1024 * 1024),
        ("1.5 MiB", 1536 * 1024),
        ("1MB", 1_000_000),
        ("2kb", 2000),
        ("1e6", 1_000_000),  # YAML 1.1 reads 1e6 as a string
        ("1Ki", 1024),  # Kubernetes' unit, as 1Mi
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    text_ = f"server:\n  max_body_bytes: {text}\n"
    assert parse_config(text_, "c.yaml", settings_models(), {}).config.server.max_body_bytes == size


@pytest.mark.parametrize(
    ("text", "size"), [("1GiB", 1024**3), ("1Gi", 1024**3), ("1GB", 1000**3), ("0.5GiB", 2**29)]
)
def test_gigabyte_sizes(text: str, size: int) -> None:
    """The gigabyte units, each its own power (a wrong one is off by 7% or a factor of 1000)."""
    text_ = f"server:\n  max_body_bytes_in_flight: {text}\n"
    config = parse_config(text_, "c.yaml", settings_models(), {}).config
    assert config.server.max_body_bytes_in_flight == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1m", "expected a number of bytes or a size like 512KiB, 1MiB or 1MB"),  # MB? MiB? milli?
        ("lots", "expected a number of bytes or a size like 512KiB, 1MiB or 1MB"),
        ("true", "expected a number of bytes or a size like 512KiB, 1MiB or 1MB"),  # not 1 byte
        ("1.5", "expected a whole number, not a fraction"),
        ("2048.5B", "a size must be a whole number of bytes"),  # not cut to 2048
        ("512", "must be at least 1KiB (got 512B)"),  # was "greater than or equal to 1024"
        ("65MiB", "must be at most 64MiB (got 65MiB)"),  # was "... equal to 67108864"
    ],
)
def test_bad_sizes(text: str, message: str) -> None:
    assert problems(f"server:\n  max_body_bytes: {text}\n") == [
        f"c.yaml:2: server.max_body_bytes: {message}"
    ]


def test_numeric_bounds_are_said_in_relays_words_and_sizes_in_sizes() -> None:
    """pydantic's bounds read "Input should be greater than or equal to 1024" (bytes, of a value
    written 512B or 1MiB) and "less than or equal to 256": now as relay's durations say theirs,
    with the number given, sizes as sizes."""
    text = (
        "server: {max_body_bytes: 512B, max_body_bytes_in_flight: 2GiB}\n"
        "channels: {c: {type: console, concurrency: 300, rate_limit: {per_second: 0}}}\n"
        "defaults: {retry: {max_attempts: 0}}\n"
    )
    assert problems(text) == [
        "c.yaml:1: server.max_body_bytes: must be at least 1KiB (got 512B)",
        "c.yaml:1: server.max_body_bytes_in_flight: must be at most 1GiB (got 2GiB)",
        "c.yaml:2: channels.c.concurrency: must be at most 256 (got 300)",
        "c.yaml:2: channels.c.rate_limit.per_second: must be more than 0 (got 0)",
        "c.yaml:3: defaults.retry.max_attempts: must be at least 1 (got 0)",
    ]
    webhook = (
        "channels: {w: {type: webhook, url: 'https://hooks.example/x', concurrency: 0,"
        " max_body_bytes: 1KiB}}\n"
    )
    assert problems(webhook) == [
        "c.yaml:1: channels.w.concurrency: must be at least 1 (got 0)",
        "c.yaml:1: channels.w.max_body_bytes: must be at least 16KiB (got 1KiB)",
    ]


def test_format_size() -> None:
    sizes = (0, 512, 1024, 1500, 1_000_000, 64 * 1024**2, 1024**3, 2000)
    assert [format_size(n) for n in sizes] == [
        *("0B", "512B", "1KiB", "1500B", "1MB", "64MiB", "1GiB", "2kB"),
    ]
    for n in sizes:  # each reads back as the size it was
        assert parse_size(format_size(n)) == n
    # a whole float is the int it is; what is no whole number of bytes is written as it is
    assert [format_size(n) for n in (1024.0, 1.5, "lots", True)] == ["1KiB", "1.5", "lots", "True"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("channels: {c: {type: console, rate_limit: {per_second: fast}}}", "expected a number"),
        ("channels: {c: {type: console, concurrency: lots}}", "expected a whole number"),
        ("channels: {c: {type: console, send_resolved: maybe}}", "expected true or false"),
        (
            "channels: {w: {type: webhook, url: 'http://127.0.0.1:9', headers: [a]}}",
            "expected a mapping of keys and values",
        ),
        ("rules: [{name: a, notify: {c: x}}]", "expected a list: [a, b], or one `- item` a line"),
        ("rules: [{name: a, notify: [c], match: {is_test: maybe}}]", "expected true or false"),
        ("rules: [{name: a, notify: [c], match: {metadata: [a]}}]", "expected a mapping of keys"),
        # a list of tags names no kind of match: the three are said, not `expected a mapping`
        ("rules: [{name: a, notify: [c], match: {tags: [env:prod]}}]", "`tags: {any: [env:prod]}`"),
        (
            "rules: [{name: a, notify: [c], match: {tags: env:prod}}]",
            "expected `any`, `all` or `none`",
        ),
        ("rules: [{name: a, notify: [c], match: {cost_cents: {gt: lots}}}]", "expected a number"),
        ("defaults: {retry: {max_attempts: 2.5}}", "expected a whole number, not a fraction"),
        ("inhibit_rules: [{name: i, source_match: {status: X}, equal: task}]", "expected a list"),
    ],
)
def test_a_value_of_the_wrong_type_is_said_in_yaml_words(text: str, said: str) -> None:
    """pydantic's own words named Python's types and parsers: "Input should be a valid
    dictionary", "unable to parse string as a number", "valid boolean, unable to interpret
    input". Every config error goes through one wording (relay.config_parts)."""
    channel = "" if text.startswith("channels") else "channels: {c: {type: console}}\n"
    found = problems(f"{text}\n{channel}")
    assert len(found) == 1 and said in found[0], found
    assert "Input should" not in found[0]


def test_a_timeout_of_zero_is_refused_in_durations() -> None:
    """aiohttp reads a total timeout of 0 as none at all: a hung receiver would hold a slot.
    Every duration that must be more than 0 says so in durations, as relay's others do: they
    said pydantic's "Input should be greater than 0"."""
    text = (
        "defaults: {timeout: 0s}\nchannels: {h: {type: console, timeout: 0}}\n"
        "sources: {realtime: {secret_key: k, feeds: [{tags: [a]}], timeout: 0ms,"
        " error_backoff: '0'}}\n"
    )
    assert problems(text) == [
        "c.yaml:1: defaults.timeout: must be more than 0 (got 0s)",
        "c.yaml:2: channels.h.timeout: must be more than 0 (got 0s)",
        "c.yaml:3: sources.realtime.timeout: must be more than 0 (got 0s)",
        "c.yaml:3: sources.realtime.error_backoff: must be more than 0 (got 0s)",
    ]


def test_a_zero_retry_age_or_backoff_and_inhibit_duration_are_refused() -> None:
    """All four were accepted: a max_age of 0 made every first failure dead ("too old"), a
    backoff of 0 retried at once every time (0 doubles to 0), an inhibit window of 0 closed as
    it opened (a rule that inhibits nothing). Each says what 0 was likely meant to do."""
    text = (
        "defaults: {retry: {max_age: 0, min_backoff: 0s, max_backoff: 0ms}}\n"
        "inhibit_rules: [{name: i, source_match: {event: run}, duration: '0'}]\n"
    )
    assert problems(text) == [
        "c.yaml:1: defaults.retry.max_age: must be more than 0 (got 0s): max_attempts: 1 sends"
        " once, without retrying",
        "c.yaml:1: defaults.retry.min_backoff: must be more than 0 (got 0s): it doubles from"
        " there, and 0 stays 0 (every retry at once)",
        "c.yaml:1: defaults.retry.max_backoff: must be more than 0 (got 0s): every retry would be"
        " at once",
        "c.yaml:2: inhibit_rules[0].duration: must be more than 0 (got 0s): a window of 0 never"
        " opens, so nothing would be inhibited",
    ]


def test_a_max_backoff_below_min_backoff_is_refused_naming_both() -> None:
    """`{min_backoff: 10m, max_backoff: 1m}` was accepted: every wait was the 1m cap, the 10m
    written meant nothing. Equal is a constant backoff; max_backoff alone below the default
    1s min_backoff is the cap it says."""
    assert problems("defaults:\n  retry: {min_backoff: 10m, max_backoff: 1m}\n") == [
        "c.yaml:2: defaults.retry: min_backoff 10m is more than max_backoff 1m: the backoff"
        " starts at min_backoff and doubles up to max_backoff",
    ]
    for fine in ({"min_backoff": "2s", "max_backoff": "2s"}, {"max_backoff": "200ms"}):
        RetryPolicy.model_validate(fine)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 0.25, 30, 300, 14400, 90)] == [
        "0s",  # was "0ms": `RELAY_REPLICA_TIMEOUT=0s` was told "(got 0ms)"
        "250ms",
        "30s",
        "5m",
        "4h",
        "90s",
    ]


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"RELAY_LISTEN": "nonsense"}, "RELAY_LISTEN"),
        ({"RELAY_LISTEN": "127.0.0.1:99999"}, "RELAY_LISTEN"),
        ({"RELAY_LOG_FORMAT": "xml"}, "RELAY_LOG_FORMAT"),
        ({"RELAY_LOG_LEVEL": "LOUD"}, "RELAY_LOG_LEVEL"),
        ({"RELAY_REPLICA_TIMEOUT": "soon"}, "RELAY_REPLICA_TIMEOUT"),
        ({"RELAY_REPLICA_TIMEOUT": "100ms"}, "RELAY_REPLICA_TIMEOUT"),
        ({"RELAY_CONFIG": ""}, "RELAY_CONFIG"),
        ({"RELAY_STORE_URL": " "}, "RELAY_STORE_URL"),
    ],
)
def test_bad_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert [p.path for p in info.value.problems] == [name]


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("::1:8080", "an IPv6 address goes in brackets: [::1]:8080"),
        ("[::1:8080", "an IPv6 address goes in brackets: [::1]:8080"),
        ("fe80::1", "an IPv6 address goes in brackets: [::1]:8080"),
        ("127.0.0.1:\u0663", "expected host:port, e.g. 0.0.0.0:8080"),  # Arabic-Indic 3
    ],
)
def test_a_listen_address_go_would_refuse_is_refused(
    monkeypatch: pytest.MonkeyPatch, listen: str, message: str
) -> None:
    """`::1:8080` was taken as [::1]:8080, `[::1:8080` too, `fe80::1` (port forgotten) as the
    host `fe80:` on port 1, and `127.0.0.1:٣` as port 3. Go's net.SplitHostPort (Alertmanager's
    --web.listen-address) refuses them all; relay does too, saying what to write."""
    problems = [str(p) for p in _problems(monkeypatch, {"RELAY_LISTEN": listen})]
    assert problems == [f"environment: RELAY_LISTEN: {message} (got {listen!r})"]


@pytest.mark.parametrize("value", ["0s", "0", "100ms", "2h", "7200"])
def test_a_replica_timeout_out_of_range_is_told_in_units(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """`RELAY_REPLICA_TIMEOUT=2h` was told "Input should be less than or equal to 3600", and
    `0s` "greater than or equal to 1": seconds, which it does not say, of a value written in
    hours. Now the documented range, as it is written (`1s`, `1m30s` and `1h` pass)."""
    problems = [str(p) for p in _problems(monkeypatch, {"RELAY_REPLICA_TIMEOUT": value})]
    assert len(problems) == 1
    said = {"0": "0s", "7200": "2h"}.get(value, value)  # in durations; zero is "0s", not "0ms"
    assert problems == [f"environment: RELAY_REPLICA_TIMEOUT: must be from 1s to 1h (got {said})"]
    for good, seconds in (("1s", 1.0), ("1m30s", 90.0), ("1h", 3600.0)):
        assert load_settings(replica_timeout=good).replica_timeout == seconds


_BAD_VARIABLES = [
    ("WORKERS", "abc", "expected a whole number (got 'abc')"),
    ("WORKERS", "1.5", "expected a whole number (got '1.5')"),
    ("WORKERS", "65", "must be at most 64 (got 65)"),
    ("LOG_FORMAT", "xml", "expected one of json, text (got 'xml')"),
    ("STORE_URL", " ", "empty: set the store's URL, or unset it for sqlite:///data/relay.db"),
]


@pytest.mark.parametrize(("name", "value", "said"), _BAD_VARIABLES)
def test_a_bad_variable_is_one_line_of_relays_words_with_its_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    """`RELAY_WORKERS=abc` was told pydantic's "Input should be a valid integer, unable to parse
    string as an integer", `65` "less than or equal to 64", neither with the value given. The
    store's URL (a password in it) is never quoted."""
    problems = [str(p) for p in _problems(monkeypatch, {f"RELAY_{name}": value})]
    assert problems == [f"environment: RELAY_{name}: {said}"]


def test_the_store_url_is_not_quoted_in_its_problem() -> None:
    """Its password would be in the line (a value of the wrong type, given as an override)."""
    with pytest.raises(ConfigError) as info:
        load_settings(store_url=["postgresql://relay:hunter2@127.0.0.1/relay"])
    assert [str(p) for p in info.value.problems] == [
        "environment: RELAY_STORE_URL: expected a string"
    ]


def test_an_empty_variable_is_unset_where_the_default_is_harmless(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compose's `RELAY_LOG_LEVEL: ${LOG_LEVEL}` with LOG_LEVEL unset passes an empty value:
    relay refused to start. It means the default; not for the config file or the store, where a
    default in their place would hide a broken deployment (one SQLite file per replica)."""
    for name in ("LISTEN", "LOG_FORMAT", "LOG_LEVEL", "WORKERS", "REPLICA_TIMEOUT"):
        monkeypatch.setenv(f"RELAY_{name}", " ")
    settings = load_settings()
    assert settings.listen_host_port == ("0.0.0.0", 8080)
    assert (settings.log_format, settings.log_level) == ("json", "INFO")
    assert (settings.workers, settings.replica_timeout) == (0, 15.0)
    problems = [str(p) for p in _problems(monkeypatch, {"RELAY_STORE_URL": ""})]
    assert problems == [
        "environment: RELAY_STORE_URL: empty: set the store's URL, or unset it for"
        " sqlite:///data/relay.db"
    ]


def _problems(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> list[object]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return list(info.value.problems)


def test_environment_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RELAY_LISTEN", "[::1]:9000")
    monkeypatch.setenv("RELAY_LOG_LEVEL", "debug")
    monkeypatch.setenv("RELAY_CONFIG", str(tmp_path / "x.yaml"))
    monkeypatch.setenv("RELAY_REPLICA_TIMEOUT", "1m30s")
    settings = load_settings()
    assert settings.listen_host_port == ("::1", 9000)
    assert load_settings(listen="[127.0.0.1]:80").listen_host_port == ("127.0.0.1", 80)
    assert load_settings(listen=":8080").listen_host_port == ("*", 8080)  # Go's every address
    assert settings.replica_timeout == 90.0
    assert settings.log_level == "DEBUG"
    assert settings.config_explicit
    monkeypatch.setenv("RELAY_LISTEN", " 127.0.0.1:0\n")  # from a .env file or a YAML block
    monkeypatch.setenv("RELAY_LOG_LEVEL", "warn")  # Alertmanager's word
    monkeypatch.setenv("RELAY_LOG_FORMAT", " Text ")
    monkeypatch.setenv("RELAY_STORE_URL", "PostgreSQL://relay@db:5432/Relay\n")  # a secret file
    settings = load_settings()
    assert settings.store_url == "postgresql://relay@db:5432/Relay"  # was database "relay\n"
    assert settings.listen_host_port == ("127.0.0.1", 0)
    assert (settings.log_level, settings.log_format) == ("WARNING", "text")


@pytest.mark.parametrize(("value", "level"), [("critical", "CRITICAL"), ("FATAL", "CRITICAL")])
def test_pythons_highest_log_level_is_a_level(
    monkeypatch: pytest.MonkeyPatch, value: str, level: str
) -> None:
    """RELAY_LOG_LEVEL=CRITICAL, Python logging's own level (FATAL its alias), was "expected one
    of DEBUG, INFO, WARNING, ERROR": relay refused to start for a quieter log."""
    monkeypatch.setenv("RELAY_LOG_LEVEL", value)
    assert load_settings().log_level == level


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${UNSET:-${B}}", "b"),  # a default that is a reference itself, as in a shell or Compose
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${A:-${ALSO_UNSET}}", "a"),  # a default not used is not looked at
        ("${UNSET:-a:b c}", "a:b c"),
        ("${EMPTY:-fallback}/${EMPTY}", "fallback/"),
        ("$${A} costs 5$ or $A", "${A} costs 5$ or $A"),
        ("costs 5$$", "costs 5$"),  # $$ after other text
        ("${UNSET:-$${A}}", "${A}"),  # a default with a literal ${ in it
        ("${UNSET:-$${}", "${"),
        ("${A:-${}x}/y", "a/y"),  # nor one that could not be read
        ("${UNSET:-$$}/x", "$/x"),
        ("${U:-" * 8 + "deep" + "}" * 8, "deep"),  # nested 8 deep: the most taken
        ("${RAW}", "x${B}$$y"),  # a value from the environment is never interpolated again
    ],
)
def test_interpolation(value: str, expected: str) -> None:
    text = f'channels:\n  h: {{type: webhook, url: "http://127.0.0.1:9/", headers: {{X: "{value}"}}}}\n'
    env = {"A": "a", "B": "b", "EMPTY": "", "RAW": "x${B}$$y"}
    loaded = parse_config(text, "c.yaml", settings_models(), env)
    headers = getattr(loaded.config.channels["h"], "headers")
    assert headers["X"].get_secret_value() == expected


def test_a_default_may_span_lines() -> None:
    """A YAML block scalar's `${KEY:-...}` default of several lines (a PEM key) is one default."""
    assert interpolate("${UNSET:-line one\nline two}", {}) == Interpolated("line one\nline two")


@pytest.mark.parametrize(
    ("value", "message"),
    [  # Compose's other forms, typos: an error, not a literal "${...}" sent as a token
        ("${TOKEN-default}", "not a variable reference"),
        ("${TOKEN:?required}", "not a variable reference"),
        ("${ TOKEN }", "not a variable reference"),
        ("${1TOKEN}", "not a variable reference"),
        ("sk_${TOKEN", "`${` without its closing `}`"),
        ("${UNSET:-${ALSO_UNSET}}", "environment variable ALSO_UNSET is not set"),
        ("${U:-" * 50 + "x" + "}" * 50, "references nested more than 8 deep"),  # no RecursionError
        ("${U:-" * 9 + "x" + "}" * 9, "references nested more than 8 deep"),
        ("tok${", "`${` without its closing `}`"),
        ("${U:-${}}", "not a variable reference"),
    ],
)
def test_a_reference_relay_cannot_read_is_a_problem(value: str, message: str) -> None:
    found = problems(f'server:\n  auth_token: "{value}"\n', {"TOKEN": "s3cr3t-value"})
    assert len(found) == 1 and found[0].startswith(f"c.yaml:2: server.auth_token: {message}")
    assert "s3cr3t" not in found[0] and "TOKEN" not in found[0].replace("ALSO_UNSET", "")


@pytest.mark.parametrize("text", ["", "# channels and rules to come\n"])
def test_a_file_of_no_yaml_is_the_defaults(text: str) -> None:
    config = parse_config(text, "c.yaml", settings_models(), {}).config
    assert (config.server.max_body_bytes, config.rules) == (1024 * 1024, [])


_MIB = 1024 * 1024
# a top-level key no spelling is near: the keys that level takes are named
UNKNOWN_X = (
    "c.yaml:1: x: unknown key; known here: server, sources, channels, templates, rules,"
    " defaults, time_intervals, inhibit_rules"
)


@pytest.mark.parametrize(
    ("text", "problem"),
    [  # each limit on the YAML, at its edge: as much as is read, then one more
        ("x: " + "[" * 64 + "]" * 64, UNKNOWN_X),
        (
            "x: " + "[" * 65 + "]" * 65,
            "c.yaml:1: nested deeper than 64 levels (or a recursive alias)",
        ),
        ("x: [" + "1," * 99_998 + "]", UNKNOWN_X),  # 100,000 nodes
        ("x: [" + "1," * 99_999 + "]", "c.yaml: more than 100000 YAML nodes"),
        ("x: 1 #" + "." * (4 * _MIB - 7), UNKNOWN_X),  # 4 MiB
        ("x: 1 #" + "." * (4 * _MIB - 6), "c.yaml: file larger than 4194304 bytes"),
    ],
    ids=["64 levels", "65 levels", "100000 nodes", "100001 nodes", "4 MiB", "4 MiB + 1"],
)
def test_the_limits_of_a_yaml_file_are_exact(text: str, problem: str) -> None:
    assert problems(text + "\n") == [problem]


def test_a_key_written_after_a_merge_is_named_where_it_is_written() -> None:
    """The mapping's own key, over a merged one, and the last of a key written twice (after a
    merge in the file), each named at its own line."""
    text = (
        "channels:\n"
        "  a: &hook {type: webhook, url: 'http://127.0.0.1:9/a', timeout: 5s}\n"
        "  b:\n    <<: *hook\n    timeout: -1s\n"
        "  c:\n    type: console\n    timeout: 1s\n    timeout: -2s\n"
    )
    assert problems(text) == [
        "c.yaml:5: channels.b.timeout: a duration cannot be negative (got -1s)",
        "c.yaml:9: channels.c.timeout: duplicate key",
        "c.yaml:9: channels.c.timeout: a duration cannot be negative (got -2s)",
    ]


def test_x_keys_hold_what_anchors_share_and_other_unknown_keys_stay_errors() -> None:
    """Docker Compose's extension fields: `x-…` at the top holds a channel's settings for the
    channels to alias; relay does not read it itself (it said `x-hook: unknown key`)."""
    text = (
        "x-hook: &hook {type: webhook, url: 'http://127.0.0.1:9/a', timeout: 5s}\n"
        "channels:\n  a: *hook\n  b: {<<: *hook, timeout: 1s}\n"
    )
    channels = parse_config(text, "c.yaml", settings_models(), {}).config.channels
    assert {name: c.timeout for name, c in channels.items()} == {"a": 5.0, "b": 1.0}
    assert problems("x_hook: 1\nx-ok: [1]\n") == [UNKNOWN_X.replace(" x:", " x_hook:")]
    assert problems("channels: {a: {type: console, x-note: 1}}\n") == [
        "c.yaml:1: channels.a.x-note: unknown key; known here: type, timeout, concurrency,"
        " rate_limit, send_resolved"
    ]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (  # the keys after it are read; those it may have meant are not called missing
            "channels: {c: {type: console}}\nrules:\n  - {? [name] : a, notify: [c], bogus: 1}\n",
            [
                "c.yaml:3: mapping keys must be plain scalars",
                "c.yaml:3: rules[0].bogus: unknown key; known here: name, match, when, notify,"
                " template, continue, group_by, group_wait, group_interval, repeat_interval,"
                " mute_time_intervals, active_time_intervals, update_on_recovery",
            ],
        ),
        ("\n- 1\n- 2\n", ["c.yaml:2: the top level must be a mapping"]),
        ("x: " + "[" * 3000 + "]" * 3000, ["c.yaml: invalid YAML: nested too deeply"]),
    ],
)
def test_a_problem_of_the_yaml_itself_is_said_once_at_its_line(text: str, found: list[str]) -> None:
    assert problems(text) == found


@pytest.mark.parametrize(
    ("name", "reason"), [("dir", "Is a directory"), ("bytes.yaml", "not valid UTF-8")]
)
def test_a_config_that_cannot_be_read_says_why(tmp_path: Path, name: str, reason: str) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "bytes.yaml").write_bytes(b"server: {auth_token: \xff}\n")
    checked = run_cli_in_process("check", str(tmp_path / name))
    assert checked.returncode == 1
    assert checked.stderr.splitlines()[0] == f"{tmp_path / name}: cannot read config: {reason}"


def test_a_section_left_empty_has_its_defaults() -> None:
    """`server:` with every line below it commented out is null in YAML: the section's
    defaults, as `channels:` already was (and Alertmanager's `global:` is)."""
    text = "server:\n  # auth_token: ${TOKEN}\nsources:\ntemplates:\ndefaults: ~\nrules:\n"
    config = parse_config(text, "c.yaml", settings_models(), {}).config
    assert (config.server.max_body_bytes, config.rules) == (1024 * 1024, [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: 5\n", "c.yaml:1: server: expected a mapping of keys and values"),
        ("rules: [5]\n", "c.yaml:1: rules[0]: expected a mapping of keys and values"),
        ("templates: {dir: 5}\n", "c.yaml:1: templates.dir: expected a path"),
        (  # not the token that lets `{a: ${X}}` parse as YAML, as a metadata path
            "channels: {c: {type: console}}\nrules:\n  - name: a\n"
            "    match: {metadata: {${KEY}: v}}\n    notify: [c]\n",
            "c.yaml:4: keys are not substituted: write ${...} in values only",
        ),
        (
            "rules: []\n---\nrules: []\n",
            "c.yaml:2: invalid YAML: expected a single document in the stream, but found another"
            " document",
        ),
    ],
)
def test_problems_are_worded_for_operators(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_unset_variable_is_reported_once() -> None:
    text = "channels:\n  h:\n    type: webhook\n    url: ${HOOK_URL}\n"
    assert problems(text) == ["c.yaml:4: channels.h.url: environment variable HOOK_URL is not set"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # not also `set secret (or secrets)`: the secret is written, its variable unset
            "sources:\n  trigger_alerts:\n    secret: ${ALERT_SECRET}\n",
            "c.yaml:3: sources.trigger_alerts.secret: environment variable ALERT_SECRET is not set",
        ),
        (  # not also `an empty tag`: the tag is written, its variable unset
            "channels: {c: {type: console}}\nrules:\n  - name: a\n"
            "    match: {tags: {any: ['${TAG}']}}\n    notify: [c]\n",
            "c.yaml:4: rules[0].match.tags.any[0]: environment variable TAG is not set",
        ),
    ],
)
def test_an_unset_variable_is_not_reported_again_by_its_section(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_references_are_checked_even_when_the_schema_fails() -> None:
    text = (
        "server: {bogus: 1}\nchannels: {c: {type: console}}\n"
        "rules:\n  - {name: a, notify: [c]}\n  - {name: a, notify: [x]}\n"
    )
    found = problems(text)
    assert any("rules[1].name: duplicate rule name" in p for p in found), found
    assert any("rules[1].notify[0]: unknown channel 'x'" in p for p in found), found


def assert_lines_start(found: list[str], expected: list[str]) -> None:
    """One line of `found` per entry of `expected`, in order, each starting with it."""
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), found


def test_problems_and_warnings_come_in_file_order_alike() -> None:
    """`relay check` tells its problems as its warnings: by file, then line (10 after 9), each
    once; one without a line (the file as a whole) after them. Problems told it first."""
    told = [
        Problem("c.yaml:10", "rules[1]", "x"),
        Problem("c.yaml", "", "the whole file"),
        Problem("c.yaml:9", "rules[0]", "y"),
        Problem("c.yaml:10", "rules[1]", "x"),
    ]
    in_order = [told[2], told[0], told[1]]
    assert in_file_order(told) == in_order
    assert in_file_order([str(p) for p in told]) == [str(p) for p in in_order]


# One problem of each kind, each in its own place: one `relay check` names them all, in line order.
EVERY_KIND = """\
server:
  auth_token: ${CHECK_ALL_UNSET_TOKEN}
channels:
  out: {type: console}
  chat:
    type: slack
    webhook_url: ${CHECK_ALL_SLACK_URL}
    concurrency: lots
  hook:
    type: webhook
    url: https://example.com/hook
    headers:
      webhook-id: x
      Content-Type: text/plain
rules:
  - name: first
    match: {event: bogus}
    notify: [out]
  - name: first
    runn: true
    notify: [out]
  - name: slow
    when: "run.durationMs >"
    notify: [out]
  - name: mine
    template: no_such_template
    notify: [out]
  - name: billing
    match: {task_regex: "("}
    notify: [nowhere]
  - name: to-the-broken-channel
    notify: [chat]
"""


def test_check_reports_every_kind_of_problem_in_one_run(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(EVERY_KIND)
    slack_url = "https://hooks.slack.com/services/T0/B0/never-printed"
    result = run_cli_in_process(
        "check", "--config", str(config), env={"CHECK_ALL_SLACK_URL": slack_url}
    )
    expected = [
        "2: server.auth_token: environment variable CHECK_ALL_UNSET_TOKEN is not set",
        "8: channels.chat.concurrency: expected a whole number",
        "13: channels.hook.headers.webhook-id: header webhook-id is set by relay",
        "14: channels.hook.headers.Content-Type: header Content-Type is set by relay",
        "17: rules[0].match.event: unknown event; use one of run,",
        "19: rules[1].name: duplicate rule name",
        "20: rules[1].runn: unknown key",
        "23: rules[2].when: invalid expression: unexpected 'end of template'",
        "26: rules[3].template: console: template console/no_such_template.txt.j2 not found",
        "29: rules[4].match.task_regex: invalid regex: missing ), unterminated subpattern",
        "30: rules[4].notify[0]: unknown channel 'nowhere'",
    ]
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    *lines, total = result.stderr.splitlines()
    assert_lines_start(lines, [f"{config}:{want}" for want in expected])
    assert total == f"{len(expected)} problems found"
    assert slack_url not in result.stderr and "never-printed" not in result.stderr


def test_load_checks_rules_beside_schema_problems_but_not_into_a_broken_part(
    tmp_path: Path,
) -> None:
    """configure.load (check, serve, reload) adds the problems of the valid rules' expressions
    and templates; a template is not looked for in a templates.dir that is itself invalid."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "defaults: {timeout: soon}\nchannels: {out: {type: console}}\nrules:\n"
        "  - {name: a, notify: [out], when: 'nope > 1'}\n"
        "  - {name: b, notify: [out], template: missing}\n"
    )
    broken_dir = tmp_path / "broken.yaml"
    broken_dir.write_text(
        "templates: {dir: [x]}\nchannels: {out: {type: console}}\n"
        "rules:\n  - {name: b, notify: [out], template: mine}\n"
    )
    with pytest.raises(ConfigError) as info:
        load(load_settings(), config)
    found = [str(p) for p in info.value.problems]
    assert_lines_start(
        found,
        [
            f"{config}:1: defaults.timeout: expected a duration",
            f"{config}:4: rules[0].when: invalid expression: unknown name `nope`",
            f"{config}:5: rules[1].template: console: template console/missing.txt.j2 not found",
        ],
    )
    with pytest.raises(ConfigError) as info:
        load(load_settings(), broken_dir)
    found = [str(p) for p in info.value.problems]
    assert_lines_start(found, [f"{broken_dir}:1: templates.dir: "])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # an unknown key in a match hides not the bad status beside it
            "rules:\n  - name: a\n    notify: [c]\n    match:\n      runn: 1\n"
            "      status: [FAILED, 5]\nchannels: {c: {type: console}}\n",
            ["c.yaml:5: rules[0].match.runn: unknown key", "c.yaml:6: rules[0].match.status"],
        ),
        (  # an unreadable value, a bad merge: the rest is still read and checked
            "a: !!bool maybe\nx: &x {b: 1}\nserver: {<<: *x, bogus: 1}\nsources: {<<: [1]}\n",
            [
                "c.yaml:1: cannot read this value",
                "c.yaml:2: x: unknown key",
                "c.yaml:2: server.b: unknown key",  # merged: named where it is written
                "c.yaml:3: server.bogus: unknown key",
                "c.yaml:4: a merge key (<<) takes a mapping, or a list of mappings",
            ],
        ),
        (  # names are not looked up in a section that is itself invalid
            "channels: [c]\ntime_intervals: 5\n"
            "rules:\n  - {name: a, notify: [c], mute_time_intervals: [night]}\n",
            [
                "c.yaml:1: channels: must be a mapping of name to channel",
                "c.yaml:2: time_intervals: expected a list: [a, b], or one `- item` a line",
            ],
        ),
    ],
)
def test_a_problem_hides_no_other(text: str, expected: list[str]) -> None:
    assert_lines_start(problems(text), expected)


TOKENS = """\
server: {auth_token: "tok\\n", admin_token: " adm\\r\\n"}
sources:
  trigger_alerts: {secrets: [ok, " padded\\n"]}
  realtime: {secret_key: " tr_prod_abc\\r\\n", feeds: [{tags: [a]}]}
channels: {s: {type: slack, token: "xoxb-1\\n", channel: "#x"}}
"""


def test_tokens_read_with_their_trailing_newline_are_used_without_it() -> None:
    """A token or key from a file or a Kubernetes secret ends with a newline: every POST got
    401, every alert webhook 401, and every Realtime or Slack request raised ValueError (no
    header carries one). Trimmed, as Prometheus trims its credentials files."""
    config = parse_config(TOKENS, "c.yaml", settings_models(), {}).config
    server, sources = config.server, config.sources
    assert server.auth_token is not None and server.admin_token is not None
    assert sources.trigger_alerts is not None and sources.realtime is not None
    slack = config.channels["s"]
    values = [
        server.auth_token,
        server.admin_token,
        *sources.trigger_alerts.all_secrets(),
        sources.realtime.secret_key,
        getattr(slack, "token"),
    ]
    got = [v.get_secret_value() for v in values]
    assert got == ["tok", "adm", "ok", "padded", "tr_prod_abc", "xoxb-1"]


def checked(tmp_path: Path, text: str) -> list[str]:
    """What `relay check` finds in `text` (schema, names, expressions, templates), file:line
    without the directory."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(load_settings(), config)
    return [str(p).removeprefix(f"{tmp_path}/") for p in info.value.problems]


# Each config has independent problems in different places: all are named in one pass, in line
# order, each once, and none that only follows from another (a value left out or unset).
UNMASKED = [
    (  # a bad match hides not the rule's `when`, template, timing or time intervals
        "channels: {c: {type: console}}\nrules:\n  - name: a\n    match: {event: bogus}\n"
        "    when: 'run.x >'\n    template: nope\n    group_wait: 5s\n"
        "    mute_time_intervals: [nosuch]\n    notify: [c]\n",
        [
            "c.yaml:3: rules[0]: group_* options need `group_by`",
            "c.yaml:4: rules[0].match.event: unknown event",
            "c.yaml:5: rules[0].when: invalid expression: unexpected 'end of template'",
            "c.yaml:6: rules[0].template: console: template console/nope.txt.j2 not found",
            "c.yaml:8: rules[0].mute_time_intervals[0]: unknown time interval 'nosuch'",
        ],
    ),
    (  # a bad regex, an unknown key, a missing name: the rest of the rule is still checked
        "channels: {c: {type: console}}\nrules:\n"
        "  - {match: {task_regex: '('}, runn: 1, when: 'nope', template: nope, notify: [c]}\n",
        [
            "c.yaml:3: rules[0].name: required key is missing",
            "c.yaml:3: rules[0].match.task_regex: invalid regex",
            "c.yaml:3: rules[0].runn: unknown key",
            "c.yaml:3: rules[0].when: invalid expression: unknown name `nope`",
            "c.yaml:3: rules[0].template: console: template console/nope.txt.j2 not found",
        ],
    ),
    (  # a match that is no mapping, a rule that is none: the other rules' keys are checked
        "channels: {c: {type: console}}\nrules:\n  - 5\n"
        "  - {name: b, notify: [c], match: 5, when: 'y >'}\n",
        [
            "c.yaml:3: rules[0]: expected a mapping of keys and values",
            "c.yaml:4: rules[1].match: expected a mapping of keys and values",
            "c.yaml:4: rules[1].when: invalid expression",
        ],
    ),
    (  # an unknown event: the statuses it would explain are not called unknown
        "channels: {c: {type: console}}\nrules:\n  - name: a\n"
        "    match: {event: deploymnet.failed, status: [DEPLOYED]}\n    when: 'run >'\n"
        "    notify: [c]\n",
        [
            "c.yaml:4: rules[0].match.event: unknown event",
            "c.yaml:5: rules[0].when: invalid expression",
        ],
    ),
    (  # a channel with invalid options: its rules' templates are checked for its type, and it
        # is no unknown channel
        "channels:\n  s: {type: slack, webhook_url: notaurl}\n"
        "rules:\n  - {name: a, notify: [s], template: nope, when: 'run >'}\n",
        [
            "c.yaml:2: channels.s.webhook_url: webhook_url must be an https:// URL",
            "c.yaml:4: rules[0].when: invalid expression",
            "c.yaml:4: rules[0].template: slack: template slack/nope.json.j2 not found",
        ],
    ),
    (  # an unset variable is its only problem: not a bad expression, an unknown channel or
        # channel type, a duplicate name, an unknown time interval, a missing template
        "channels:\n  c: {type: '${UNMASK_UNSET_TYPE}'}\n  d: {type: console}\n"
        "time_intervals:\n  - {name: '${UNMASK_UNSET_TI}', time_intervals: [{weekdays: [monday]}]}\n"
        "rules:\n"
        "  - {name: '${UNMASK_UNSET_A}', notify: [c, d, '${UNMASK_UNSET_C}'],"
        " mute_time_intervals: [other]}\n"
        "  - {name: '${UNMASK_UNSET_B}', notify: [d], when: 'run.durationMs > ${UNMASK_UNSET_W}',"
        " template: '${UNMASK_UNSET_T}'}\n",
        [
            "c.yaml:2: channels.c.type: environment variable UNMASK_UNSET_TYPE is not set",
            "c.yaml:5: time_intervals[0].name: environment variable UNMASK_UNSET_TI is not set",
            "c.yaml:7: rules[0].name: environment variable UNMASK_UNSET_A is not set",
            "c.yaml:7: rules[0].notify[2]: environment variable UNMASK_UNSET_C is not set",
            "c.yaml:8: rules[1].name: environment variable UNMASK_UNSET_B is not set",
            "c.yaml:8: rules[1].when: environment variable UNMASK_UNSET_W is not set",
            "c.yaml:8: rules[1].template: environment variable UNMASK_UNSET_T is not set",
        ],
    ),
    (  # an unknown key beside templates.dir: the rules' templates are still looked for
        "templates: {dir: ./t, bogus: 1}\nchannels: {c: {type: console}}\n"
        "rules:\n  - {name: a, notify: [c], template: nope}\n",
        [
            "c.yaml:1: templates.bogus: unknown key",
            "c.yaml:4: rules[0].template: console: template console/nope.txt.j2 not found",
        ],
    ),
    (  # an unset templates.dir: no template is looked for where it would have been
        "templates: {dir: '${UNMASK_UNSET_DIR}'}\nchannels: {c: {type: console}}\n"
        "rules:\n  - {name: a, notify: [c], template: mine, when: 'run >'}\n",
        [
            "c.yaml:1: templates.dir: environment variable UNMASK_UNSET_DIR is not set",
            "c.yaml:4: rules[0].when: invalid expression",
        ],
    ),
    (  # a bad time interval hides not a duplicate name, nor a rule naming no interval
        "time_intervals:\n  - {name: night, time_intervals: [{weekdays: [funday]}]}\n"
        "  - {name: day, time_intervals: [{weekdays: [monday]}]}\n"
        "  - {name: day, time_intervals: [{weekdays: [monday]}]}\n"
        "channels: {c: {type: console}}\n"
        "rules:\n  - {name: a, notify: [c], mute_time_intervals: [nosuch, night]}\n",
        [
            "c.yaml:2: time_intervals[0].time_intervals[0].weekdays: invalid weekday 'funday'",
            "c.yaml:4: time_intervals[2].name: duplicate name",
            "c.yaml:7: rules[0].mute_time_intervals[0]: unknown time interval 'nosuch'",
        ],
    ),
    (  # a bad inhibit rule or rule hides not the others' references; one that names a rule
        # with a problem is checked against what of it is known
        "inhibit_rules:\n  - {name: x, bogus: 1}\n"
        "  - {name: y, source_digest: {rule: nosuch, min_count: 2}}\n"
        "  - {name: z, source_digest: {rule: broken, min_count: 2}, equal: [x]}\n"
        "  - {name: w, source_digest: {rule: unknown-group, min_count: 2}, equal: [x]}\n"
        "channels: {c: {type: console}}\n"
        "rules:\n  - {name: broken, match: {event: nope}, group_by: [a], notify: [c]}\n"
        "  - {name: unknown-group, group_by: 5, notify: [c]}\n",
        [
            "c.yaml:2: inhibit_rules[0].bogus: unknown key",
            "c.yaml:3: inhibit_rules[1].source_digest.rule: unknown rule: 'nosuch'",
            "c.yaml:4: inhibit_rules[2].equal[0]: not in the `group_by` of rule 'broken'",
            "c.yaml:8: rules[0].match.event: unknown event",
            "c.yaml:9: rules[1].group_by: expected a list: [a, b], or one `- item` a line",
        ],
    ),
    (  # a key with ${...} is not also an unknown key; a merge key that merged nothing may
        # have given the keys that seem missing; an unreadable `when` is not read as none
        "base: &b {notify: [c]}\nchannels: {c: {type: console}}\nrules:\n"
        "  - {name: a, notify: [c], '${K}': 1, when: 'x >'}\n"
        "  - {<<: [*b, 1], name: b, when: 'y >'}\n"
        "  - {name: c, notify: [c], when: !!bool maybe, template: nope}\n",
        [
            "c.yaml:1: base: unknown key",
            "c.yaml:4: keys are not substituted",
            "c.yaml:4: rules[0].when: invalid expression",
            "c.yaml:5: a merge key (<<) takes a mapping, or a list of mappings",
            "c.yaml:5: rules[1].when: invalid expression",
            "c.yaml:6: cannot read this value",
            "c.yaml:6: rules[2].template: console: template console/nope.txt.j2 not found",
        ],
    ),
    (  # a duplicate key: the value read is checked all the same
        "channels: {c: {type: console}}\nchannels: {d: {type: console, bogus: 1}}\n"
        "rules:\n  - name: a\n    notify: [c]\n    notify: [d]\n    when: 'x >'\n",
        [
            "c.yaml:2: channels: duplicate key",
            "c.yaml:2: channels.d.bogus: unknown key",
            "c.yaml:6: rules[0].notify: duplicate key",
            "c.yaml:7: rules[0].when: invalid expression",
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), UNMASKED)
def test_a_problem_masks_no_other_in_one_check(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    assert_lines_start(checked(tmp_path, text), expected)


YAML_TRAPS = [
    "metadata: {region: no, on: yes}\nwindow: [17:00, 1:5]\nquoted: 'no'\n",
    "a: 1\na: 2\n",
    "base: &b {x: 1}\nother:\n  <<: *b\n",
    "bomb: &a [*a]\n",
    "secret: !x9!y\n",
    "password: *x9\n",
    "n: !!int ''\nt: !!timestamp x\nk: !!python/name:os.system x\n",
    "a: 1\n  b: 2\n",
    "a: [1, 2\n",
    "a: 1\n---\nb: 2\n",
    "key: ${X}\n${X}: 1\n",
    "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 9)}]\n" for i in range(7)),
    "".join(  # merges of merges: as many nodes walked, the same bound
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}' if i else '{x: 1}'] * 9)}], k{i}: 1}}\n"
        for i in range(7)
    ),
]


def test_merge_keys_share_settings_as_alertmanager_and_kubernetes_read_them(
    tmp_path: Path,
) -> None:
    """`<<: *base` (YAML 1.1's merge key, which Alertmanager's and Kubernetes' loaders read) was
    refused: channels and rules that share settings had to repeat them. The mapping's own keys
    win over merged ones, the first of a list of merged mappings over the next; a problem in a
    merged key is named at the line where it is written."""
    text = (
        "channels:\n"
        "  a: &hook {type: webhook, url: 'http://127.0.0.1:9/a', timeout: 5s}\n"
        "  b: {<<: *hook, url: 'http://127.0.0.1:9/b'}\n"
        "  c:\n"
        "    <<: [*hook, {timeout: 9s, concurrency: 2}]\n"
        "rules:\n"
        "  - &failing {name: failing, match: {status: failure}, notify: [a]}\n"
        "  - {<<: *failing, name: failing-b, notify: [b, c]}\n"
    )
    config = parse_config(text, "c.yaml", settings_models(), {}).config
    hooks = {name: config.channels[name] for name in "abc"}
    assert [getattr(h, "url").get_secret_value() for h in hooks.values()] == [
        "http://127.0.0.1:9/a",
        "http://127.0.0.1:9/b",
        "http://127.0.0.1:9/a",
    ]
    assert [(h.timeout, h.concurrency) for h in hooks.values()] == [(5.0, 16), (5.0, 16), (5.0, 2)]
    assert [(r.name, r.notify, r.match.status) for r in config.rules] == [
        ("failing", ["a"], ["failure"]),
        ("failing-b", ["b", "c"], ["failure"]),
    ]
    bad = text.replace("timeout: 5s}", "timeout: soon}")
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, "c.yaml", settings_models(), {})
    found = sorted(": ".join(str(p).split(": ")[:2]) for p in caught.value.problems)
    assert found == [
        "c.yaml:2: channels.a.timeout",
        "c.yaml:2: channels.b.timeout",
        "c.yaml:2: channels.c.timeout",
    ]


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
@pytest.mark.parametrize("text", YAML_TRAPS)
def test_libyaml_reads_a_config_as_pyyaml_s_own_parser_does(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libyaml composes a large config faster; what relay reads and refuses stays the same:
    plain yes/no and 17:00 as text, duplicate and merge keys, aliases, tags, syntax errors
    with their file:line and PyYAML's words."""
    fast = yamlconf.load_yaml(text, "c.yaml", {"X": "1"})
    monkeypatch.setattr(yamlconf, "_FAST_LOADER", None)
    own = yamlconf.load_yaml(text, "c.yaml", {"X": "1"})
    assert (fast.data, fast.problems, fast.lines) == (own.data, own.problems, own.lines)


def test_the_config_hash_follows_the_config_and_not_its_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`relay_config_hash` (as Alertmanager's config_hash) tells replicas running different
    configs apart: a rule, or a value from the environment, changes it; a secret alone (a
    signing secret, a URL, which may carry a token) does not: secrets are masked before the
    digest, so nothing of one reaches /metrics."""
    text = (
        "channels:\n  hook: {type: webhook, url: '${HOOK_URL}', secret: '${HOOK_SECRET}'}\n"
        "rules:\n  - {name: r, match: {status: %s, task: '${TASK}'}, notify: [hook]}\n"
    )

    def digest(status: str, url: str, secret: str, task: str = "billing/*") -> int:
        monkeypatch.setenv("TASK", task)
        monkeypatch.setenv("HOOK_URL", url)
        monkeypatch.setenv("HOOK_SECRET", secret)
        path = tmp_path / "c.yaml"
        path.write_text(text % status)
        return config_hash(compile_config(load(load_settings(), path)))

    base = digest("failure", "https://a.example/h", "whsec_" + "QUJD" * 8)
    assert digest("failure", "https://a.example/h", "whsec_" + "REVG" * 8) == base
    assert digest("failure", "https://b.example/h", "whsec_" + "QUJD" * 8) == base
    assert digest("failure", "https://a.example/h", "whsec_" + "QUJD" * 8, "sync/*") != base
    assert digest("CRASHED", "https://a.example/h", "whsec_" + "QUJD" * 8) != base
    assert 0 < base < 2**52


def test_the_config_hash_does_not_follow_where_the_files_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas with the same config and templates, mounted at different paths (or named
    by a relative and an absolute RELAY_CONFIG), run the same config: RelayConfigInconsistent
    must not fire for them. What the templates say still counts."""
    text = "templates: {dir: ./tpl}\nchannels:\n  c: {type: console}\n"
    text += "rules:\n  - {name: r, notify: [c]}\n"
    for where in ("a", "b"):
        (tmp_path / where / "tpl" / "console").mkdir(parents=True)
        (tmp_path / where / "tpl" / "console" / "run_failed.txt.j2").write_text("{{ run.id }}")
        (tmp_path / where / "c.yaml").write_text(text)

    def digest(path: Path) -> int:
        return config_hash(compile_config(load(load_settings(), path)))

    base = digest(tmp_path / "a" / "c.yaml")
    assert digest(tmp_path / "b" / "c.yaml") == base
    monkeypatch.chdir(tmp_path)
    assert digest(Path("a/c.yaml")) == base
    (tmp_path / "b" / "tpl" / "console" / "run_failed.txt.j2").write_text("{{ run.status }}")
    assert digest(tmp_path / "b" / "c.yaml") != base


def test_the_config_hash_reads_a_kubernetes_config_map_as_its_templates(tmp_path: Path) -> None:
    """A ConfigMap volume holds its files in a directory named by the time the kubelet wrote
    it (`..2026_12_05_08_00_00.123`), reached through `..data` and one symlink per top entry:
    each pod has its own time. Replicas mounting one ConfigMap run the same templates, and
    the digest is that of the same files laid out plainly."""
    text = "templates: {dir: ./tpl}\nchannels:\n  c: {type: console}\n"
    text += "rules:\n  - {name: r, notify: [c]}\n"

    def digest(where: str, written: str | None, body: str = "{{ run.id }}") -> int:
        root = tmp_path / where
        tpl = root / "tpl"
        files = tpl / written if written is not None else tpl
        (files / "console").mkdir(parents=True)
        (files / "console" / "run.txt.j2").write_text(body)
        if written is not None:  # the ConfigMap layout
            (tpl / "..data").symlink_to(written)
            (tpl / "console").symlink_to("..data/console")
        (root / "c.yaml").write_text(text)
        return config_hash(compile_config(load(load_settings(), root / "c.yaml")))

    plain = digest("plain", None)
    assert digest("pod1", "..2026_12_05_08_00_00.1") == plain
    assert digest("pod2", "..2026_12_05_08_00_07.2") == plain
    assert digest("pod3", "..2026_12_05_08_00_07.3", "{{ run.status }}") != plain


def test_a_template_some_channel_types_lack_says_which_have_it(tmp_path: Path) -> None:
    """`template: alertmanager` (a webhook body) notifying a console channel failed with a bare
    "not found": the error now says which types have it, for any template (a shipped one or
    one of templates.dir); a name no type has is said as before."""
    (tmp_path / "t" / "discord").mkdir(parents=True)
    (tmp_path / "t" / "discord" / "mine.json.j2").write_text('{"content": "x"}')
    text = (
        "templates: {dir: ./t}\n"
        "channels: {c: {type: console}, h: {type: webhook, url: 'https://example.com/h'}}\n"
        "rules:\n"
        "  - {name: a, template: alertmanager, notify: [c, h]}\n"
        "  - {name: b, template: mine, notify: [c]}\n"
        "  - {name: c, template: nowhere, notify: [c]}\n"
    )
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        compile_config(load(load_settings(), tmp_path / "c.yaml"))
    assert [str(p).removeprefix(f"{tmp_path}/") for p in info.value.problems] == [
        "c.yaml:4: rules[0].template: console: template console/alertmanager.txt.j2 not found:"
        " alertmanager exists for webhook only",
        "c.yaml:5: rules[1].template: console: template console/mine.txt.j2 not found: mine"
        " exists for discord only",
        "c.yaml:6: rules[2].template: console: template console/nowhere.txt.j2 not found",
    ]
