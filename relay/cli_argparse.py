"""argparse's parser as relay's commands need it (relay.cli_parser builds them from it): a
sub-command refuses its own unknown arguments, and a silence's options take values that start
with `-`."""

from __future__ import annotations

import argparse


class StrictParser(argparse.ArgumentParser):
    """A parser that refuses, itself, an argument it does not take. argparse leaves a
    sub-command's to the parser above it: `relay dlq list -o json` printed `relay`'s usage
    (its list of commands) and "relay: error: unrecognized arguments", not `dlq list`'s
    flags. Its sub-commands' parsers are of its class too (argparse's default)."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


class DashValuesParser(StrictParser):
    """A parser whose options take a value starting with `-` that is none of its options:
    `-d -1h` and `-d -abc` are durations to refuse, naming the value ("--duration '-abc':
    expected a duration like ..."), where argparse took `-1h` and `-abc` for options (`-abc`
    as `-a bc`) and said only "-d: expected one argument"."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        return super().parse_known_args(self._joined(args), namespace)

    def _joined(self, args: list[str] | None) -> list[str] | None:
        """`args` with each `OPTION VALUE` whose VALUE starts with `-` as `OPTION=VALUE`."""
        if args is None:
            return None
        out: list[str] = []
        for word in args:
            action = self._action(out[-1]) if out and "--" not in out else None
            taking = action is not None and action.nargs is None and action.option_strings
            if taking and word.startswith("-") and self._action(word) is None and word != "--":
                out[-1] = f"{out[-1]}={word}"
            else:
                out.append(word)
        return out

    def _action(self, word: str) -> argparse.Action | None:
        """The option `word` names: in full, or a long one abbreviated as argparse takes it
        (`--dur` for --duration: `--dur -1h` said "expected one argument")."""
        options = self._option_string_actions
        if word in options or not (self.allow_abbrev and word.startswith("--")):
            return options.get(word)
        found = {action for option, action in options.items() if option.startswith(word)}
        return found.pop() if len(found) == 1 else None


class Spelled(argparse.Action):
    """Stores an option's value and, in the namespace's `spelled`, the flag as it was typed
    (`--end` for `--until`, `-d` for `--duration`): an error names what the user wrote
    (`spelled`), not the flag's first name, which they may never have seen."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        typed = dict(getattr(namespace, "spelled", None) or {})
        typed[self.dest] = option_string or self.option_strings[0]
        namespace.spelled = typed


def spelled(args: argparse.Namespace, dest: str, flag: str) -> str:
    """The flag of `dest` as typed on the command line (Spelled), else `flag`."""
    return str((getattr(args, "spelled", None) or {}).get(dest, flag))
