"""`jego carrier`: run the simulated Chinese carrier trunk on its own, or place a call from it.

    jego carrier [--config config/carrier.toml] [--host 127.0.0.1] [--port 5060] [--data-dir data]
                 [--ring-timeout S] [--media-timeout S] [--max-calls N]
    jego carrier call FROM TO [--play FILE.wav] [--duration S] [--ring-timeout S] [--json]

`call` asks the carrier already running for the same data dir (`jego carrier` or `jego serve`)
over its control channel (bridge.carrier.control) to send an INVITE from FROM (a Chinese number)
to TO (the DID) to the Contact the inbound trunk account registered. Exit codes of `call`:
0 answered, 1 not answered (busy, rejected, no answer, ...), 3 no carrier running / unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from jego_call.aio import run as run_loop
from jego_call.config import load_config
from jego_call.log import setup_logging

from ..sip.transaction import TimerConfig
from .config import load_carrier_config, resolve_config_path
from .control import ControlError, control_request
from .service import start_carrier

log = logging.getLogger("jego.carrier")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("carrier", help="run the simulated Chinese carrier trunk (SIP), or call from it",
                       description="Run the simulated carrier; `jego carrier call` places a PSTN -> app call.")
    p.add_argument("--config", metavar="PATH", help="carrier TOML (default config/carrier.toml)")
    p.add_argument("--host", help="override [sip] host (an IP address)")
    p.add_argument("--port", type=int, help="override [sip] port (0 picks a free port)")
    p.add_argument("--data-dir", help="where cdr.jsonl and recordings go (default: data.dir of jego.toml)")
    p.add_argument("--ring-timeout", type=float, metavar="S", help="override [sip] ring_timeout_s")
    p.add_argument("--media-timeout", type=float, metavar="S", help="override [sip] media_timeout_s")
    p.add_argument("--max-calls", type=int, metavar="N", help="override max_calls of every [[trunk]]")
    p.add_argument("--t1", type=float, metavar="S", help="SIP timer T1 (default 0.5; Timer H = 64*T1)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    c = actions.add_parser("call", help="call the app from a Chinese number via the running carrier")
    c.add_argument("from_number", metavar="FROM", help="calling number, e.g. +8613800138000")
    c.add_argument("to_number", metavar="TO", help="called number (the DID of the app user)")
    c.add_argument("--play", metavar="FILE", help="WAV file played into the call once answered")
    c.add_argument("--duration", type=float, metavar="S", help="hang up after S seconds (default: file + 1 s)")
    c.add_argument("--ring-timeout", dest="call_ring_timeout", type=float, metavar="S",
                   help="give up (CANCEL) after S seconds of ringing (default [sip] ring_timeout_s)")
    c.add_argument("--data-dir", dest="call_data_dir", help="data dir of the running carrier")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=run_call)


def _data_dir(arg: str | None) -> Path:
    return Path(arg) if arg else load_config().data_dir


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level or "INFO")
    sip: dict[str, Any] = {}
    if args.host is not None:
        sip["host"] = args.host
    if args.port is not None:
        sip["port"] = args.port
    if args.ring_timeout is not None:
        sip["ring_timeout_s"] = args.ring_timeout
    if args.media_timeout is not None:
        sip["media_timeout_s"] = args.media_timeout
    cfg = load_carrier_config(resolve_config_path(args.config or "config/carrier.toml"),
                              overrides={"sip": sip} if sip else None)
    if args.max_calls is not None:
        cfg = replace(cfg, trunks=tuple(replace(t, max_calls=args.max_calls) for t in cfg.trunks))
    timers = TimerConfig(t1=args.t1) if args.t1 else None
    data_dir = _data_dir(args.data_dir)

    async def main() -> None:
        service = await start_carrier(cfg, data_dir, timers=timers)
        carrier = service.carrier
        assert service.control is not None
        print(f"Jego carrier listening on udp:{carrier.host}:{carrier.udp_port} "
              f"tcp:{carrier.host}:{carrier.tcp_port} realm {cfg.sip.realm}; "
              f"records in {carrier.cdr.path.parent}; control {service.control.url} "
              f"(metrics {service.control.url}/metrics)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await service.stop()
        print("Jego carrier stopped.", flush=True)

    try:
        run_loop(main())  # uvloop when installed
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        raise
    return 0


def run_call(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"from": args.from_number, "to": args.to_number}
    if args.play:
        play = Path(args.play).resolve()
        if not play.is_file():
            print(f"jego carrier call: no such file: {args.play}", file=sys.stderr)
            return 2
        body["play"] = str(play)
    if args.duration is not None:
        body["duration"] = args.duration
    if args.call_ring_timeout is not None:
        body["ring_timeout"] = args.call_ring_timeout
    data_dir = _data_dir(args.call_data_dir or args.data_dir)
    try:
        result = control_request(data_dir, "POST", "/call", body)
    except ControlError as exc:
        print(f"jego carrier call: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif result.get("error") and not result.get("code"):
        print(f"jego carrier call: {result['error']}", file=sys.stderr)
    else:
        line = f"{result['code']} {result.get('reason', '')}".strip()
        if result.get("cause") is not None:
            line += f" (cause {result['cause']})"
        line += f": {result.get('outcome', '')}"
        if result.get("answered"):
            line += f", {result.get('duration_s', 0):.1f} s"
        if result.get("recording"):
            line += f", recording {result['recording']}"
        print(line)
    if result.get("error") and not result.get("code"):
        return 3
    return 0 if result.get("answered") else 1
