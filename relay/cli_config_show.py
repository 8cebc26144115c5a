"""`relay config show` and `relay config routes`: the config a relay would run, as amtool's
`config show` and `config routes` print Alertmanager's. Read and checked as `relay check`
reads it (a config with a problem is refused the same way); nothing is sent or stored. The
routes are the rules' order, conditions and channels, none of the secrets a `${VAR}` usually
holds: an unset one is a note and a placeholder, as in `relay test`, so that the routes of a
service read on a laptop without its secrets."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import orjson

from relay.cli_config import compiled_config
from relay.cli_store import print_table, said_whole, wants_json
from relay.settings import Settings

if TYPE_CHECKING:
    from relay.config import Config

# The config's modules (and jinja2, pyyaml) are imported by these commands only: the commands on
# the store start without them (tests/test_cli.py).


def cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    import yaml  # noqa: PLC0415

    from relay.config_show import shown  # noqa: PLC0415

    data = shown(_config(args, settings))
    if wants_json(args):
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None))
    return 0


def cmd_config_routes(args: argparse.Namespace, settings: Settings) -> int:
    from relay.config_show import routes  # noqa: PLC0415

    views = routes(_config(args, settings, sends=False))
    if said_whole(views, as_json=wants_json(args), none="no rules: nothing is ever sent"):
        return 0
    print("Rules are tried in this order; the first that matches wins, `continue` goes on.")
    rows = [
        [
            str(v["number"]),
            v["name"],
            ", ".join(v["event"]),
            "; ".join(v["conditions"]) or "(any)",
            ", ".join(v["notify"]),
            "continue" if v["continue"] else "stop",
            _digest(v),
        ]
        for v in views
    ]
    print_table(["#", "RULE", "EVENT", "MATCH", "NOTIFY", "THEN", "DIGEST"], rows, right={0})
    return 0


def _digest(view: dict[str, object]) -> str:
    group_by = view.get("group_by")
    if not isinstance(group_by, list):
        return "-"
    return f"by {', '.join(group_by) or '(all)'}, after {view['group_wait']}"


def _config(args: argparse.Namespace, settings: Settings, *, sends: bool = True) -> Config:
    """The config file's (or the built-in default, said on stderr), read and checked as by
    `relay check`: a ConfigError names every problem (with `sends` False, not unset variables:
    see compiled_config)."""
    compiled = compiled_config(args, settings, sends=sends)
    if compiled.loaded.builtin:
        print("note: no config file found; this is the built-in default", file=sys.stderr)
    return compiled.loaded.config
