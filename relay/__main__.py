"""`python -m relay` and the `relay` command."""

from relay import signals


def main() -> int:
    """relay's command line; stop signals are held while it imports (see relay.signals)."""
    signals.hold()
    from relay.cli import main as cli_main  # noqa: PLC0415 - imported after the signals are held

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
