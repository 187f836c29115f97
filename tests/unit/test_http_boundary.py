"""jego_call/signalling/http.py, the one place API errors become HTTP: an aiohttp app on
127.0.0.1 (aiohttp's TestServer) whose handlers raise. A SignallingError answers with its code
and HTTP status, aiohttp's own errors under /api/ become the same JSON shape, anything else is a
500 "internal" with the traceback in the log and the server still serving; `json_body` refuses
non-JSON, non-objects and bodies over 64 KiB (by header and by what arrives);
`authenticated_user` takes a bearer token only from the Authorization header.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from jego_call.accounts import Accounts
from jego_call.config import AuthConfig
from jego_call.db import Database, SqliteDatabase, run_sync
from jego_call.errors import ErrorCode, SignallingError
from jego_call.signalling.http import MAX_JSON_BODY, authenticated_user, error_middleware, json_body
from jego_call.signalling.keys import ACCOUNTS


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path / "jego.sqlite3")
    yield database
    run_sync(database.close())


@pytest.fixture
def accounts(db: SqliteDatabase) -> Accounts:
    return Accounts(db, b"s" * 32, AuthConfig())


@pytest.fixture
async def client(accounts: Accounts) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": await json_body(request)})

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"user": await authenticated_user(request)})

    async def refuse(request: web.Request) -> web.Response:
        raise SignallingError(ErrorCode(request.match_info["code"]), "because")

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def big(request: web.Request) -> web.Response:
        raise web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2)

    app = web.Application(middlewares=[error_middleware])
    app[ACCOUNTS] = accounts
    app.router.add_post("/api/echo", echo)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_get("/api/refuse/{code}", refuse)
    app.router.add_get("/api/crash", crash)
    app.router.add_get("/api/big", big)
    app.router.add_get("/page", crash)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


Client = TestClient[web.Request, web.Application]


async def error_of(resp: Any) -> tuple[int, str, str]:
    body = await resp.json()
    return resp.status, body["error"]["code"], body["error"]["message"]


@pytest.mark.parametrize(("code", "status"), [("username_taken", 409), ("not_found", 404), ("forbidden", 403),
                                              ("rate_limited", 429), ("self_call", 400),
                                              ("service_unavailable", 503), ("too_large", 413)])
async def test_a_signalling_error_is_its_code_and_status(client: Client, code: str, status: int) -> None:
    resp = await client.get(f"/api/refuse/{code}")
    assert await error_of(resp) == (status, code, "because")


async def test_aiohttps_own_errors_under_api_get_the_same_shape(client: Client) -> None:
    assert (await error_of(await client.get("/api/nowhere")))[:2] == (404, "not_found")
    assert (await error_of(await client.delete("/api/echo")))[:2] == (405, "invalid_message")
    assert (await error_of(await client.get("/api/big")))[:2] == (413, "too_large")


async def test_outside_api_aiohttps_errors_stay_as_they_are(client: Client) -> None:
    resp = await client.get("/nowhere")
    assert resp.status == 404 and resp.content_type != "application/json"


async def test_a_bug_is_a_500_internal_and_the_server_goes_on(client: Client,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="jego.server"):
        assert await error_of(await client.get("/api/crash")) == (500, "internal", "internal error")
    assert "internal error on GET /api/crash" in caplog.text and "a bug" in caplog.text
    assert (await error_of(await client.get("/page")))[:2] == (500, "internal")
    assert (await client.post("/api/echo", json={"a": 1})).status == 200


@pytest.mark.parametrize(("body", "words"), [(b"not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                                             (b'"text"', "must be a JSON object"), (b"", "not valid JSON"),
                                             (b"\xff\xfe", "not valid JSON")])
async def test_a_body_that_is_not_a_json_object_is_invalid_json(client: Client, body: bytes, words: str) -> None:
    status, code, message = await error_of(await client.post("/api/echo", data=body))
    assert (status, code) == (400, "invalid_json") and words in message


async def test_a_json_object_body_comes_through(client: Client) -> None:
    resp = await client.post("/api/echo", json={"name": "李伟", "n": [1, 2]})
    assert resp.status == 200 and await resp.json() == {"got": {"name": "李伟", "n": [1, 2]}}


async def test_a_body_at_the_limit_is_read_and_one_byte_more_is_too_large(client: Client) -> None:
    pad = MAX_JSON_BODY - len('{"x":""}')
    exact = ('{"x":"' + "a" * pad + '"}').encode()
    assert len(exact) == MAX_JSON_BODY
    assert (await client.post("/api/echo", data=exact)).status == 200
    over = ('{"x":"' + "a" * (pad + 1) + '"}').encode()
    assert (await error_of(await client.post("/api/echo", data=over)))[:2] == (413, "too_large")


async def test_a_body_over_the_limit_without_a_length_is_too_large(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"x":"'
        for _ in range(5):
            yield b"a" * 16384
        yield b'"}'

    resp = await client.post("/api/echo", data=chunks())             # chunked: no Content-Length
    assert (await error_of(resp))[:2] == (413, "too_large")


async def test_only_a_bearer_header_authenticates(client: Client, accounts: Accounts) -> None:
    tok = (await accounts.register("alice", "correct-horse-9")).token
    ok = await client.get("/api/whoami", headers={"Authorization": f"Bearer {tok}"})
    assert ok.status == 200 and await ok.json() == {"user": "alice"}
    for headers, params in (({}, {}), ({"Authorization": tok}, {}), ({"Authorization": f"Basic {tok}"}, {}),
                            ({"Authorization": "Bearer "}, {}), ({}, {"token": tok})):
        status, code, message = await error_of(await client.get("/api/whoami", headers=headers, params=params))
        assert (status, code) == (401, "not_authenticated") and "Bearer" in message
    status, code, message = await error_of(await client.get("/api/whoami",
                                                            headers={"Authorization": f"Bearer {tok}x"}))
    assert (status, code, message) == (401, "not_authenticated", "bad token signature")
