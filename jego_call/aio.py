"""Running the event loop: uvloop when it is installed (the `jego serve`, `jego bridge` and
`jego carrier` entry points), the standard loop otherwise. Call :func:`run` instead of
``asyncio.run``."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop's event loop when importable (UDP and timers in libuv:
    less CPU per packet), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
