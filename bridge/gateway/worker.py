"""The bridge worker: a gateway client of the signalling server with a SIP trunk behind it.

    worker = BridgeWorker.from_config(cfg, server_url="http://127.0.0.1:8080", secret=S)
    await worker.start()          # trunk up (REGISTER unless trunk mode), then /ws + gateway_auth
    await worker.wait_ready(10)   # authenticated as a gateway
    ...
    await worker.stop()           # hang up every call, close the socket, stop the trunk

It speaks docs/signalling.md "Phone calls and gateways": an `invite` to an E.164 number becomes a
`BridgeCall` (bridge/gateway/call.py) with an outbound SIP leg; an inbound INVITE to a DID in
`bridge.did` becomes a gateway `invite` to that user. `ice`, `dtmf`, `accept`, `ringing`,
`hangup`, `cancel`, `call_ended` and `error` go to the call they name. The socket reconnects
with exponential back-off; calls do not survive a reconnect (the server ends them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from jego_call.call.reasons import EndReason
from jego_call.config import BridgeSection, Config
from jego_call.log import call_context, register_secret
from jego_call.numbering import e164_of

from . import conference_core as cc
from .call import BridgeCall, CallSettings
from .conference import Conference
from .dialogs import DialogStore, OrphanReaper
from .legs import SipLeg, SipTrunk
from .metrics import BridgeMetrics
from .transcode import single_threaded_ffmpeg

log = logging.getLogger("jego.bridge")

DIALOG_STORE = "bridge-dialogs.sqlite3"  # in the data directory: every worker on this machine shares it

TrunkFactory = Callable[[BridgeSection], SipTrunk]


def pyvoip_trunk(section: BridgeSection) -> SipTrunk:
    """The production trunk: pyVoIP (bridge/gateway/pyvoip/) configured from [bridge]."""
    from .pyvoip import PyVoipTrunk, TrunkConfig  # the one module that imports pyVoIP

    return PyVoipTrunk(TrunkConfig(
        server_host=section.trunk_host, server_port=section.trunk_port, username=section.username,
        password=section.password, register=section.register, local_host=section.local_host,
        local_port=section.sip_port, rtp_port_low=section.rtp_port_min, rtp_port_high=section.rtp_port_max,
        max_calls=section.max_calls, tx_queue_frames=10, trunk_sources=tuple(section.trunk_sources),
        session_expires_s=section.session_expires_s))


class BridgeWorker:
    """One worker: a trunk and one signalling connection. `start`, `wait_ready`, `stop`."""

    def __init__(self, server_url: str, secret: str, trunk: SipTrunk, *, name: str = "bridge-1",
                 max_calls: int = 16, settings: CallSettings | None = None,
                 did: dict[str, str] | None = None, backoff_max_s: float = 10.0,
                 dialog_store: DialogStore | None = None,
                 metrics: BridgeMetrics | None = None) -> None:
        self.server_url = server_url.rstrip("/")
        self.secret = secret
        self.trunk = trunk
        self.name = name
        self.max_calls = max_calls
        self.settings = settings or CallSettings()
        self.did = {e164_of(k): v for k, v in (did or {}).items()}
        self.backoff_max_s = backoff_max_s
        self.calls: dict[str, BridgeCall] = {}
        self.conferences: dict[str, Conference] = {}   # group calls hosted here (conference.py)
        self._conference_legs: dict[str, Conference] = {}   # phone leg call id -> its conference
        self.ice_servers: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.connects = 0
        self.refused = 0                # calls refused above max_calls
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._trunk_started = False
        self._stopping = False
        # Answered trunk dialogs outlive a crash here; the reaper BYEs other workers' orphans.
        self.worker_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.dialog_store = dialog_store
        self.reaper: OrphanReaper | None = None
        # Prometheus series (bridge/gateway/metrics.py): its own registry unless given one
        self.metrics = metrics if metrics is not None else BridgeMetrics(name)
        self.metrics.watch(self)

    @classmethod
    def from_config(cls, cfg: Config, server_url: str, secret: str, *, name: str | None = None,
                    max_calls: int | None = None, trunk_factory: TrunkFactory = pyvoip_trunk,
                    registry: CollectorRegistry | None = None) -> BridgeWorker:
        """A worker configured from [bridge] (config/jego.toml); then `start()`. Its metrics go
        to `registry` (jego serve's, in-process) or a registry of its own ([metrics] enabled)."""
        b = cfg.bridge
        settings = CallSettings(app_codec=b.app_codec, opus_bitrate=b.opus_bitrate,
                                media_timeout_s=b.media_timeout_s, max_call_s=b.max_call_s)
        register_secret(b.password)
        register_secret(secret)
        worker_name = name or b.name
        metrics = BridgeMetrics(worker_name, registry=registry, enabled=cfg.metrics.enabled)
        return cls(server_url, secret, trunk_factory(b), name=worker_name,
                   max_calls=max_calls or b.max_calls, settings=settings, did=dict(b.did),
                   dialog_store=DialogStore.open(cfg.data_dir / DIALOG_STORE), metrics=metrics)

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the connection loop (trunk first, then the server); returns at once."""
        single_threaded_ffmpeg()  # no FFmpeg thread pool per resampler (transcode.py)
        self.trunk.set_inbound_handler(self._inbound)
        self._task = asyncio.ensure_future(self._run())
        self._task.set_name(f"bridge-worker-{self.name}")

    async def wait_ready(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Wait until the worker is authenticated as a gateway (TimeoutError otherwise)."""
        await asyncio.wait_for(self.ready.wait(), timeout)

    async def stop(self) -> None:
        """Hang up every call, close the socket and stop the trunk. Idempotent."""
        self._stopping = True
        await asyncio.gather(*(c.shutdown() for c in list(self.calls.values())),
                             *(c.close("shutdown") for c in list(self.conferences.values())), return_exceptions=True)
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._trunk_started:
            with contextlib.suppress(Exception):
                await self.trunk.stop()
            self._trunk_started = False
        if self.reaper is not None:
            await self.reaper.stop()  # a clean stop hung up its calls: nothing left to reap
            self.reaper = None
        if self.dialog_store is not None:
            self.dialog_store.close()

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                if not self._trunk_started:
                    await self.trunk.start()  # REGISTER with digest auth (RFC 3261 §10), or trunk mode
                    self._trunk_started = True
                    log.info("bridge %s: trunk up (registered: %s)", self.name, self.trunk.registered)
                    self._start_reaper()
                await self._session()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # trunk or server unreachable: try again later
                log.warning("bridge %s: %s; retrying in %.1f s", self.name, exc or type(exc).__name__, delay)
            self.ready.clear()
            await self._drop_calls()
            if self._stopping:
                break
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(self.backoff_max_s, delay * 2)

    def _start_reaper(self) -> None:
        """With a dialog store and a trunk that can use it: keep our dialogs there, and BYE
        (within a few seconds) every dialog a dead worker left behind."""
        store = self.dialog_store
        attach = getattr(self.trunk, "attach_dialog_store", None)
        send_bye = getattr(self.trunk, "send_orphan_bye", None)
        if store is None or self.reaper is not None or attach is None or send_bye is None:
            return
        attach(store, self.worker_id)
        self.reaper = OrphanReaper(store, self.worker_id, send_bye)
        self.reaper.start()

    async def _session(self) -> None:
        """One signalling connection: gateway_auth, then messages until it closes."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10))
        url = ("wss://" + self.server_url[8:] if self.server_url.startswith("https://")
               else "ws://" + self.server_url.removeprefix("http://")) + "/ws"
        async with self._http.ws_connect(url, heartbeat=10.0, max_msg_size=1 << 20) as ws:
            self._ws = ws
            await ws.send_str(json.dumps({"type": "gateway_auth", "secret": self.secret, "name": self.name,
                                          "capacity": self.max_calls}))
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    msg = json.loads(frame.data)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    await self._dispatch(msg)
            self._ws = None
        if not self._stopping:
            raise ConnectionError("signalling connection closed")

    async def _drop_calls(self) -> None:
        """The socket is gone, so the server has ended our calls: end their SIP legs too."""
        calls = list(self.calls.values())
        if calls:
            log.warning("bridge %s: ending %d calls after losing the server", self.name, len(calls))
        await asyncio.gather(*(c.shutdown() for c in calls),
                             *(c.close("connection_lost") for c in list(self.conferences.values())),
                             return_exceptions=True)

    # --- messages --------------------------------------------------------------------------
    async def send(self, msg: dict[str, Any]) -> None:
        """Send one protocol message; dropped (logged) when the socket is down."""
        ws = self._ws
        if ws is None or ws.closed:
            log.debug("bridge %s: not connected, dropped %s", self.name, msg.get("type"))
            return
        try:
            await ws.send_str(json.dumps(msg, separators=(",", ":")))
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            log.warning("bridge %s: send %s failed: %s", self.name, msg.get("type"), exc)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "auth_ok":
            self.ice_servers = list(msg.get("ice_servers") or [])
            self.connects += 1
            self.ready.set()
            log.info("bridge %s: connected to %s as a gateway (capacity %d)", self.name, self.server_url,
                     self.max_calls)
            return
        if kind == "error" and not self.ready.is_set():
            log.error("bridge %s: gateway_auth refused: %s", self.name, msg.get("message") or msg.get("code"))
            if self._ws is not None:
                await self._ws.close()
            return
        call_id = msg.get("call_id")
        if isinstance(kind, str) and kind.startswith("conference_") and isinstance(call_id, str):
            self._conference_message(kind, call_id, msg)
            return
        if kind == "invite" and isinstance(call_id, str) and isinstance(msg.get("conference"), str):
            self._conference_phone(call_id, msg)
            return
        if kind == "invite" and isinstance(call_id, str):
            with call_context(call_id=call_id):  # the new call's tasks inherit it
                await self._outbound(msg)
            return
        conf = self._conference_legs.get(call_id) if isinstance(call_id, str) else None
        if conf is not None:
            conf.post(cc.PhoneServer(str(call_id), msg))
            return
        call = self.calls.get(call_id) if isinstance(call_id, str) else None
        if call is not None:
            call.post(msg)
        elif kind == "error":
            with call_context(call_id=call_id if isinstance(call_id, str) else None):
                log.warning("bridge %s: server error %s: %s", self.name, msg.get("code"), msg.get("message"))

    # --- group calls: the conference (docs/signalling.md, ## Group calls) ------------------------
    def _conference_message(self, kind: str, call_id: str, msg: dict[str, Any]) -> None:
        conf = self.conferences.get(call_id)
        leg = str(msg.get("leg") or "")
        if kind == "conference_join":
            if conf is None:
                conf = Conference(call_id, self.trunk, self.send, self.settings, self.ice_servers,
                                  on_done=self._conference_done)
                self.conferences[call_id] = conf
                log.info("conference for group call %s opens here", call_id, extra={"call_id": call_id})
            conf.post(cc.Join(leg, str(msg.get("username") or ""), str(msg.get("sdp") or "")))
        elif conf is None:
            return
        elif kind == "conference_ice":
            cand = msg.get("candidate")
            conf.post(cc.AppIce(leg, cand if isinstance(cand, dict) else None))
        elif kind == "conference_leave":
            conf.post(cc.Leave(leg))
        elif kind == "conference_mute":
            conf.post(cc.Mute(leg, bool(msg.get("muted"))))
        elif kind == "conference_close":
            conf.post(cc.Close(str(msg.get("reason") or "hangup")))

    def _conference_phone(self, call_id: str, msg: dict[str, Any]) -> None:
        """A phone number added to a group call: a phone leg of that call's conference."""
        conf = self.conferences.get(str(msg["conference"]))
        if conf is None:
            asyncio.ensure_future(self.send({
                "type": "decline", "call_id": call_id, "reason": "failed", "sip_code": None, "q850_cause": 41,
                "detail": "that group call is not on this gateway"}))
            return
        self._conference_legs[call_id] = conf
        conf.post(cc.PhoneInvite(call_id, str(msg.get("to") or ""), str(msg.get("from") or "")))

    def _conference_done(self, conf: Conference) -> None:
        self.conferences.pop(conf.call_id, None)
        for leg in [k for k, v in self._conference_legs.items() if v is conf]:
            del self._conference_legs[leg]

    async def _outbound(self, msg: dict[str, Any]) -> None:
        call_id, to = str(msg["call_id"]), str(msg.get("to") or "")
        if call_id in self.calls:
            return
        if len(self.calls) >= self.max_calls:
            # refused, never squeezed in (the server should not have sent it: capacity)
            self.refused += 1
            log.warning("refused: %d calls is this worker's limit", self.max_calls, extra={"call_id": call_id})
            await self.send({"type": "decline", "call_id": call_id, "reason": "congestion", "sip_code": None,
                             "q850_cause": 34, "detail": "the phone gateway is at capacity"})
            return
        leg = self.trunk.new_leg(call_id)
        call = self._new_call(call_id, "out", leg)
        max_s = msg.get("max_s")  # a paid call: the server cuts it then; the call's backstop
        call.begin_outbound(to, str(msg.get("sdp") or ""),
                            float(max_s) if isinstance(max_s, (int, float)) and max_s > 0 else None,
                            EndReason.parse(msg.get("max_reason"), EndReason.CREDIT_EXHAUSTED))

    async def _inbound(self, leg: SipLeg, from_number: str, to_number: str) -> None:
        """The trunk's handler for an INVITE from the phone network."""
        to = e164_of(to_number)
        user = self.did.get(to)
        if user is None:
            log.info("inbound call to %s: not one of our numbers", to_number)
            await leg.reject(404, 1)  # Q.850 1: unallocated number
            return
        if not self.ready.is_set():
            await leg.reject(503, 41)  # the app side is unreachable: temporary failure
            return
        if len(self.calls) >= self.max_calls:
            self.refused += 1
            await leg.reject(503, 34)  # Q.850 34: no circuit/channel available
            return
        call_id = uuid.uuid4().hex
        with call_context(call_id=call_id):
            log.info("inbound %s -> %s (%s), SIP Call-ID %s", from_number, to, user, leg.call_id)
            leg.call_id = call_id  # the leg's log lines carry our call id from now on
            call = self._new_call(call_id, "in", leg)
            call.begin_inbound(e164_of(from_number) if from_number else "unknown", user)

    def _call_done(self, call: BridgeCall) -> None:
        self.calls.pop(call.call_id, None)

    def _new_call(self, call_id: str, direction: str, leg: SipLeg) -> BridgeCall:
        call = BridgeCall(call_id, direction, leg, self.send, self.settings, self.ice_servers,
                          on_done=self._call_done, metrics=self.metrics)
        self.calls[call_id] = call
        return call
