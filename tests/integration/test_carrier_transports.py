"""`[sip] transports` in config/carrier.toml decides which listeners the carrier opens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .carrier_util import HOST, Uac, running_carrier

pytestmark = pytest.mark.timeout(30)


async def test_udp_only_answers_options_and_refuses_tcp(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data", sip={"transports": ["udp"]}) as carrier, \
            Uac(carrier.udp_port) as ua:
        assert carrier.udp_port and carrier.tcp_port == 0
        key = ua.send(ua.build("OPTIONS", f"sip:{HOST}:{carrier.udp_port}", call_id="udp-only", cseq=1))
        assert (await ua.response(key)).status == 200
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, carrier.udp_port)


async def test_tcp_only_answers_options_over_tcp_and_has_no_udp(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data", sip={"transports": ["tcp"]}) as carrier, \
            Uac(carrier.tcp_port, transport="tcp") as ua:
        assert carrier.tcp_port and carrier.udp_port == 0
        key = ua.send(ua.build("OPTIONS", f"sip:{HOST}:{carrier.tcp_port};transport=tcp", call_id="tcp-only",
                               cseq=1))
        assert (await ua.response(key)).status == 200
