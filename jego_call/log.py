"""Logging set-up, and CallLogger which prefixes a call's id (like aioquic's QuicConnectionAdapter)."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


class CallLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """`CallLogger(log, call_id).info(...)` writes "[call <id>] ..."."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[call {self.extra['call_id'] if self.extra else '?'}] {msg}", kwargs

    def __init__(self, logger: logging.Logger, call_id: str) -> None:
        super().__init__(logger, {"call_id": call_id})
