"""bridge.sip.auth: digest vectors (RFC 2617 §3.5, RFC 7616 §3.9.1), challenger, limiter."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.sip.auth import (
    AuthFailureLimiter,
    AuthResult,
    DigestChallenger,
    DigestCredentials,
    build_authorization,
    digest_response,
    parse_challenge,
    parse_credentials,
)
from bridge.sip.errors import SipParseError
from bridge.sip.message import parse_message

SECRET = b"0123456789abcdef-test-secret"
REALM = "carrier.example"


def test_rfc2617_md5_vector() -> None:
    assert digest_response(algorithm="MD5", username="Mufasa", realm="testrealm@host.com",
                           password="Circle Of Life", method="GET", uri="/dir/index.html",
                           nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth", nc="00000001",
                           cnonce="0a4f113b") == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_vectors(algorithm: str, expected: str) -> None:
    assert digest_response(algorithm=algorithm, username="Mufasa", realm="http-auth@example.org",
                           password="Circle of Life", method="GET", uri="/dir/index.html",
                           nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth", nc="00000001",
                           cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ") == expected


def test_client_header_matches_vector() -> None:
    challenge = parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                                'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert challenge.qop == ("auth", "auth-int") and challenge.algorithm == "MD5" and not challenge.stale
    value = build_authorization(challenge, method="GET", uri="/dir/index.html", username="Mufasa",
                                password="Circle Of Life", cnonce="0a4f113b")
    creds = parse_credentials(value)
    assert creds is not None
    assert creds.response == "6629fae49393a05397450978507c4ef1" and creds.nc == "00000001"
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41" and creds.qop == "auth"


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_challenge_answer_verify_single_use(algorithm: str) -> None:
    server = DigestChallenger(SECRET, REALM)
    values = server.challenge(100.0)
    assert [parse_challenge(v).algorithm for v in values] == ["SHA-256", "MD5"]  # RFC 8760 preference
    challenge = next(parse_challenge(v) for v in values if parse_challenge(v).algorithm == algorithm)
    header = build_authorization(challenge, method="REGISTER", uri="sip:carrier.example",
                                 username="jego-trunk", password="s3cret")
    creds = parse_credentials(header)
    assert creds is not None and creds.algorithm == algorithm
    assert server.verify(creds, method="REGISTER", password="s3cret", now=101.0,
                         uri="sip:carrier.example") == AuthResult.OK
    # the same nonce again (a replay): stale, so an honest client just retries with a fresh one
    assert server.verify(creds, method="REGISTER", password="s3cret", now=102.0) == AuthResult.STALE
    stale = server.challenge(102.0, stale=True)
    assert parse_challenge(stale[0]).stale and "stale=true" in stale[0]


def test_wrong_password_forged_nonce_other_realm_fail() -> None:
    server = DigestChallenger(SECRET, REALM)

    def creds_for(password: str, *, realm: str = REALM, nonce: str | None = None) -> DigestCredentials:
        ch = parse_challenge(server.challenge(0.0)[0])
        value = build_authorization(parse_challenge(str(ch).replace(ch.realm, realm).replace(
            ch.nonce, nonce or ch.nonce)), method="INVITE", uri="sip:x@carrier.example", username="u",
            password=password)
        parsed = parse_credentials(value)
        assert parsed is not None
        return parsed

    assert server.verify(creds_for("wrong"), method="INVITE", password="right", now=1.0) == AuthResult.FAILED
    forged = "0" * 12 + "1" * 16 + "2" * 32
    assert server.verify(creds_for("right", nonce=forged), method="INVITE", password="right",
                         now=1.0) == AuthResult.FAILED
    assert server.verify(creds_for("right", realm="evil.example"), method="INVITE", password="right",
                         now=1.0) == AuthResult.FAILED
    other = DigestChallenger(b"another-secret-of-16+bytes", REALM)  # nonce from another server
    assert other.verify(creds_for("right"), method="INVITE", password="right", now=1.0) == AuthResult.FAILED
    good = creds_for("right")
    assert server.verify(good, method="INVITE", password="right", now=1.0,
                         uri="sip:other@carrier.example") == AuthResult.FAILED  # digest-uri must match


def test_nonce_expires() -> None:
    server = DigestChallenger(SECRET, REALM, lifetime=30.0)
    ch = parse_challenge(server.challenge(1000.0)[0])
    creds = parse_credentials(build_authorization(ch, method="REGISTER", uri="sip:carrier.example",
                                                  username="u", password="p"))
    assert creds is not None
    assert server.verify(creds, method="REGISTER", password="p", now=1031.0) == AuthResult.STALE


def test_used_nonce_memory_is_bounded_but_replays_stay_stale() -> None:
    server = DigestChallenger(SECRET, REALM, max_used=10)
    all_creds = []
    for i in range(30):
        ch = parse_challenge(server.challenge(float(i))[0])
        c = parse_credentials(build_authorization(ch, method="REGISTER", uri="sip:c", username="u", password="p"))
        assert c is not None
        assert server.verify(c, method="REGISTER", password="p", now=float(i)) == AuthResult.OK
        all_creds.append(c)
    assert len(server._used) <= 11
    for c in all_creds:  # evicted ones are below the floor: still refused
        assert server.verify(c, method="REGISTER", password="p", now=31.0) == AuthResult.STALE


def test_limiter_blocks_after_20_failures_in_60s() -> None:
    limiter = AuthFailureLimiter()
    for i in range(19):
        limiter.record_failure("198.51.100.7", float(i))
    assert not limiter.is_blocked("198.51.100.7", 19.0)
    limiter.record_failure("198.51.100.7", 19.0)
    assert limiter.is_blocked("198.51.100.7", 19.0) and limiter.failures("198.51.100.7", 19.0) == 20
    assert not limiter.is_blocked("192.0.2.1", 19.0)  # per source
    assert limiter.is_blocked("198.51.100.7", 59.9)
    assert not limiter.is_blocked("198.51.100.7", 60.5)  # the first failure left the window
    assert limiter.failures("198.51.100.7", 200.0) == 0


def test_limiter_memory_is_bounded() -> None:
    limiter = AuthFailureLimiter(max_failures=3, window=60.0, max_sources=100)
    for i in range(1000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}", 1.0)
    assert len(limiter._failures) <= 100


def test_parse_credentials_schemes_and_errors() -> None:
    assert parse_credentials(None) is None
    assert parse_credentials("NoOneKnowsThisScheme opaque-data=here") is None  # RFC 4475 regaut01
    with pytest.raises(SipParseError):
        parse_credentials('Digest username="a", realm="b"')  # no nonce/uri/response
    with pytest.raises(SipParseError):
        parse_credentials('Digest username="a" realm="b"')  # missing comma
    with pytest.raises(SipParseError):
        parse_challenge('Basic realm="x"')
    msg = parse_message((Path(__file__).resolve().parents[1] / "data" / "sip" / "register_digest.sip").read_bytes())
    creds = parse_credentials(msg.headers.get("Authorization"))
    assert creds is not None and creds.username == "jego-trunk" and creds.uri == "sip:carrier.example"
    assert creds.cnonce == "0a4f113b" and creds.qop == "auth"
