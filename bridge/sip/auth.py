"""HTTP Digest for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760): MD5 and SHA-256, qop=auth.

Server (e.g. the carrier as registrar/UAS):
    challenger = DigestChallenger(secret, "carrier.example")
    creds = parse_credentials(request.headers.get("Authorization"))   # None: none / other scheme
    if limiter.is_blocked(src_ip, now):            -> reject 403 (no challenge)
    result = challenger.verify(creds, method=..., password=..., now=now) if creds else AuthResult.MISSING
    OK -> go on; STALE -> 401 with challenger.challenge(now, stale=True); else limiter.record_failure(...)
          and 401 with challenger.challenge(now) (one WWW-Authenticate per value).
Client (e.g. the bridge registering to the trunk or calling through it):
    retry = authorize_retry(sent_request, resp_401_or_407, username=..., password=..., realm=None)
    if retry is not None: endpoint.send_request(retry, dest, now)   # CSeq + 1, (Proxy-)Authorization
    (lower level: pick_challenge(resp) -> (header name, challenge); build_authorization(challenge, ...))
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import StrEnum

from .errors import SipError, SipParseError
from .message import SipRequest, SipResponse
from .uri import TOKEN_CHARS, quote, read_quoted, skip_ws

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def _h(algorithm: str, text: str) -> str:
    try:
        fn = ALGORITHMS[algorithm.upper()]
    except KeyError:
        raise SipParseError(f"unsupported digest algorithm {algorithm[:20]!r}") from None
    return fn(text.encode("utf-8")).hexdigest()


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """`Scheme k=v, k="v", ...` -> (scheme, {lower-case key: unquoted value}). Raises SipParseError."""
    i = skip_ws(value, 0)
    start = i
    while i < len(value) and value[i] in TOKEN_CHARS:
        i += 1
    scheme = value[start:i]
    if not scheme:
        raise SipParseError("auth header: missing scheme")
    params: dict[str, str] = {}
    while True:
        i = skip_ws(value, i)
        if i >= len(value):
            return scheme, params
        start = i
        while i < len(value) and value[i] in TOKEN_CHARS:
            i += 1
        name = value[start:i].lower()
        i = skip_ws(value, i)
        if not name or i >= len(value) or value[i] != "=":
            raise SipParseError("auth header: malformed parameter")
        i = skip_ws(value, i + 1)
        if i < len(value) and value[i] == '"':
            text, i = read_quoted(value, i, "auth header")
        else:
            start = i
            while i < len(value) and value[i] not in ", \t":
                i += 1
            text = value[start:i]
        if name in params:
            raise SipParseError(f"auth header: duplicate parameter {name!r}")
        params[name] = text
        i = skip_ws(value, i)
        if i < len(value):
            if value[i] != ",":
                raise SipParseError("auth header: expected ','")
            i += 1


@dataclass(frozen=True)
class DigestChallenge:
    """A WWW-Authenticate / Proxy-Authenticate Digest challenge; `str()` formats the header value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ("auth",)
    opaque: str | None = None
    stale: bool = False

    def __str__(self) -> str:
        out = f"Digest realm={quote(self.realm)}, nonce={quote(self.nonce)}, algorithm={self.algorithm}"
        if self.qop:
            out += f", qop={quote(','.join(self.qop))}"
        if self.opaque is not None:
            out += f", opaque={quote(self.opaque)}"
        if self.stale:
            out += ", stale=true"
        return out


def parse_challenge(value: str) -> DigestChallenge:
    scheme, p = parse_auth_params(value)
    if scheme.lower() != "digest":
        raise SipParseError(f"unsupported auth scheme {scheme[:20]!r}")
    if "realm" not in p or "nonce" not in p:
        raise SipParseError("Digest challenge without realm or nonce")
    qop = tuple(q.strip() for q in p.get("qop", "").split(",") if q.strip())
    return DigestChallenge(p["realm"], p["nonce"], p.get("algorithm", "MD5").upper(), qop,
                           p.get("opaque"), p.get("stale", "").lower() == "true")


