"""What every signed-in `jego` command shares (contact, group, message): the account options,
the credentials from flags or the environment, and one boundary that turns errors into a line on
stderr and an exit code.

    add_account_options(parser)                      # --server --user --password --json --timeout
    return run_signed_in(f"jego group {cmd}", args, fn, ERROR_TEXT)   # fn(args, client) -> exit code

Exit codes: 0 done; 1 refused by the server or server unreachable; 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping

from ..client import ApiError, ConnectionLost, JegoClient, ServerUnreachable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_SERVER = "http://127.0.0.1:8080"


class UsageError(Exception):
    """Bad arguments: one line on stderr, exit 2."""


def add_account_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--server", default=os.environ.get("JEGO_SERVER", DEFAULT_SERVER),
                   help=f"server URL (default {DEFAULT_SERVER})")
    q.add_argument("--user", help="your username (or env JEGO_USER)")
    q.add_argument("--password", help="your password (or env JEGO_PASSWORD)")
    q.add_argument("--json", action="store_true", help="print JSON on stdout")
    q.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default 30)")


def credentials(args: argparse.Namespace) -> tuple[str, str]:
    user = args.user or os.environ.get("JEGO_USER")
    password = args.password or os.environ.get("JEGO_PASSWORD")
    if not user or not password:
        raise UsageError("give --user and --password (or set JEGO_USER and JEGO_PASSWORD)")
    return user, password


def report_errors(prog: str, timeout: float, run: Callable[[], int], error_text: Mapping[str, str]) -> int:
    """Run `run()`; a usage error, a server refusal (its code and words), an unreachable server
    or a timeout becomes one line on stderr and its exit code."""
    try:
        return int(run())
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        detail = exc.message or error_text.get(exc.code) or exc.code
        print(f"{prog}: {exc.code}: {detail}", file=sys.stderr)
        return EXIT_FAILED
    except (ServerUnreachable, ConnectionLost) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError:
        print(f"{prog}: the server did not answer within {timeout:g} s", file=sys.stderr)
        return EXIT_FAILED


def run_signed_in(prog: str, args: argparse.Namespace,
                  fn: Callable[[argparse.Namespace, JegoClient], Awaitable[int]],
                  error_text: Mapping[str, str]) -> int:
    """Log in with `credentials(args)`, then `fn(args, client)`, inside `report_errors`."""
    async def go() -> int:
        user, password = credentials(args)
        async with JegoClient(args.server, timeout=args.timeout) as client:
            await client.login(user, password)
            return await fn(args, client)

    return report_errors(prog, args.timeout, lambda: asyncio.run(go()), error_text)


__all__ = ["DEFAULT_SERVER", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "add_account_options",
           "credentials", "report_errors", "run_signed_in"]
