"""jego_call.log: JSON lines with the call id from context, and no secret ever written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from jego_call.log import bind_call, call_context, redact, register_secret, setup_logging


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("DEBUG", fmt="json", node="node-7", stream=buf)
    try:
        yield buf
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_carry_node_call_and_user(json_log: io.StringIO) -> None:
    log = logging.getLogger("jego.test")
    log.info("outside")
    with call_context(call_id="c-42", user="alice"):
        log.warning("ringing %s", "+8613800138000")
    first, second = lines(json_log)
    assert set(first) == {"ts", "level", "logger", "msg", "node"} and first["node"] == "node-7"
    assert second["call_id"] == "c-42" and second["user"] == "alice" and second["level"] == "warning"
    assert second["msg"] == "ringing +8613800138000" and str(second["ts"]).endswith("Z")


async def test_tasks_started_inside_a_call_inherit_its_id(json_log: io.StringIO) -> None:
    log = logging.getLogger("jego.test")

    async def media() -> None:
        await asyncio.sleep(0)   # the subject: it logs after the `with` block has been left
        log.info("media up")

    with call_context(call_id="c-1"):
        task = asyncio.ensure_future(media())
    log.info("between")
    await task

    async def other() -> None:
        bind_call("c-2", "bob")
        log.info("bound")

    await asyncio.ensure_future(other())
    got = {str(r["msg"]): r.get("call_id") for r in lines(json_log) if r["logger"] == "jego.test"}
    assert got == {"between": None, "media up": "c-1", "bound": "c-2"}


def test_secrets_never_reach_the_log(json_log: io.StringIO) -> None:
    register_secret("jego-trunk-secret")
    log = logging.getLogger("jego.test")
    log.info("login %s", {"username": "alice", "password": "correct-horse-9"})
    log.info("Authorization: Bearer eyJhbGciOi.abc.def")
    log.info('Proxy-Authorization: Digest username="jego", response="6629fae49393a05397450978507c4ef1"')
    log.info("trunk password is jego-trunk-secret")
    log.info("token=abc123def456&x=1")
    try:
        raise ValueError("bad secret=hunter22")
    except ValueError:
        log.exception("failed")
    text = json_log.getvalue()
    for secret in ("correct-horse-9", "eyJhbGciOi", "6629fae49393a05397450978507c4ef1", "jego-trunk-secret",
                   "abc123def456", "hunter22"):
        assert secret not in text, secret
    assert text.count("***") >= 6 and "alice" in text


def test_redact_keeps_ordinary_text() -> None:
    assert redact("call +8613800138000 answered after 3 s") == "call +8613800138000 answered after 3 s"
    assert redact('{"token": "abc.def", "user": "bob"}') == '{"token": ***, "user": "bob"}'


def test_text_format_prefixes_the_call() -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("INFO", stream=buf)
    try:
        with call_context(call_id="c9"):
            logging.getLogger("jego.hub").info("connected")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert buf.getvalue().rstrip().endswith("jego.hub: [call c9] connected")
    with pytest.raises(ValueError, match="log format"):
        setup_logging(fmt="xml")
