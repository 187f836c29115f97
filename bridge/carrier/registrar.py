"""[pure] The trunk's doors: digest authentication with a lockout (`TrunkAuth`) and the
registrar (`Registrar`, RFC 3261 §10.3). Both take `now` and return decisions; the trunk
(bridge/carrier/trunk.py) sends what they decide.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ..sip.auth import AuthFailureLimiter, AuthResult, DigestChallenger, parse_credentials
from ..sip.errors import Forbidden, SipError
from ..sip.message import SipRequest
from ..sip.transaction import Addr
from .scenarios import CarrierConfig, TrunkAccount

# --------------------------------------------------------------------------------------------
# digest authentication with a lockout (pure)


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """`account` when the request may proceed; otherwise `error` is the response to send
    (401/407 with a fresh challenge, or 403 without one)."""

    account: TrunkAccount | None = None
    error: SipError | None = None
    counted_failure: bool = False


class TrunkAuth:
    """Digest auth for REGISTER (401 + WWW-Authenticate) and INVITE (407 + Proxy-Authenticate,
    as a trunk's SBC is a proxy to its customers: RFC 3261 §22.3). Nonces are single-use and live
    `nonce_ttl_s`; `max_auth_failures` failures from one source IP within `auth_window_s` get 403
    without a challenge until the window has passed. Call `check(request, source_ip, now)`."""

    def __init__(self, cfg: CarrierConfig, *, secret: bytes | None = None,
                 algorithms: tuple[str, ...] = ("MD5",)) -> None:
        self.cfg = cfg
        # MD5 only by default: sipp and baresip 1.0 know no other, and several WWW-Authenticate
        # values confuse clients that read the first header only (RFC 8760 §2.4 allows either).
        self.challenger = DigestChallenger(secret or secrets.token_bytes(32), cfg.sip.realm,
                                           algorithms=algorithms, lifetime=cfg.sip.nonce_ttl_s)
        self.limiter = AuthFailureLimiter(cfg.sip.max_auth_failures, cfg.sip.auth_window_s)

    def _challenge(self, proxy: bool, now: float, stale: bool = False) -> SipError:
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        values = self.challenger.challenge(now, stale=stale)
        return SipError(407 if proxy else 401, None, headers=[(name, v) for v in values])

    def check(self, request: SipRequest, source_ip: str, now: float) -> AuthDecision:
        proxy = request.method != "REGISTER"
        if self.limiter.is_blocked(source_ip, now):
            return AuthDecision(error=Forbidden("Too many failed authentications"))
        header = request.headers.get("Proxy-Authorization" if proxy else "Authorization")
        if header is None and proxy:
            header = request.headers.get("Authorization")  # lenient: some UAs answer 407 with it
        try:
            creds = parse_credentials(header)
        except SipError:
            creds = None
            self.limiter.record_failure(source_ip, now)
            return AuthDecision(error=self._challenge(proxy, now), counted_failure=True)
        if creds is None:
            return AuthDecision(error=self._challenge(proxy, now))
        account = self.cfg.trunk(creds.username)
        if account is None:
            self.limiter.record_failure(source_ip, now)
            return AuthDecision(error=self._challenge(proxy, now), counted_failure=True)
        # The digest uri need not equal the Request-URI: sipp sends sip:<ip>:<port>.
        result = self.challenger.verify(creds, method=request.method, password=account.password, now=now)
        if result == AuthResult.STALE:
            return AuthDecision(error=self._challenge(proxy, now, stale=True))
        if result != AuthResult.OK:
            self.limiter.record_failure(source_ip, now)
            if self.limiter.is_blocked(source_ip, now):
                return AuthDecision(error=Forbidden("Too many failed authentications"), counted_failure=True)
            return AuthDecision(error=self._challenge(proxy, now), counted_failure=True)
        if not account.allows(source_ip):
            return AuthDecision(error=Forbidden(f"Account {account.username} may not be used from {source_ip}"))
        return AuthDecision(account=account)


# --------------------------------------------------------------------------------------------
# registrar (pure)


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered Contact of a trunk account (RFC 3261 §10.3)."""

    account: str
    contact: str          # the Contact URI, e.g. sip:jego@127.0.0.1:5080;transport=udp
    addr: Addr            # where the REGISTER came from: requests to the account go there
    transport: str        # "udp" | "tcp"
    expires_at: float     # on the carrier's clock
    registered_at: float

    def expires_in(self, now: float) -> int:
        return max(0, round(self.expires_at - now))


class Registrar:
    """Bindings per trunk account. `register(account, request, addr, transport, now)` applies a
    REGISTER (raises SipError 423/400) and returns the bindings to list in the 200 OK."""

    MAX_BINDINGS = 10

    def __init__(self, min_expires: int = 60, max_expires: int = 3600) -> None:
        self.min_expires = min_expires
        self.max_expires = max_expires
        self._bindings: dict[str, dict[str, Binding]] = {}

    def register(self, account: str, request: SipRequest, addr: Addr, transport: str,
                 now: float) -> list[Binding]:
        header_expires = request.headers.get("Expires")
        default = self.max_expires
        if header_expires is not None:
            if not header_expires.strip().isdigit():
                raise SipError(400, "Expires is not a number")
            default = int(header_expires.strip())
        table = self._bindings.setdefault(account, {})
        if request.contact_is_wildcard:
            if default != 0:  # §10.3 step 6: "*" only with Expires: 0
                raise SipError(400, "Contact: * needs Expires: 0")
            table.clear()
            return []
        updates: list[tuple[str, int]] = []
        for contact in request.contacts:
            raw = contact.param("expires")
            expires = int(raw) if raw is not None and raw.isdigit() else default
            if 0 < expires < self.min_expires:
                raise SipError(423, None, headers=[("Min-Expires", str(self.min_expires))])
            updates.append((str(contact.uri), min(expires, self.max_expires)))
        for uri, expires in updates:
            if expires == 0:
                table.pop(uri, None)
            else:
                table[uri] = Binding(account, uri, addr, transport, now + expires, now)
        self._purge(account, now)
        if len(table) > self.MAX_BINDINGS:
            for uri in sorted(table, key=lambda u: table[u].registered_at)[:-self.MAX_BINDINGS]:
                del table[uri]
        return self.bindings(account, now)

    def _purge(self, account: str, now: float) -> None:
        table = self._bindings.get(account, {})
        for uri in [u for u, b in table.items() if b.expires_at <= now]:
            del table[uri]

    def bindings(self, account: str, now: float) -> list[Binding]:
        self._purge(account, now)
        return sorted(self._bindings.get(account, {}).values(), key=lambda b: b.registered_at)

    def latest(self, account: str, now: float) -> Binding | None:
        """The most recent live binding: where carrier-originated calls for `account` go."""
        found = self.bindings(account, now)
        return found[-1] if found else None
