"""The carrier's pure pieces: the call state table, digest auth with the lockout, the registrar,
the empty-Supported shim and Call-ID file names."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.carrier.config import load_carrier_config
from bridge.carrier.registrar import Registrar, TrunkAuth
from bridge.carrier.state import TRANSITIONS, CallEvent, CallState, CarrierCallMachine
from bridge.carrier.trunk import safe_name
from bridge.sip.auth import build_authorization, parse_challenge
from bridge.sip.errors import SipError
from bridge.sip.message import SipRequest, new_request, parse_message
from jego_call.errors import InvalidTransition


def test_call_state_table() -> None:
    fsm = CarrierCallMachine()
    for ev in (CallEvent.RING, CallEvent.RING, CallEvent.ANSWER, CallEvent.ACK, CallEvent.END):
        fsm.apply(ev)
    assert fsm.answered and fsm.ended and fsm.state is CallState.ENDED
    with pytest.raises(InvalidTransition):
        fsm.apply(CallEvent.ACK)
    rejected = CarrierCallMachine()
    rejected.apply(CallEvent.END)
    assert not rejected.answered
    with pytest.raises(InvalidTransition):
        CarrierCallMachine().apply(CallEvent.ACK)  # no ACK before a 200
    assert not any(s is CallState.ENDED for s, _e in TRANSITIONS)  # nothing leaves ENDED
    assert all((s, CallEvent.END) in TRANSITIONS for s in CallState if s is not CallState.ENDED)


@pytest.mark.parametrize(("state", "event"), [(s, e) for s in CallState for e in CallEvent])
def test_every_pair_is_in_the_table_or_raises(state: CallState, event: CallEvent) -> None:
    path = {CallState.SETUP: [], CallState.EARLY: [CallEvent.RING], CallState.ANSWERED: [CallEvent.ANSWER],
            CallState.CONFIRMED: [CallEvent.ANSWER, CallEvent.ACK], CallState.ENDED: [CallEvent.END]}[state]
    fsm = CarrierCallMachine()
    for ev in path:
        fsm.apply(ev)
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(InvalidTransition):
            fsm.apply(event)
        assert fsm.state is state
    else:
        assert fsm.apply(event) is expected


def register(password: str | None, challenge: str | None = None, user: str = "jego") -> SipRequest:
    headers: tuple[tuple[str, str], ...] = ()
    if password is not None and challenge is not None:
        headers = (("Authorization", build_authorization(parse_challenge(challenge), method="REGISTER",
                                                         uri="sip:127.0.0.1", username=user, password=password)),)
    req = new_request("REGISTER", "sip:127.0.0.1", from_=f"<sip:{user}@127.0.0.1>",
                      to=f"<sip:{user}@127.0.0.1>", contact="<sip:jego@127.0.0.1:5080>", headers=headers)
    req.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKunit")
    return req


def challenge_of(err: SipError | None) -> str:
    assert err is not None and err.status == 401
    return dict(err.headers)["WWW-Authenticate"]


def test_auth_challenge_verify_single_use_and_lockout() -> None:
    cfg = load_carrier_config(overrides={"sip": {"max_auth_failures": 3, "auth_window_s": 10}})
    auth = TrunkAuth(cfg, secret=b"0123456789abcdef0123")
    first = auth.check(register(None), "127.0.0.1", 100.0)
    assert first.account is None and not first.counted_failure
    ch = challenge_of(first.error)
    assert 'realm="carrier.jego.test"' in ch and "algorithm=MD5" in ch
    ok = auth.check(register("jego-trunk-secret", ch), "127.0.0.1", 100.1)
    assert ok.account is not None and ok.account.username == "jego"
    replay = auth.check(register("jego-trunk-secret", ch), "127.0.0.1", 100.2)
    assert replay.error is not None and "stale=true" in challenge_of(replay.error)  # nonces are single-use
    invite = register(None)
    invite.method = "INVITE"
    proxy = auth.check(invite, "127.0.0.1", 100.3)
    assert proxy.error is not None and proxy.error.status == 407
    assert "Proxy-Authenticate" in dict(proxy.error.headers)

    codes = []
    for i in range(3):
        bad = auth.check(register("nope", challenge_of(auth.check(register(None), "10.0.0.9", 101.0).error)),
                         "10.0.0.9", 101.0 + i)
        codes.append(bad.error.status if bad.error else 200)
    assert codes == [401, 401, 403]
    blocked = auth.check(register(None), "10.0.0.9", 104.0)
    assert blocked.error is not None and blocked.error.status == 403 and not blocked.error.headers
    assert auth.check(register(None), "127.0.0.1", 104.0).error.status == 401  # type: ignore[union-attr]
    assert auth.check(register(None), "10.0.0.9", 111.5).error.status == 401  # type: ignore[union-attr]


def test_auth_refuses_unlisted_source() -> None:
    cfg = load_carrier_config()
    cfg = dataclasses.replace(cfg, trunks=(dataclasses.replace(cfg.trunks[0], allowed_sources=("10.1.0.0/16",)),))
    auth = TrunkAuth(cfg)
    ch = challenge_of(auth.check(register(None), "127.0.0.1", 1.0).error)
    res = auth.check(register("jego-trunk-secret", ch), "127.0.0.1", 1.0)
    assert res.error is not None and res.error.status == 403


def test_registrar_expiry_limits_and_wildcard() -> None:
    reg = Registrar(min_expires=60, max_expires=3600)
    req = register(None)
    req.headers.set("Expires", "7200")
    [b] = reg.register("jego", req, ("127.0.0.1", 5080), "udp", 0.0)
    assert b.contact == "sip:jego@127.0.0.1:5080" and b.expires_in(0.0) == 3600  # lowered to max
    assert reg.latest("jego", 3599.0) is not None and reg.latest("jego", 3601.0) is None
    req.headers.set("Expires", "30")
    with pytest.raises(SipError) as exc:
        reg.register("jego", req, ("127.0.0.1", 5080), "udp", 0.0)
    assert exc.value.status == 423 and ("Min-Expires", "60") in exc.value.headers
    req.headers.set("Expires", "300")
    reg.register("jego", req, ("127.0.0.1", 5080), "udp", 0.0)
    star = register(None)
    star.headers.set("Contact", "*")
    star.headers.set("Expires", "0")
    assert reg.register("jego", star, ("127.0.0.1", 5080), "udp", 1.0) == []
    assert reg.bindings("jego", 1.0) == []


def test_empty_supported_is_an_empty_list() -> None:
    # RFC 3261 §25.1 allows an empty Supported/Allow (baresip 1.0 sends "Supported: ").
    raw = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKx\r\n"
           b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
           b"Supported: \r\nAllow:\r\nRequire: \r\nContent-Length: 0\r\n\r\n")
    msg = parse_message(raw)
    assert msg.token_list("Supported") == [] and msg.token_list("Require") == []
    with pytest.raises(SipError):
        parse_message(raw.replace(b"Supported: ", b"Supported: a b"))


def test_safe_name() -> None:
    assert safe_name("1-123@127.0.0.1") == "1-123@127.0.0.1"
    assert safe_name("../../etc/passwd") == "_._.._etc_passwd"  # no "/", no leading dot
    assert "/" not in safe_name("a/b\\c d") and safe_name("") == "_"
