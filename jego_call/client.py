"""A client of the Jego Call signalling protocol (docs/signalling.md), on aiohttp.

    async with JegoClient("http://127.0.0.1:8080") as c:
        await c.login("alice", "secret-pass")          # or register(); sets c.token
        auth_ok = await c.connect()                    # opens /ws and authenticates
        await c.invite(call_id, "bob", offer_sdp)
        msg = await c.recv(timeout=1.0)                # next server message, or None
        ...

Incoming `invite`s are answered with `ringing` automatically (`auto_ringing=True`).
After the WebSocket drops (a node restarted), `await c.reconnect()` opens it again with the same
token (no password, no login), waiting a jittered, exponentially growing delay (`Backoff`)
between attempts, so that thousands of clients do not all come back in the same instant.
Several nodes (a cluster): `JegoClient(urls=[node_a, node_b])` connects to the first, and each
`reconnect()` attempt moves to the next node of the list, round-robin, so the clients of a dead
node come back on a surviving one (`c.url` is the node in use; HTTP calls follow it).
Errors: `ServerUnreachable` (no TCP/HTTP contact), `ApiError` (an error the server returned,
with `.code` from the protocol's error table), `ConnectionLost` (the WebSocket closed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from .errors import JegoError


class ServerUnreachable(JegoError):
    """The server could not be contacted (refused, DNS, timeout, not HTTP)."""


class ApiError(JegoError):
    """The server answered with a protocol error; `code` is e.g. "auth_failed"."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ConnectionLost(JegoError):
    """The signalling WebSocket closed."""


