"""[pure] Short-lived TURN credentials: the TURN REST API scheme coturn implements with
`use-auth-secret` / `static-auth-secret` (draft-uberti-behave-turn-rest-00 §2.2).

    servers, expires_at = ice_servers_for(cfg.ice, "alice", now=time.time())

The username is "EXPIRY:USER" (EXPIRY in Unix seconds), the password
base64(HMAC-SHA1(secret, username)); coturn recomputes the password from its copy of the secret
and refuses a username whose EXPIRY has passed. The secret never leaves the server: clients get
only their own username and password, refreshed (an `ice_servers` push) before they expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import IceConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def turn_credentials(secret: str, user: str, now: float, ttl_s: int) -> tuple[str, str, int]:
    """(username, password, expiry) for `user`, valid `ttl_s` from `now` (Unix seconds)."""
    expiry = int(now) + int(ttl_s)
    username = f"{expiry}:{_UNSAFE.sub('.', user)}"  # no ':' after the expiry (coturn's separator)
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii"), expiry


def ice_servers_for(ice: IceConfig, user: str, now: float) -> tuple[list[dict[str, Any]], int | None]:
    """The ICE servers for one client: `[ice] servers` plus, with `[ice] turn_urls`, the TURN
    servers with this client's own credentials; and when those expire (None: nothing expires)."""
    servers = [dict(s) for s in ice.servers]
    if not ice.turn_urls or not ice.turn_secret:
        return servers, None
    username, password, expiry = turn_credentials(ice.turn_secret, user, now, ice.turn_ttl_s)
    servers.append({"urls": list(ice.turn_urls), "username": username, "credential": password})
    return servers, expiry


def refresh_after_s(ice: IceConfig) -> float:
    """When to push fresh credentials to a connected client: at half their lifetime."""
    return ice.turn_ttl_s / 2.0
