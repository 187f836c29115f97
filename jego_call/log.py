"""Logging: one set-up for every process, text or JSON lines, the current call and user on every
record, and secrets never written.

    setup_logging("INFO", fmt="json", node="node-1")     # once, at start-up ([log] in jego.toml)
    register_secret(cfg.bridge.password)                 # values that must never appear in a log
    with call_context(call_id="c1", user="alice"):       # every record inside (and in tasks
        log.info("ringing")                              # created inside) carries call_id/user

`call_context` sets context variables, so asyncio tasks created inside it inherit the call id:
a BridgeCall's tasks, its aiortc callbacks and the hub's handling of one message all log with
their call's id without hand-written "[call …]" prefixes. JSON lines have `ts`, `level`,
`logger`, `msg`, `node`, and `call_id` / `user` where there is one (plus `exc` for tracebacks).
The redaction filter replaces registered secrets and anything shaped like a password, a bearer
token, a signed token or a digest response with "***" in the message and the traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from typing import Any

CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("jego_call_id", default=None)
USER: contextvars.ContextVar[str | None] = contextvars.ContextVar("jego_user", default=None)

NOISY = ("aioice", "aiortc", "aiohttp.access")
REDACTED = "***"

_secrets: set[str] = set()
_PATTERNS = [
    # "password": "…", password=…, 'password': '…' (any key ending in password/secret/token)
    re.compile(r"""(?i)(["']?\b[\w-]*(?:password|passwd|secret|token)["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;&}]+)"""),
    re.compile(r"(?i)(\bBearer\s+)([A-Za-z0-9._~+/=-]+)"),
    re.compile(r"""(?i)(\bresponse\s*=\s*)("[0-9a-f]+"|[0-9a-f]{16,})"""),  # digest responses (RFC 7616)
    re.compile(r"(?i)(\b(?:Proxy-)?Authorization:\s*)(.+)"),
]


def register_secret(value: str | None) -> None:
    """Never write `value` in a log line (passwords, the gateway secret, signing keys)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """`text` with registered secrets and secret-shaped values replaced by ***."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


@contextlib.contextmanager
def call_context(call_id: str | None = None, user: str | None = None) -> Iterator[None]:
    """Tag every record logged inside (and in tasks started inside) with `call_id` and `user`."""
    tokens = []
    if call_id is not None:
        tokens.append((CALL_ID, CALL_ID.set(call_id)))
    if user is not None:
        tokens.append((USER, USER.set(user)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind_call(call_id: str, user: str | None = None) -> None:
    """Set the call (and user) for the rest of the current task: call first thing in a call's task."""
    CALL_ID.set(call_id)
    if user is not None:
        USER.set(user)


class ContextFilter(logging.Filter):
    """Adds `call_id`, `user` and `node` to every record; redacts message and traceback."""

    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id") or record.call_id is None:
            record.call_id = CALL_ID.get()
        if not hasattr(record, "user") or record.user is None:
            record.user = USER.get()
        record.node = self.node
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class TextFormatter(logging.Formatter):
    """`2026-12-01 21:00:00,123 INFO    jego.hub: [call c1] ringing`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None)
        text = super().format(record)
        if call_id:
            head, sep, rest = text.partition(": ")
            text = f"{head}{sep}[call {call_id}] {rest}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, node, call_id, user, exc."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "node": getattr(record, "node", ""),
        }
        for key in ("call_id", "user"):
            value = getattr(record, key, None)
            if value:
                out[key] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


# The one line at the end of every call (the hub for app calls, the bridge for phone legs, the
# carrier for trunk calls), always these keys in this order; None is written "-".
SUMMARY_KEYS = ("kind", "outcome", "sip_code", "q850_cause", "duration_s", "codec", "mos", "r_factor", "quality",
                "hung_up_by")


def call_summary(logger: logging.Logger, call_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """Log `call summary: kind=app outcome=hangup sip_code=- ...` once per call; in JSON the same
    keys are fields of the line (`"event": "call_summary"`). Returns the fields."""
    out: dict[str, Any] = {k: fields.get(k) for k in SUMMARY_KEYS}
    out.update({k: v for k, v in fields.items() if k not in out})
    text = " ".join(f"{k}={'-' if v is None else v}" for k, v in out.items())
    extra: dict[str, Any] = {"fields": {"event": "call_summary", **out}}
    if call_id is not None:
        extra["call_id"] = call_id
    logger.info("call summary: %s", text, extra=extra)
    return out


def default_node() -> str:
    """This process's name when [log] node is empty: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def setup_logging(level: str = "INFO", *, fmt: str = "text", node: str = "", stream: Any = None) -> None:
    """Configure the root logger once: `fmt` "text" (default) or "json"; `node` names this process."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter(node))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