@dataclass(frozen=True)
class DigestCredentials:
    """An Authorization / Proxy-Authorization Digest header."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    def __str__(self) -> str:
        out = (f"Digest username={quote(self.username)}, realm={quote(self.realm)}, "
               f"nonce={quote(self.nonce)}, uri={quote(self.uri)}, response={quote(self.response)}, "
               f"algorithm={self.algorithm}")
        if self.qop:
            out += f", qop={self.qop}, nc={self.nc}, cnonce={quote(self.cnonce or '')}"
        if self.opaque is not None:
            out += f", opaque={quote(self.opaque)}"
        return out


def parse_credentials(value: str | None) -> DigestCredentials | None:
    """Digest credentials, or None when absent or of another scheme (RFC 4475 regaut01).
    Raises SipParseError when a Digest header is malformed."""
    if value is None:
        return None
    scheme, p = parse_auth_params(value)
    if scheme.lower() != "digest":
        return None
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in p:
            raise SipParseError(f"Digest credentials without {name}")
    return DigestCredentials(p["username"], p["realm"], p["nonce"], p["uri"], p["response"].lower(),
                             p.get("algorithm", "MD5").upper(), p.get("qop"), p.get("nc"),
                             p.get("cnonce"), p.get("opaque"))


def digest_response(*, algorithm: str, username: str, realm: str, password: str, method: str,
                    uri: str, nonce: str, qop: str | None = None, nc: str | None = None,
                    cnonce: str | None = None) -> str:
    """request-digest of RFC 2617 §3.2.2.1 / RFC 7616 §3.4.1 (qop=auth or none)."""
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


def build_authorization(challenge: DigestChallenge, *, method: str, uri: str, username: str,
                        password: str, cnonce: str | None = None, nc: int = 1) -> str:
    """The Authorization / Proxy-Authorization value answering `challenge` (qop=auth if offered)."""
    qop = "auth" if "auth" in challenge.qop else None
    cnonce = cnonce or secrets.token_hex(8)
    nc_text = f"{nc:08x}"
    response = digest_response(algorithm=challenge.algorithm, username=username, realm=challenge.realm,
                               password=password, method=method, uri=uri, nonce=challenge.nonce,
                               qop=qop, nc=nc_text if qop else None, cnonce=cnonce if qop else None)
    return str(DigestCredentials(username, challenge.realm, challenge.nonce, uri, response,
                                 challenge.algorithm, qop, nc_text if qop else None,
                                 cnonce if qop else None, challenge.opaque))


def pick_challenge(response: SipResponse, *, realm: str | None = None) -> tuple[str, DigestChallenge] | None:
    """For a 401/407: (credentials header name, challenge) for the first Digest challenge whose
    algorithm we support (RFC 8760 §2.4: the server lists its preference first) and, if `realm` is
    given, from that realm. None when there is none we can answer."""
    if response.status == 407:
        name, creds = "Proxy-Authenticate", "Proxy-Authorization"
    else:
        name, creds = "WWW-Authenticate", "Authorization"
    for value in response.headers.get_all(name):
        try:
            ch = parse_challenge(value)
        except SipError:
            continue
        if ch.algorithm.upper() in ALGORITHMS and (realm is None or ch.realm == realm):
            return creds, ch
    return None


def authorize_retry(request: SipRequest, response: SipResponse, *, username: str, password: str,
                    realm: str | None = None) -> SipRequest | None:
    """The request to send after `response` (401/407) challenged `request` (RFC 3261 §22.2, §8.1.3.5):
    a copy without Via (the endpoint adds one with a fresh branch), CSeq + 1, same Call-ID and From
    tag, earlier credentials replaced by the answer to the challenge. None if it cannot be answered.
    Pass it to `SipEndpoint.send_request`."""
    picked = pick_challenge(response, realm=realm)
    if picked is None:
        return None
    name, challenge = picked
    headers = request.headers.copy()
    for stale in ("Via", "Authorization", "Proxy-Authorization"):
        headers.remove(stale)
    seq = request.cseq.seq + 1
    headers.set("CSeq", f"{seq} {request.method}")
    headers.add(name, build_authorization(challenge, method=request.method, uri=str(request.uri),
                                          username=username, password=password))
    return SipRequest(request.method, request.uri, headers, request.body)


class AuthResult(StrEnum):
    OK = "ok"
    MISSING = "missing"    # no (Digest) credentials: challenge
    STALE = "stale"        # our nonce, but expired or already used: challenge with stale=true
    FAILED = "failed"      # wrong password, forged nonce, other realm/uri/algorithm: count it


class DigestChallenger:
    """Issues HMAC-signed, short-lived, single-use nonces and checks Digest credentials.

    Nonce = hex(ms timestamp) + salt + HMAC-SHA256(secret, timestamp:salt:realm): nothing is stored
    per challenge; only used nonces are remembered until they expire (bounded by `max_used`).
    """

    def __init__(self, secret: bytes, realm: str, *, algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
                 lifetime: float = 300.0, max_used: int = 100_000) -> None:
        if len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        for alg in algorithms:
            if alg not in ALGORITHMS:
                raise ValueError(f"unsupported algorithm {alg}")
        self._secret = secret
        self.realm = realm
        self.algorithms = algorithms
        self.lifetime = lifetime
        self.max_used = max_used
        self._used: OrderedDict[str, float] = OrderedDict()  # nonce -> issue time
        self._floor = -1.0  # nonces issued at or before this time count as used (after eviction)

    def _mac(self, stamp: str, salt: str) -> str:
        return hmac.new(self._secret, f"{stamp}:{salt}:{self.realm}".encode(), hashlib.sha256).hexdigest()[:32]

    def new_nonce(self, now: float) -> str:
        stamp = f"{max(0, int(now * 1000)):012x}"
        salt = secrets.token_hex(8)
        return stamp + salt + self._mac(stamp, salt)

    def challenge(self, now: float, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate values, one per algorithm in preference order (RFC 8760 §2.4), sharing
        one nonce."""
        nonce = self.new_nonce(now)
        return [str(DigestChallenge(self.realm, nonce, alg, ("auth",), None, stale)) for alg in self.algorithms]

    def _issued_at(self, nonce: str) -> float | None:
        if len(nonce) != 60 or any(c not in "0123456789abcdef" for c in nonce):
            return None
        stamp, salt, mac = nonce[:12], nonce[12:28], nonce[28:]
        if not hmac.compare_digest(mac, self._mac(stamp, salt)):
            return None
        return int(stamp, 16) / 1000.0

    def _purge(self, now: float) -> None:
        while self._used:
            nonce, issued = next(iter(self._used.items()))
            if issued + self.lifetime < now or len(self._used) > self.max_used:
                self._used.popitem(last=False)
                if issued + self.lifetime >= now:
                    self._floor = max(self._floor, issued)
            else:
                break

    def verify(self, creds: DigestCredentials, *, method: str, password: str, now: float,
               uri: str | None = None) -> AuthResult:
        """Check `creds` for a request of `method` (and Request-URI `uri`, if given)."""
        self._purge(now)
        issued = self._issued_at(creds.nonce)
        if issued is None or creds.realm != self.realm or creds.algorithm not in self.algorithms:
            return AuthResult.FAILED
        if uri is not None and creds.uri != uri:
            return AuthResult.FAILED
        if now - issued > self.lifetime or issued - now > 1.0 or issued <= self._floor \
                or creds.nonce in self._used:
            return AuthResult.STALE
        self._used[creds.nonce] = issued  # single use, whatever the outcome
        if creds.qop != "auth" or not creds.nc or not creds.cnonce:
            return AuthResult.FAILED
        expected = digest_response(algorithm=creds.algorithm, username=creds.username, realm=self.realm,
                                   password=password, method=method, uri=creds.uri, nonce=creds.nonce,
                                   qop="auth", nc=creds.nc, cnonce=creds.cnonce)
        return AuthResult.OK if hmac.compare_digest(expected, creds.response) else AuthResult.FAILED


class AuthFailureLimiter:
    """At most `max_failures` failed authentications per source in a sliding `window` (seconds);
    once reached, `is_blocked` is True and the caller answers 403 without a challenge."""

    def __init__(self, max_failures: int = 20, window: float = 60.0, *, max_sources: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_sources = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str, now: float) -> deque[float] | None:
        times = self._failures.get(source)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times

    def record_failure(self, source: str, now: float) -> None:
        times = self._recent(source, now)
        if times is None:
            times = deque(maxlen=self.max_failures)
            self._failures[source] = times
            while len(self._failures) > self.max_sources:
                self._failures.popitem(last=False)
        self._failures.move_to_end(source)
        times.append(now)

    def failures(self, source: str, now: float) -> int:
        times = self._recent(source, now)
        return len(times) if times else 0

    def is_blocked(self, source: str, now: float) -> bool:
        return self.failures(source, now) >= self.max_failures

    def reset(self, source: str) -> None:
        self._failures.pop(source, None)
