"""What the Kafka command-line tools the suite calls have in common: a stand-in exits 1 with
the broker's error, as the tool does, and 0 once the change is made."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def tool_parser(prog: str, actions: tuple[str, ...]) -> argparse.ArgumentParser:
    """The tool's options: ``--bootstrap-server`` and exactly one of ``actions`` (flags)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--bootstrap-server", required=True)
    action = parser.add_mutually_exclusive_group(required=True)
    for name in actions:
        action.add_argument(f"--{name}", action="store_true")
    return parser


def run_command(what: str, change: Callable[[], None]) -> int:
    """Make the change; the tool's exit code (its error on stderr)."""
    try:
        change()
    except Exception as exc:  # the tool prints the broker's error and fails
        print(f"Error while executing {what} command: {exc}", file=sys.stderr)
        return 1
    return 0
