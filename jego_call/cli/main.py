"""The `jego` console script: one argparse parser, one module per subcommand.

Each module in SUBCOMMANDS exposes `add_parser(subparsers)`, which adds its parser and sets
`func(args) -> int` as the default. Exit codes: 0 success, 2 usage or config error, others
as each subcommand documents (see README.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..db import StorageUnavailable
from ..errors import ConfigError

SUBCOMMANDS = [
    "bridge.carrier.cli",
    "bridge.gateway.cli",
    "jego_call.cli.cdr",
    "jego_call.cli.contact",
    "jego_call.cli.credit",
    "jego_call.cli.dial",
    "jego_call.cli.group",
    "jego_call.cli.message",
    "jego_call.cli.serve",
    "jego_call.cli.user",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jego", description="Jego Call: calls and messages to China.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"jego: {exc}", file=sys.stderr)
        return 2
    except StorageUnavailable as exc:
        print(f"jego: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
