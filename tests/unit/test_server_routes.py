"""jego_call/signalling/server.py, people.py and billing/web.py routes, driven in-process
(`create_app` on 127.0.0.1, SQLite in tmp_path, tests/unit/appkit.py): every refusal is the
documented code with words and its HTTP status (bad JSON, a missing or wrong token, a method a
route does not take, a bad limit); registration and login with their token; contacts and blocks
with 201 on creation and 200 when already there (idempotent); the history filter; the number
check and the price; the end-reason catalogue; health.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from jego_call import __version__
from jego_call.call import reasons
from jego_call.signalling.keys import BILLING, HUB, PRICE_LOOKUP
from tests.unit.appkit import PASSWORD, Client, MakeClient, bearer, call, register


def error(body: Any) -> tuple[str, str]:
    return body["error"]["code"], body["error"]["message"]


# --- the error boundary on real routes --------------------------------------------------------------

@pytest.mark.parametrize(("path", "data", "code", "words"), [
    ("/api/register", b"{nope", "invalid_json", "JSON"),
    ("/api/register", b"[1]", "invalid_json", "object"),
    ("/api/login", b"", "invalid_json", "JSON"),
    ("/api/login", b'"x"', "invalid_json", "object"),
])
async def test_bad_json_is_400_with_its_code_and_words(client: Client, path: str, data: bytes,
                                                       code: str, words: str) -> None:
    res = await client.post(path, data=data, headers={"Content-Type": "application/json"})
    assert res.status == 400
    got_code, message = error(await res.json())
    assert got_code == code and words in message


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/me"), ("PATCH", "/api/me"), ("GET", "/api/contacts"), ("POST", "/api/contacts"),
    ("DELETE", "/api/contacts/bob"), ("GET", "/api/calls"), ("GET", "/api/users/bob"), ("GET", "/api/blocks"),
    ("POST", "/api/blocks"), ("DELETE", "/api/blocks/bob"), ("GET", "/api/numbers/check?number=1"),
    ("GET", "/api/credit"), ("GET", "/api/rate?number=1"),
])
async def test_every_private_route_needs_a_token(client: Client, method: str, path: str) -> None:
    payload: dict[str, Any] | None = {} if method in ("POST", "PATCH") else None
    status, body = await call(client, method, path, body=payload)
    assert status == 401 and error(body) == ("not_authenticated", "send Authorization: Bearer TOKEN"), body
    status, body = await call(client, method, path, token="not-a-token", body=payload)
    assert status == 401 and error(body) == ("not_authenticated", "malformed token"), body


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/register"), ("PUT", "/api/login"),
                                              ("DELETE", "/api/me"), ("POST", "/api/reasons"),
                                              ("PUT", "/api/contacts")])
async def test_a_method_a_route_does_not_take_is_405_in_the_api_shape(client: Client, method: str,
                                                                       path: str) -> None:
    status, body = await call(client, method, path)
    assert status == 405 and body["error"]["message"], body


async def test_an_unknown_api_path_is_404_in_the_api_shape(client: Client) -> None:
    status, body = await call(client, "GET", "/api/nothing-here")
    assert status == 404 and error(body)[0] == "not_found"


# --- register and login ------------------------------------------------------------------------------

async def test_register_gives_a_token_that_works_and_login_gives_another(client: Client) -> None:
    status, reg = await call(client, "POST", "/api/register",
                             body={"username": "Alice", "password": PASSWORD, "display_name": "  Alice  W "})
    assert status == 201 and reg["username"] == "alice" and reg["display_name"] == "Alice W"
    assert reg["expires_at"] > 0
    status, me = await call(client, "GET", "/api/me", reg["token"])
    assert status == 200 and me["username"] == "alice" and me["display_name"] == "Alice W" and me["created_at"] > 0
    status, log = await call(client, "POST", "/api/login", body={"username": "ALICE", "password": PASSWORD})
    assert status == 200 and log["username"] == "alice" and log["token"]
    assert (await call(client, "GET", "/api/me", log["token"]))[0] == 200


@pytest.mark.parametrize(("body", "code"), [
    ({"username": "al", "password": PASSWORD}, "invalid_username"),
    ({"username": "bad name!", "password": PASSWORD}, "invalid_username"),
    ({"username": "carol", "password": "short"}, "weak_password"),
    ({"username": "carol", "password": PASSWORD, "display_name": 5}, "invalid_display_name"),
    ({"username": "carol", "password": PASSWORD, "display_name": "x" * 33}, "invalid_display_name"),
    ({"password": PASSWORD}, "invalid_username"),
])
async def test_a_bad_registration_names_its_fault(client: Client, body: dict[str, Any], code: str) -> None:
    status, got = await call(client, "POST", "/api/register", body=body)
    assert status == 400 and error(got)[0] == code and error(got)[1], got
    assert (await call(client, "POST", "/api/login", body={"username": "carol", "password": PASSWORD}))[0] == 401


async def test_a_taken_username_is_409_and_the_first_account_stays(client: Client) -> None:
    await register(client, "alice")
    status, body = await call(client, "POST", "/api/register", body={"username": "ALICE", "password": "other-pass-123"})
    assert status == 409 and error(body)[0] == "username_taken"
    status, _ = await call(client, "POST", "/api/login", body={"username": "alice", "password": PASSWORD})
    assert status == 200


@pytest.mark.parametrize("body", [{"username": "alice", "password": "wrong-password"},
                                  {"username": "nobody", "password": PASSWORD},
                                  {"username": "alice"}, {"username": 5, "password": PASSWORD}])
async def test_a_wrong_login_is_auth_failed_without_saying_which_part(client: Client, body: dict[str, Any]) -> None:
    await register(client, "alice")
    status, got = await call(client, "POST", "/api/login", body=body)
    assert status == 401 and error(got) == ("auth_failed", "wrong username or password")


async def test_the_token_only_counts_in_the_authorization_header(client: Client) -> None:
    token = await register(client, "alice")
    assert (await call(client, "GET", f"/api/me?token={token}"))[0] == 401
    status, body = await call(client, "GET", "/api/me", headers={"Authorization": f"Token {token}"})
    assert status == 401 and error(body)[0] == "not_authenticated"
    body_part, sig = token.split(".")
    forged = body_part + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    status, body = await call(client, "GET", "/api/me", forged)
    assert status == 401 and error(body)[0] == "not_authenticated" and error(body)[1]


# --- contacts ------------------------------------------------------------------------------------------

async def test_adding_a_contact_is_201_then_200_and_listed_once(client: Client) -> None:
    ta = await register(client, "alice")
    await register(client, "bob", "Bob B")
    status, first = await call(client, "POST", "/api/contacts", ta, {"username": " BOB "})
    assert status == 201 and first == {"username": "bob", "display_name": "Bob B", "presence": "offline"}
    status, again = await call(client, "POST", "/api/contacts", ta, {"username": "bob"})
    assert status == 200 and again == first
    status, lst = await call(client, "GET", "/api/contacts", ta)
    assert status == 200 and lst == {"contacts": [first], "blocked": []}


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"username": "alice"}, 400, "self_contact"),
    ({"username": "ghost"}, 404, "unknown_user"),
    ({}, 400, "invalid_username"),
])
async def test_a_bad_contact_is_refused_with_its_code(client: Client, body: dict[str, Any], status: int,
                                                      code: str) -> None:
    ta = await register(client, "alice")
    got_status, got = await call(client, "POST", "/api/contacts", ta, body)
    assert (got_status, error(got)[0]) == (status, code), got


async def test_removing_a_contact_is_204_and_they_are_gone(client: Client) -> None:
    ta = await register(client, "alice")
    await register(client, "bob")
    await call(client, "POST", "/api/contacts", ta, {"username": "bob"})
    assert (await call(client, "DELETE", "/api/contacts/bob", ta)) == (204, None)
    assert (await call(client, "GET", "/api/contacts", ta))[1]["contacts"] == []


async def test_a_contact_online_shows_online(client: Client) -> None:
    ta = await register(client, "alice")
    tb = await register(client, "bob")
    await call(client, "POST", "/api/contacts", ta, {"username": "bob"})
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "auth", "token": tb})
    while (await ws.receive_json())["type"] != "auth_ok":
        pass
    assert client.app[HUB].presence("bob") == "online"
    assert (await call(client, "GET", "/api/contacts", ta))[1]["contacts"][0]["presence"] == "online"
    await ws.close()


# --- people: profile, users, blocks -------------------------------------------------------------------

async def test_patch_me_changes_the_display_name_and_requires_the_field(client: Client) -> None:
    ta = await register(client, "alice")
    status, me = await call(client, "PATCH", "/api/me", ta, {"display_name": " 王芳 "})
    assert status == 200 and me["display_name"] == "王芳" and me["username"] == "alice"
    status, body = await call(client, "PATCH", "/api/me", ta, {"name": "x"})
    assert status == 400 and error(body) == ("invalid_message", "field 'display_name' is required")
    status, body = await call(client, "PATCH", "/api/me", ta, {"display_name": ""})
    assert status == 400 and error(body)[0] == "invalid_display_name"
    assert (await call(client, "GET", "/api/me", ta))[1]["display_name"] == "王芳"


async def test_get_user_says_contact_and_blocked(client: Client) -> None:
    ta = await register(client, "alice")
    await register(client, "bob", "Bob")
    status, bob = await call(client, "GET", "/api/users/BOB", ta)
    assert status == 200 and bob == {"username": "bob", "display_name": "Bob", "contact": False, "blocked": False}
    await call(client, "POST", "/api/contacts", ta, {"username": "bob"})
    assert (await call(client, "GET", "/api/users/bob", ta))[1]["contact"] is True
    await call(client, "POST", "/api/blocks", ta, {"username": "bob"})  # a block removes the contact too
    assert (await call(client, "GET", "/api/users/bob", ta))[1] == {
        "username": "bob", "display_name": "Bob", "contact": False, "blocked": True}
    await call(client, "DELETE", "/api/blocks/bob", ta)  # and lifting it does not add them back
    assert (await call(client, "GET", "/api/users/bob", ta))[1] == {
        "username": "bob", "display_name": "Bob", "contact": False, "blocked": False}
    status, body = await call(client, "GET", "/api/users/ghost", ta)
    assert status == 404 and error(body) == ("unknown_user", "no user 'ghost'")


async def test_blocking_is_201_then_200_and_unblocking_twice_is_404(client: Client) -> None:
    ta = await register(client, "alice")
    await register(client, "bob")
    status, first = await call(client, "POST", "/api/blocks", ta, {"username": "bob"})
    assert status == 201 and first["username"] == "bob"
    assert (await call(client, "POST", "/api/blocks", ta, {"username": "bob"}))[0] == 200
    assert (await call(client, "GET", "/api/blocks", ta))[1] == {"blocked": [{"username": "bob", "display_name": "bob"}]}
    assert (await call(client, "DELETE", "/api/blocks/bob", ta)) == (204, None)
    status, body = await call(client, "DELETE", "/api/blocks/bob", ta)
    assert status == 404 and error(body)[0] == "not_found"
    assert (await call(client, "GET", "/api/blocks", ta))[1] == {"blocked": []}


async def test_who_blocked_you_sees_you_offline_in_their_contacts(client: Client) -> None:
    ta = await register(client, "alice")
    tb = await register(client, "bob")
    await call(client, "POST", "/api/contacts", tb, {"username": "alice"})
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "auth", "token": ta})
    while (await ws.receive_json())["type"] != "auth_ok":
        pass
    assert (await call(client, "GET", "/api/contacts", tb))[1]["contacts"][0]["presence"] == "online"
    await call(client, "POST", "/api/blocks", ta, {"username": "bob"})
    assert (await call(client, "GET", "/api/contacts", tb))[1]["contacts"][0]["presence"] == "offline"
    await ws.close()


@pytest.mark.parametrize(("body", "code"), [({"username": "alice"}, "self_contact"), ({"username": "ghost"}, "unknown_user")])
async def test_a_bad_block_is_refused(client: Client, body: dict[str, Any], code: str) -> None:
    ta = await register(client, "alice")
    status, got = await call(client, "POST", "/api/blocks", ta, body)
    assert status >= 400 and error(got)[0] == code, got


# --- the number check and prices ------------------------------------------------------------------------

async def test_the_number_check_formats_and_refuses_with_words(client: Client) -> None:
    ta = await register(client, "alice")
    status, ok = await call(client, "GET", "/api/numbers/check?number=%2B86%20138%200013%208000", ta)
    assert status == 200 and ok["callable"] is True and ok["e164"] == "+8613800138000", ok
    assert ok["price"] is not None and ok["price"]["currency"] == "CNY"
    status, bad = await call(client, "GET", "/api/numbers/check?number=12", ta)
    assert status == 200 and bad["callable"] is False and bad["e164"] is None
    status, body = await call(client, "GET", "/api/numbers/check?number=" + "1" * 65, ta)
    assert status == 400 and error(body) == ("invalid_message", "number is longer than 64 characters")
    assert (await call(client, "GET", "/api/numbers/check?number=" + "1" * 64, ta))[0] == 200


async def test_the_number_check_uses_an_installed_price_lookup(make_client: MakeClient) -> None:
    seen: list[str] = []

    def lookup(e164: str) -> dict[str, Any]:
        seen.append(e164)
        return {"per_minute": "9.99"}

    def install(app: web.Application) -> None:
        app[PRICE_LOOKUP] = lookup

    client = await make_client(install)  # billing on: its own price does not replace this one
    ta = await register(client, "alice")
    status, ok = await call(client, "GET", "/api/numbers/check?number=%2B8613800138000", ta)
    assert ok["price"] == {"per_minute": "9.99"} and seen == ["+8613800138000"]
    await call(client, "GET", "/api/numbers/check?number=12", ta)
    assert seen == ["+8613800138000"]  # no lookup for what cannot be called


async def test_the_rate_route_prices_refuses_and_rejects(client: Client) -> None:
    ta = await register(client, "alice")
    status, r = await call(client, "GET", "/api/rate?number=%2B8613800138000", ta)
    assert status == 200 and r["enabled"] and r["callable"] and r["e164"] == "+8613800138000"
    assert r["refusal"] is None and r["rate"] and r["destination_zh"]
    status, emergency = await call(client, "GET", "/api/rate?number=110", ta)
    assert status == 200 and emergency["callable"] is False and emergency["refusal"]["reason"] == "emergency"
    assert emergency["refusal"]["en"] and emergency["refusal"]["zh"]
    status, body = await call(client, "GET", "/api/rate?number=abc", ta)
    assert status == 400 and error(body)[0] == "invalid_number" and error(body)[1]


async def test_credit_starts_at_zero_and_rejects_a_bad_limit(client: Client) -> None:
    ta = await register(client, "alice")
    status, c = await call(client, "GET", "/api/credit", ta)
    assert status == 200 and c["enabled"] is True
    status, body = await call(client, "GET", "/api/credit?limit=ten", ta)
    assert status == 400 and error(body) == ("invalid_message", "limit must be an integer")


async def test_billing_off_says_so_on_credit_and_rate(make_client: MakeClient) -> None:
    client = await make_client(billing={"enabled": False})
    ta = await register(client, "alice")
    assert await call(client, "GET", "/api/credit", ta) == (200, {"enabled": False})
    assert await call(client, "GET", "/api/rate?number=%2B8613800138000", ta) == (200, {"enabled": False})
    status, ok = await call(client, "GET", "/api/numbers/check?number=%2B8613800138000", ta)
    assert ok["callable"] is True and ok["price"] is None


# --- history, config, reasons, health ------------------------------------------------------------------------

@pytest.mark.parametrize(("limit", "ok"), [("1", True), ("500", True), ("0", True), ("9999", True),
                                           ("-3", True), ("x", False), ("1.5", False)])
async def test_the_history_limit_is_clamped_or_refused(client: Client, limit: str, ok: bool) -> None:
    ta = await register(client, "alice")
    status, body = await call(client, "GET", f"/api/calls?limit={limit}", ta)
    if ok:
        assert status == 200 and body == {"calls": []}
    else:
        assert status == 400 and error(body) == ("invalid_message", "limit must be an integer")


async def test_client_config_gives_turn_credentials_only_to_a_signed_in_user(make_client: MakeClient) -> None:
    client = await make_client(ice={"turn_urls": ["turn:127.0.0.1:3478"], "turn_secret": "s3cret",
                                    "servers": [{"urls": "stun:127.0.0.1:3478"}]})
    status, anon = await call(client, "GET", "/api/config")
    assert status == 200 and anon["ice_servers"] == [{"urls": "stun:127.0.0.1:3478"}] and anon["protocol"] == 1
    ta = await register(client, "alice")
    status, mine = await call(client, "GET", "/api/config", ta)
    assert status == 200 and len(mine["ice_servers"]) == 2
    turn = mine["ice_servers"][1]
    assert turn["username"].endswith(":alice") and turn["credential"] and "s3cret" not in str(mine)
    assert (await call(client, "GET", "/api/config", "bad-token"))[0] == 401


async def test_the_reasons_catalogue_is_the_enum_and_cacheable(client: Client) -> None:
    res = await client.get("/api/reasons")
    assert res.status == 200 and res.headers["Cache-Control"] == "max-age=3600"
    assert await res.json() == reasons.catalogue()


async def test_healthz_on_sqlite_is_ok_with_the_version(client: Client) -> None:
    assert await call(client, "GET", "/healthz") == (200, {"status": "ok", "version": __version__})


async def test_the_web_client_is_served_uncached(client: Client) -> None:
    res = await client.get("/")
    assert res.status == 200 and res.headers["Cache-Control"] == "no-cache"
    assert "<html" in (await res.text()).lower()


async def test_a_body_over_the_limit_is_413_too_large(client: Client) -> None:
    res = await client.post("/api/login", data=b"{" + b" " * (70 * 1024) + b"}",
                            headers={"Content-Type": "application/json"})
    assert res.status == 413
    assert (await res.json())["error"]["code"] in ("too_large", "message_too_large")


async def test_a_token_of_a_user_works_for_api_and_ws_alike(client: Client) -> None:
    ta = await register(client, "alice")
    ws = await client.ws_connect("/ws", headers=bearer(ta))  # the header alone does not authenticate /ws
    await ws.send_json({"type": "invite", "call_id": "c" * 16, "to": "bob", "sdp": "v=0"})
    assert (await ws.receive_json())["code"] == "not_authenticated"
    await ws.close()


# --- /readyz and /metrics ---------------------------------------------------------------------------------------

def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one Prometheus sample `name{labels}` in exposition `text`."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {key} in /metrics")


async def test_readyz_is_ready_with_the_database_ok(client: Client) -> None:
    res = await client.get("/readyz")
    assert res.status == 200 and res.headers["Cache-Control"] == "no-store"
    assert await res.json() == {"status": "ready", "checks": {"database": "ok"}}


async def test_metrics_count_sessions_users_and_failed_logins(client: Client) -> None:
    res = await client.get("/metrics")
    assert res.status == 200 and res.headers["Content-Type"].startswith("text/plain")
    text = await res.text()
    assert sample(text, "jego_users_online") == 0
    token = await register(client, "alice")
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "auth", "token": token})
    while (await ws.receive_json())["type"] != "auth_ok":
        pass
    await call(client, "POST", "/api/login", body={"username": "alice", "password": "wrong-password"})
    text = await (await client.get("/metrics")).text()
    assert sample(text, "jego_users_online") == 1
    assert sample(text, "jego_websocket_sessions", 'role="user"') == 1
    assert sample(text, "jego_login_failures_total") == 1
    await ws.close()


async def test_metrics_disabled_is_404_with_words(make_client: MakeClient) -> None:
    client = await make_client(metrics={"enabled": False})
    res = await client.get("/metrics")
    assert res.status == 404 and "metrics are disabled" in await res.text()


async def test_credit_shows_top_ups_newest_first_and_the_limit_is_clamped(client: Client) -> None:
    ta = await register(client, "alice")
    billing = client.app[BILLING]
    for i, amount in enumerate((500, 250, -100)):
        await billing.top_up("alice", amount, f"note {i}", now=1000.0 + i)
    status, c = await call(client, "GET", "/api/credit", ta)
    assert status == 200 and c["enabled"] is True and c["username"] == "alice" and c["currency"] == "CNY"
    assert (c["balance"], c["held"], c["available"], c["open_calls"]) == (650, 0, 650, 0)
    assert [e["amount"] for e in c["entries"]] == [-100, 250, 500]
    assert c["balance_text"] and c["entries"][0]["amount_text"]
    status, one = await call(client, "GET", "/api/credit?limit=0", ta)  # clamped up to 1
    assert status == 200 and [e["amount"] for e in one["entries"]] == [-100]
    status, many = await call(client, "GET", "/api/credit?limit=100000", ta)  # clamped down to 200
    assert status == 200 and len(many["entries"]) == 3
    tb = await register(client, "bob")
    status, other = await call(client, "GET", "/api/credit", tb)  # each sees only their own
    assert other["balance"] == 0 and other["entries"] == []


@pytest.mark.parametrize(("number", "prefix", "per_minute", "increment", "first_s", "destination"), [
    ("+8613800138000", "+86", "0.15", "60/60", 60, "China Mobile mobile"),
    ("+861069123456", "+8610", "0.10", "30/6", 30, "Beijing landline"),
])
async def test_the_rate_and_the_dial_pads_price_agree(client: Client, number: str, prefix: str, per_minute: str,
                                                      increment: str, first_s: int, destination: str) -> None:
    """The longest prefix wins (config/rates.toml); both routes tell the same price."""
    ta = await register(client, "alice")
    q = number.replace("+", "%2B")
    _, r = await call(client, "GET", f"/api/rate?number={q}", ta)
    _, chk = await call(client, "GET", f"/api/numbers/check?number={q}", ta)
    assert r["rate"]["prefix"] == prefix and r["rate"]["per_minute_text"] == f"{per_minute} CNY"
    assert r["rate"]["increment"] == increment and r["rate"]["destination"] == destination
    assert chk["price"] == {"per_minute": per_minute, "currency": "CNY", "increment": increment, "first_s": first_s,
                            "connection_fee": None, "destination": destination,
                            "destination_zh": r["destination_zh"]}


async def test_a_barred_destination_has_no_price_and_says_why(client: Client) -> None:
    ta = await register(client, "alice")
    _, r = await call(client, "GET", "/api/rate?number=%2B12025550123", ta)
    assert r["callable"] is False and r["rate"] is None and r["e164"] == "+12025550123"
    assert r["refusal"]["reason"] == "destination_barred" and "+1" in r["refusal"]["en"] and r["refusal"]["zh"]
    _, chk = await call(client, "GET", "/api/numbers/check?number=%2B12025550123", ta)
    assert chk["callable"] is False and chk["price"] is None and chk["words"]["en"]


# --- presence pushed by the people routes ---------------------------------------------------------------------------

async def online(client: Client, token: str) -> Any:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "auth", "token": token})
    while (await ws.receive_json())["type"] != "auth_ok":
        pass
    return ws


async def next_presence(ws: Any, about: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            msg: dict[str, Any] = await ws.receive_json()
            if msg["type"] == "presence" and msg["username"] == about:
                return msg


async def test_people_routes_push_presence_to_who_should_see_it(client: Client) -> None:
    ta = await register(client, "alice")
    tb = await register(client, "bob")
    wa = await online(client, ta)
    wb = await online(client, tb)
    # alice adds bob: her sockets are told bob's presence at once
    await call(client, "POST", "/api/contacts", ta, {"username": "bob"})
    assert (await next_presence(wa, "bob"))["presence"] == "online"
    # bob renames himself: alice (who watches him) hears the new name
    await call(client, "PATCH", "/api/me", tb, {"display_name": "Bobby"})
    got = await next_presence(wa, "bob")
    assert got["display_name"] == "Bobby" and got["presence"] == "online"
    # bob adds alice (he is told her presence)
    await call(client, "POST", "/api/contacts", tb, {"username": "alice"})
    await next_presence(wb, "alice")
    # alice blocks bob, who has her as a contact: bob now sees her offline
    await call(client, "POST", "/api/blocks", ta, {"username": "bob"})
    assert (await next_presence(wb, "alice"))["presence"] == "offline"
    # and the unblock shows her online again
    await call(client, "DELETE", "/api/blocks/bob", ta)
    assert (await next_presence(wb, "alice"))["presence"] == "online"
    await wa.close()
    await wb.close()