def _why(exc: BaseException) -> str:
    """A short reason for a connection failure ("Connection refused", "timed out")."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return str(os_error.strerror)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class Backoff:
    """Jittered exponential back-off ("full jitter"): the n-th delay (n from 0) is uniform in
    [0, min(cap_s, base_s * 2**n)], so it never exceeds `cap_s`; `reset()` after a success.

        b = Backoff(random.Random(1)); b.next_delay()  # seeded: the same delays every run
    """

    def __init__(self, rng: random.Random | None = None, *, base_s: float = 1.0, cap_s: float = 10.0) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s} cap_s={cap_s}")
        self.rng = rng or random.Random()
        self.base_s, self.cap_s = base_s, cap_s
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 60))

    def next_delay(self) -> float:
        """The next delay in seconds (and one more attempt counted)."""
        d = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0


def iter_queue(q: asyncio.Queue[Any]) -> list[Any]:
    """Everything in `q` now, taken out."""
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def new_call_id() -> str:
    """A fresh call_id (32 hex characters, within the protocol's 8-64 [A-Za-z0-9_-])."""
    return uuid.uuid4().hex


class JegoClient:
    """HTTP API + one WebSocket session. Use as an async context manager, or call `close()`."""

    def __init__(self, url: str | None = None, *, urls: Sequence[str] = (), timeout: float = 10.0,
                 auto_ringing: bool = True, http: aiohttp.ClientSession | None = None) -> None:
        """`http`: a ClientSession to share (many clients in one process); close() leaves it open.

        `urls`: every node to use, in order (a cluster's nodes; a host name with several
        addresses needs no list: aiohttp tries each address). `url` is the one to start on (the
        first of `urls` when omitted; put in front of them when not among them). `reconnect()`
        moves through them round-robin; `next_url()` moves by hand."""
        given = [u.rstrip("/") for u in urls]
        start = url.rstrip("/") if url is not None else (given[0] if given else None)
        if start is None:
            raise ValueError("JegoClient needs a url or urls")
        self.urls: list[str] = list(dict.fromkeys(given if start in given else [start, *given]))
        self.url = start
        self.timeout = timeout
        self.auto_ringing = auto_ringing
        self.token: str | None = None
        self.username: str | None = None
        self.session_id: str | None = None
        self.ice_servers: list[dict[str, Any]] = []
        self.ice_transport_policy = "all"   # auth_ok's: "relay" = TURN relay candidates only
        self._http: aiohttp.ClientSession | None = http
        self._own_http = http is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pending: collections.deque[dict[str, Any]] = collections.deque()  # set aside by send_message
        self._reader: asyncio.Task[None] | None = None
        self.closed = False
        self.reconnect_attempts = 0   # connect() attempts the last reconnect() made

    async def __aenter__(self) -> JegoClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def next_url(self) -> str:
        """Move to the node after `url` in `urls` (round-robin; the same one when there is one)
        and return it. `reconnect()` does this before each attempt."""
        i = self.urls.index(self.url) if self.url in self.urls else -1
        self.url = self.urls[(i + 1) % len(self.urls)]
        return self.url

    @property
    def connected(self) -> bool:
        """Whether the signalling WebSocket is open now (authenticated, being read)."""
        return self._reader is not None and not self._reader.done() and self._ws is not None and not self._ws.closed

    @property
    def ws_url(self) -> str:
        if self.url.startswith("https://"):
            return "wss://" + self.url[len("https://"):] + "/ws"
        return "ws://" + self.url.removeprefix("http://") + "/ws"

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._http

    # --- HTTP API ----------------------------------------------------------------------
    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON API call; returns the decoded body (None for 204). Raises ApiError/ServerUnreachable."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._session().request(method, self.url + path, json=body, headers=headers) as res:
                text = await res.text()
                data = json.loads(text) if text else None
                if res.status >= 400:
                    err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
                    raise ApiError(str(err.get("code", f"http_{res.status}")),
                                   str(err.get("message", res.reason)), res.status)
                return data
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
            raise ServerUnreachable(f"cannot reach {self.url}: {_why(exc)}") from None
        except (json.JSONDecodeError, aiohttp.ContentTypeError):
            raise ServerUnreachable(f"{self.url} did not answer like a Jego Call server") from None

    async def register(self, username: str, password: str) -> dict[str, Any]:
        """Create an account; keeps its token. Then `connect()`."""
        data = await self.request("POST", "/api/register", {"username": username, "password": password})
        self.token, self.username = data["token"], data["username"]
        return dict(data)

    async def login(self, username: str, password: str) -> dict[str, Any]:
        """Log in; keeps the token (ApiError code auth_failed on a wrong password). Then `connect()`."""
        data = await self.request("POST", "/api/login", {"username": username, "password": password})
        self.token, self.username = data["token"], data["username"]
        return dict(data)

    async def me(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/api/me"))

    async def contacts(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/api/contacts"))["contacts"])

    async def add_contact(self, username: str) -> dict[str, Any]:
        return dict(await self.request("POST", "/api/contacts", {"username": username}))

    async def remove_contact(self, username: str) -> None:
        await self.request("DELETE", f"/api/contacts/{quote(username, safe='')}")

    async def blocked(self) -> list[dict[str, Any]]:
        """Everyone you have blocked: [{"username", "display_name"}]."""
        return list((await self.request("GET", "/api/blocks"))["blocked"])

    async def block(self, username: str) -> dict[str, Any]:
        """Block `username`: they can no longer call or message you (they are told "not available")."""
        return dict(await self.request("POST", "/api/blocks", {"username": username}))

    async def unblock(self, username: str) -> None:
        await self.request("DELETE", f"/api/blocks/{quote(username, safe='')}")

    async def config(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/api/config"))

    async def healthz(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/healthz"))

    # --- messaging (docs/signalling.md, ## Messaging) ------------------------------------
    async def upload_media(self, path: str | Path, kind: str | None = None,
                           filename: str | None = None) -> dict[str, Any]:
        """POST /api/media with the file's bytes streamed; returns the media object (`id`, `kind`...).

        The server tells the kind from the content; pass `kind` ("photo", "voice", "file") to insist.
        Then `send_message(to, media_id=...)`.
        """
        p = Path(path)
        query = {"filename": filename or p.name}
        if kind is not None:
            query["kind"] = kind
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/octet-stream"}
        fh = await asyncio.to_thread(p.open, "rb")
        try:
            async with self._session().post(self.url + "/api/media", data=fh, params=query,
                                            headers=headers) as res:
                data = await res.json(content_type=None)
                if res.status >= 400:
                    err = data.get("error", {}) if isinstance(data, dict) else {}
                    raise ApiError(str(err.get("code", f"http_{res.status}")),
                                   str(err.get("message", res.reason)), res.status)
                return dict(data)
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise ServerUnreachable(f"cannot reach {self.url}: {_why(exc)}") from None
        except (json.JSONDecodeError, aiohttp.ContentTypeError):
            raise ServerUnreachable(f"{self.url} did not answer like a Jego Call server") from None
        finally:
            fh.close()

    async def conversations(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/api/conversations"))["conversations"])

    async def messages(self, with_user: str, before_seq: int | None = None,
                       limit: int | None = None) -> dict[str, Any]:
        """One page of history with `with_user`, oldest first: {"messages", "has_more", ...}."""
        query = "&".join(f"{k}={v}" for k, v in (("before_seq", before_seq), ("limit", limit)) if v is not None)
        path = f"/api/conversations/{quote(with_user, safe='')}/messages" + (f"?{query}" if query else "")
        return dict(await self.request("GET", path))

    # --- groups (docs/signalling.md, ## Groups) -----------------------------------------
    async def create_group(self, name: str, members: list[str]) -> dict[str, Any]:
        """POST /api/groups: the new group (`id`, `name`, `members`...); you are its admin."""
        return dict(await self.request("POST", "/api/groups", {"name": name, "members": members}))

    async def groups(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/api/groups"))["groups"])

    async def group(self, group_id: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/api/groups/{quote(group_id, safe='')}"))

    async def add_members(self, group_id: str, members: list[str]) -> dict[str, Any]:
        return dict(await self.request("POST", f"/api/groups/{quote(group_id, safe='')}/members",
                                       {"members": members}))

    async def remove_member(self, group_id: str, username: str) -> None:
        await self.request("DELETE", f"/api/groups/{quote(group_id, safe='')}/members/{quote(username, safe='')}")

    async def leave_group(self, group_id: str) -> None:
        await self.request("POST", f"/api/groups/{quote(group_id, safe='')}/leave")

    async def group_messages(self, group_id: str, before_seq: int | None = None,
                             limit: int | None = None) -> dict[str, Any]:
        """One page of a group's history, oldest first: {"group", "messages", "has_more"}."""
        query = "&".join(f"{k}={v}" for k, v in (("before_seq", before_seq), ("limit", limit)) if v is not None)
        path = f"/api/groups/{quote(group_id, safe='')}/messages" + (f"?{query}" if query else "")
        return dict(await self.request("GET", path))

    async def send_message(self, to: str, text: str | None = None, media_id: str | None = None,
                           client_id: str | None = None, timeout: float | None = None,  # noqa: ASYNC109
                           group: str | None = None) -> dict[str, Any]:
        """Send one message over the WebSocket and wait for its `message_ack` (the stored message).

        Needs `connect()`. Other messages that arrive meanwhile are kept for `recv()`. Raises
        ApiError with the server's code (not_contact, unknown_user, too_large...). With `group`,
        the message goes to that group (`to` is ignored).
        """
        client_id = client_id or uuid.uuid4().hex
        msg: dict[str, Any] = {"type": "send_message", "id": client_id, "client_id": client_id}
        if group is not None:
            msg["group"] = group
        else:
            msg["to"] = to
        if text is not None:
            msg["text"] = text
        if media_id is not None:
            msg["media_id"] = media_id
        await self.send(msg)
        skipped: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout or self.timeout):
                while True:
                    got = await self.recv()
                    if got is None:
                        continue
                    if got.get("type") == "message_ack" and got.get("client_id") == client_id:
                        return dict(got)
                    if got.get("type") == "error" and got.get("ref") == client_id:
                        raise ApiError(str(got.get("code")), str(got.get("message", "")))
                    skipped.append(got)
        finally:  # given back to recv() first, in the order they came (before anything later)
            self._pending.extendleft(reversed(skipped))

    # --- WebSocket -----------------------------------------------------------------------
    async def connect(self) -> dict[str, Any]:
        """Open /ws and authenticate with the token; returns auth_ok (also sets ice_servers)."""
        if self.token is None:
            raise ApiError("not_authenticated", "log in or register before connect()")
        try:
            self._ws = await self._session().ws_connect(self.ws_url, heartbeat=None, autoping=True)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ServerUnreachable(f"cannot open {self.ws_url}: {_why(exc)}") from None
        await self._ws.send_str(json.dumps({"type": "auth", "token": self.token}))
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    msg = await self._ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise ConnectionLost(f"WebSocket closed during auth ({msg.type.name})")
                    data = json.loads(msg.data)
                    if data.get("type") == "auth_ok":
                        break
                    if data.get("type") == "error":
                        raise ApiError(str(data.get("code")), str(data.get("message", "")))
        except TimeoutError:
            raise ServerUnreachable(f"{self.ws_url}: no auth_ok within {self.timeout:g} s") from None
        self.session_id = data.get("session")
        self.username = data.get("username", self.username)
        self.ice_servers = list(data.get("ice_servers") or [])
        self.ice_transport_policy = "relay" if data.get("ice_transport_policy") == "relay" else "all"
        self.closed = False
        self._reader = asyncio.ensure_future(self._read())
        return dict(data)

    RETRYABLE = frozenset({"service_unavailable", "rate_limited"})  # reconnect() tries again after these

    async def reconnect(self, backoff: Backoff | None = None, *, max_attempts: int | None = None,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> dict[str, Any]:
        """Open the WebSocket again with the kept token (no password: no login, no argon2),
        waiting `backoff.next_delay()` before each attempt; returns auth_ok. Each attempt goes
        to the next of `urls` (`next_url()`: the node that dropped or refused us is tried last;
        with one URL, always that one). Retries while the nodes are unreachable or drop the
        socket, or answer `service_unavailable`/`rate_limited` (a node whose database or Redis is
        away for a moment: `RETRYABLE`); any other ApiError (auth_failed: the token expired or
        the cluster's secret changed) is raised at once, since only `login()` helps then.
        ServerUnreachable after `max_attempts` failed attempts."""
        backoff = backoff or Backoff()
        await self._drop_ws()
        failures = 0
        while True:
            self.next_url()   # before the wait: `url` says where the next attempt goes
            await sleep(backoff.next_delay())
            try:
                hello = await self.connect()
            except ApiError as exc:
                if exc.code not in self.RETRYABLE:
                    raise
                await self._drop_ws()
                failures += 1
                if max_attempts is not None and failures >= max_attempts:
                    raise
                continue
            except (ServerUnreachable, ConnectionLost, aiohttp.ClientError, OSError):
                await self._drop_ws()
                failures += 1
                if max_attempts is not None and failures >= max_attempts:
                    raise ServerUnreachable(f"{' '.join(self.urls)}: no connection after {failures} attempts"
                                            ) from None
                continue
            backoff.reset()
            self.reconnect_attempts = failures + 1
            return hello

    async def wait_closed(self) -> None:
        """Until the server closes the WebSocket (a restart, a dropped node). Then `reconnect()`."""
        if self._reader is not None:
            await asyncio.wait({self._reader})  # the reader's end, never its error; our cancellation propagates

    async def _drop_ws(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        kept = [m for m in iter_queue(self._inbox) if m is not None]  # unread messages stay, the end marker goes
        for m in kept:
            self._inbox.put_nowait(m)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if not isinstance(data, dict):
                    continue
                if self.auto_ringing and data.get("type") == "invite" and "call_id" in data:
                    with contextlib.suppress(Exception):
                        await self.ringing(str(data["call_id"]))
                self._inbox.put_nowait(data)
        finally:
            self._inbox.put_nowait(None)

    async def send(self, msg: dict[str, Any]) -> None:
        """Send one protocol message (a dict with `type`)."""
        if self._ws is None or self._ws.closed:
            raise ConnectionLost("signalling connection is closed")
        try:
            await self._ws.send_str(json.dumps(msg, separators=(",", ":")))
        except (ConnectionResetError, aiohttp.ClientError) as exc:
            raise ConnectionLost(f"signalling connection lost: {exc}") from None

    async def recv(self, timeout: float | None = None) -> dict[str, Any] | None:  # noqa: ASYNC109
        """The next server message; None if `timeout` passes first. Raises ConnectionLost at the end."""
        if self._pending:
            return self._pending.popleft()
        if self.closed and self._inbox.empty():
            raise ConnectionLost("signalling connection is closed")
        try:
            msg = await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            return None
        if msg is None:
            self.closed = True
            raise ConnectionLost("signalling connection closed by the server")
        return msg

    async def wait_for(self, type_: str, call_id: str | None = None, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Skip messages until one of `type_` (for `call_id`, if given); TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv()
                if msg and msg.get("type") == type_ and (call_id is None or msg.get("call_id") == call_id):
                    return msg

    # --- call messages -------------------------------------------------------------------
    async def invite(self, call_id: str, to: str, sdp: str, media: list[str] | None = None) -> None:
        await self.send({"type": "invite", "call_id": call_id, "to": to, "media": media or ["audio"], "sdp": sdp})

    async def ringing(self, call_id: str) -> None:
        await self.send({"type": "ringing", "call_id": call_id})

    async def accept(self, call_id: str, sdp: str) -> None:
        await self.send({"type": "accept", "call_id": call_id, "sdp": sdp})

    async def decline(self, call_id: str, reason: str = "declined") -> None:
        await self.send({"type": "decline", "call_id": call_id, "reason": reason})

    async def cancel(self, call_id: str) -> None:
        await self.send({"type": "cancel", "call_id": call_id})

    async def hangup(self, call_id: str) -> None:
        await self.send({"type": "hangup", "call_id": call_id})

    async def ice(self, call_id: str, candidate: dict[str, Any] | None) -> None:
        await self.send({"type": "ice", "call_id": call_id, "candidate": candidate})

    async def dtmf(self, call_id: str, digits: str) -> None:
        await self.send({"type": "dtmf", "call_id": call_id, "digits": digits})

    async def ping(self) -> None:
        await self.send({"type": "ping"})

    async def close(self) -> None:
        """Close the WebSocket and the HTTP session. Idempotent."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._http is not None and self._own_http:
            await self._http.close()
        self._http = None
        self.closed = True
