"""The running carrier's local control channel: a tiny HTTP API on 127.0.0.1 (never elsewhere).

`service.start_carrier` starts a `ControlServer` beside the `Carrier`; it writes `<data dir>/carrier/control.json`
(mode 0600: {"url", "token", "pid", "sip"}) and removes it on stop. `jego carrier call` reads that
file and talks to it with `control_request(...)`:

    GET  /status                      -> Carrier.status()
    GET  /metrics                     -> Prometheus text format (bridge/carrier/metrics.py; no token)
    GET  /healthz                     -> {"status": "ok"} (no token)
    POST /call {"from", "to", "play", "duration", "ring_timeout"}   ("from" defaults to [inbound] caller_id)
                                      -> Carrier.originate(...) result, when the call has ended

Every other request needs `Authorization: Bearer <token>` from control.json, so only users who
can read the data directory can place calls. The port is `[control] port` of carrier.toml (0: a
free one), so a Prometheus can be pointed at it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from jego_call.metrics import exposition

from .metrics import carrier_registry

if TYPE_CHECKING:
    from .trunk import Carrier

CONTROL_HOST = "127.0.0.1"
OPEN_PATHS = frozenset({"/metrics", "/healthz"})   # served without the token


def control_file(data_dir: str | Path) -> Path:
    """Where a running carrier with this data dir describes its control channel."""
    return Path(data_dir) / "carrier" / "control.json"


class ControlServer:
    """aiohttp server bound to 127.0.0.1:`port` (0 = any free port). `await start()` / `stop()`."""

    def __init__(self, carrier: Carrier, *, port: int = 0) -> None:
        self.carrier = carrier
        self.port = port
        self.token = secrets.token_urlsafe(24)
        self.path = control_file(carrier.data_dir)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.registry = carrier_registry(carrier)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/status", self._status)
        app.router.add_post("/call", self._call)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, CONTROL_HOST, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {"url": self.url, "token": self.token, "pid": os.getpid(),
                "sip": f"{self.carrier.host}:{self.carrier.udp_port}"}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.replace(tmp, self.path)

    async def stop(self) -> None:
        try:
            info = json.loads(self.path.read_text())
            if info.get("token") == self.token:  # not another carrier's file
                self.path.unlink()
        except (OSError, ValueError):
            pass
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path in OPEN_PATHS:  # what Prometheus scrapes
            open_response: web.StreamResponse = await handler(request)
            return open_response
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return web.json_response({"error": "unauthorised"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        body, ctype = exposition(self.registry)
        return web.Response(body=body, headers={"Content-Type": ctype, "Cache-Control": "no-store"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "calls": len(self.carrier._calls)})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.carrier.status())

    async def _call(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                return web.json_response({"error": "bad request: the body must be a JSON object"}, status=400)
            from_ = str(body.get("from") or self.carrier.cfg.inbound.caller_id)  # [inbound] caller_id
            to = str(body["to"])
            play = body.get("play")
            duration = body.get("duration")
            ring_timeout = body.get("ring_timeout")
            if play is not None and not await asyncio.to_thread(os.path.isfile, str(play)):
                return web.json_response({"error": f"no such file: {play}"}, status=400)
            if duration is not None and not 0 < float(duration) <= 3600:
                return web.json_response({"error": "duration must be in (0, 3600] seconds"}, status=400)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        try:
            result = await self.carrier.originate(
                from_, to, play=play, duration=float(duration) if duration is not None else None,
                ring_timeout=float(ring_timeout) if ring_timeout is not None else None)
        except (OSError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=500)
        return web.json_response(result)


class ControlError(RuntimeError):
    """No carrier is running for this data dir, or it refused the request."""


def control_request(data_dir: str | Path, method: str, path: str, body: Any = None,
                    timeout: float = 3600.0) -> dict[str, Any]:
    """Call the control channel of the carrier running with `data_dir` (blocking, stdlib only)."""
    cf = control_file(data_dir)
    try:
        info = json.loads(cf.read_text())
    except FileNotFoundError:
        raise ControlError(f"no carrier is running for data dir {data_dir} ({cf} is missing): "
                           "start `jego carrier` or `jego serve` first") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read {cf}: {exc}") from None
    url = str(info.get("url", ""))
    if not url.startswith(f"http://{CONTROL_HOST}:"):
        raise ControlError(f"{cf}: control url must be on {CONTROL_HOST}, got {url!r}")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {info.get('token', '')}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(req, timeout=timeout) as res:
            result: dict[str, Any] = json.loads(res.read())
            return result
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except ValueError:
            detail = ""
        raise ControlError(f"carrier refused: {exc.code} {detail}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise ControlError(f"cannot reach the carrier at {url}: {exc}") from None
