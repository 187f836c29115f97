"""Property tests for Digest (bridge/sip/auth.py, RFC 7616 / RFC 2617): challenges and
credentials round-trip through their header text whatever the realm, nonce and user look like;
an answer built for a challenge verifies once, with the right password, method and URI only;
a forged or altered nonce never verifies; the header parsers raise only SipParseError.
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip.auth import (
    AuthResult,
    DigestChallenge,
    DigestChallenger,
    build_authorization,
    parse_challenge,
    parse_credentials,
)
from bridge.sip.errors import SipParseError

PROPS = settings(max_examples=150, deadline=None)

# quoted-string content: anything printable but CR/LF (quote() escapes \ and ")
QUOTED = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=20)
TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-._", min_size=1, max_size=12)
ALGORITHM = st.sampled_from(["MD5", "SHA-256"])
URI = st.builds(lambda u, h: f"sip:{u}@{h}", TOKEN, st.sampled_from(["carrier.example", "127.0.0.1", "[::1]:5070"]))


@PROPS
@given(QUOTED, QUOTED, ALGORITHM, st.sampled_from([(), ("auth",), ("auth", "auth-int")]),
       st.one_of(st.none(), QUOTED), st.booleans())
def test_challenges_round_trip(realm: str, nonce: str, algorithm: str, qop: tuple[str, ...], opaque: str | None,
                               stale: bool) -> None:
    ch = DigestChallenge(realm, nonce, algorithm, qop, opaque, stale)
    assert parse_challenge(str(ch)) == ch


@PROPS
@given(QUOTED, QUOTED, URI, ALGORITHM, st.one_of(st.none(), QUOTED), st.text(max_size=12), st.integers(1, 2**32 - 1))
def test_credentials_round_trip(username: str, realm: str, uri: str, algorithm: str, opaque: str | None,
                                password: str, nc: int) -> None:
    ch = DigestChallenge(realm, "abc123", algorithm, ("auth",), opaque)
    text = build_authorization(ch, method="INVITE", uri=uri, username=username, password=password,
                               cnonce="0a4f113b", nc=nc)
    creds = parse_credentials(text)
    assert creds is not None
    assert (creds.username, creds.realm, creds.nonce, creds.uri, creds.algorithm) == (
        username, realm, "abc123", uri, algorithm)
    assert (creds.qop, creds.nc, creds.cnonce, creds.opaque) == ("auth", f"{nc:08x}", "0a4f113b", opaque)
    assert len(creds.response) == (32 if algorithm == "MD5" else 64)


@PROPS
@given(TOKEN, st.text(min_size=1, max_size=16), URI, st.sampled_from(["INVITE", "REGISTER", "BYE"]),
       st.floats(0, 1e6, allow_nan=False))
def test_an_answer_verifies_once_and_only_as_it_was_made(user: str, password: str, uri: str, method: str,
                                                         now: float) -> None:
    server = DigestChallenger(b"0123456789abcdef-secret", "carrier.example")
    headers = [parse_challenge(h) for h in server.challenge(now)]
    # one nonce, offered once per algorithm in preference order (RFC 8760 §2.4)
    assert [h.algorithm for h in headers] == ["SHA-256", "MD5"] and len({h.nonce for h in headers}) == 1
    ch = headers[0]
    good = parse_credentials(build_authorization(ch, method=method, uri=uri, username=user, password=password))
    wrong = parse_credentials(build_authorization(ch, method=method, uri=uri, username=user,
                                                  password=password + "x"))
    assert good is not None and wrong is not None
    assert server.verify(wrong, method=method, password=password, now=now) is AuthResult.FAILED
    # the nonce was used by the wrong attempt: single use, whatever the outcome
    assert server.verify(good, method=method, password=password, now=now) is AuthResult.STALE

    ch = parse_challenge(server.challenge(now)[0])
    good = parse_credentials(build_authorization(ch, method=method, uri=uri, username=user, password=password))
    assert good is not None
    other = "ACK" if method != "ACK" else "BYE"
    fresh = parse_challenge(server.challenge(now)[0])
    other_method = parse_credentials(build_authorization(fresh, method=other, uri=uri, username=user,
                                                         password=password))
    assert other_method is not None
    assert server.verify(other_method, method=method, password=password, now=now) is AuthResult.FAILED
    assert server.verify(good, method=method, password=password, now=now, uri=uri + "x") is AuthResult.FAILED
    third = parse_challenge(server.challenge(now)[0])
    ok = parse_credentials(build_authorization(third, method=method, uri=uri, username=user, password=password))
    assert ok is not None
    assert server.verify(ok, method=method, password=password, now=now + 1, uri=uri) is AuthResult.OK
    assert server.verify(ok, method=method, password=password, now=now + 1, uri=uri) is AuthResult.STALE   # replay
    late = parse_challenge(server.challenge(now)[0])
    expired = parse_credentials(build_authorization(late, method=method, uri=uri, username=user, password=password))
    assert expired is not None
    assert server.verify(expired, method=method, password=password, now=now + 301) is AuthResult.STALE


@PROPS
@given(st.integers(0, 59), st.sampled_from("0123456789abcdef"))
def test_an_altered_nonce_never_verifies(pos: int, char: str) -> None:
    server = DigestChallenger(b"0123456789abcdef-secret", "carrier.example")
    ch = parse_challenge(server.challenge(100.0)[0])
    nonce = ch.nonce[:pos] + char + ch.nonce[pos + 1:]
    if nonce == ch.nonce:
        return
    forged = DigestChallenge(ch.realm, nonce, ch.algorithm, ch.qop)
    creds = parse_credentials(build_authorization(forged, method="INVITE", uri="sip:a@b", username="jego",
                                                  password="pw"))
    assert creds is not None
    assert server.verify(creds, method="INVITE", password="pw", now=100.0) is AuthResult.FAILED


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_header_parsers_raise_only_sip_parse_errors(value: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        status = 0
        try:
            parse(value)
        except SipParseError as exc:   # a 400 with words; any other exception fails the test
            status = exc.status
        assert status in (0, 400)
