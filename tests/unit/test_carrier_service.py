"""bridge/carrier/service.py on 127.0.0.1: `start_carrier` starts the trunk and, unless told not
to, its control channel (described in DATA/carrier/control.json, gone after stop); a SIP port
already taken is a SystemExit naming the address and the way out, with nothing left running;
`stop()` is safe twice; `attach(app, cfg)` adds one cleanup_ctx entry that owns the carrier.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from aiohttp import web

from bridge.carrier.config import load_carrier_config
from bridge.carrier.control import control_file
from bridge.carrier.service import CARRIER_KEY, attach, start_carrier
from jego_call.config import load_config


async def test_start_with_control_describes_it_and_stop_removes_it(tmp_path: Path) -> None:
    service = await start_carrier(load_carrier_config(overrides={"sip": {"port": 0}}), tmp_path,
                                  host="127.0.0.1", port=0)
    try:
        assert service.control is not None
        info = json.loads(control_file(tmp_path).read_text())
        assert info["url"].startswith("http://127.0.0.1:") and info["token"] == service.control.token
        assert service.carrier.udp_port > 0
    finally:
        await service.stop()
    assert service.control is None and not control_file(tmp_path).exists()
    await service.stop()  # twice: nothing to do


async def test_start_without_control_opens_no_channel(tmp_path: Path) -> None:
    service = await start_carrier(load_carrier_config(overrides={"sip": {"port": 0}}), tmp_path,
                                  control=False, host="127.0.0.1", port=0)
    try:
        assert service.control is None and not control_file(tmp_path).exists()
    finally:
        await service.stop()


async def test_a_taken_sip_port_is_a_readable_exit(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        with pytest.raises(SystemExit) as exc:
            await start_carrier(load_carrier_config(overrides={"sip": {"port": port}}), tmp_path,
                                host="127.0.0.1", port=port)
        msg = str(exc.value)
        assert msg.startswith(f"carrier: cannot listen on 127.0.0.1:{port}: ")
        assert "--no-carrier" in msg and "[sip] port" in msg
        assert not control_file(tmp_path).exists()
    finally:
        taken.close()
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # nothing of the failed carrier kept it
    again.bind(("127.0.0.1", port))
    again.close()


def test_attach_adds_one_cleanup_entry_that_owns_the_carrier(tmp_path: Path) -> None:
    cfg = load_config(None, environ={}, overrides={"data": {"dir": str(tmp_path)}})
    app = web.Application()
    before = len(app.cleanup_ctx)
    attach(app, cfg)
    assert len(app.cleanup_ctx) == before + 1
    assert CARRIER_KEY not in app  # nothing starts before the app does
