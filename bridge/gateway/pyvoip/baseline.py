"""pyVoIP 1.6.8 as shipped, for the comparisons in scripts/ only (the bridge never uses this).

    thread, stop = stock_sip_receive_loop()     # pyVoIP's own SIPClient.recv_loop, idle
    ...                                         # measure, e.g. time.pthread_getcpuclockid(thread.ident)
    stop()
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)
from pyVoIP import SIP as pv_sip


def stock_sip_receive_loop(host: str = "127.0.0.1") -> tuple[threading.Thread, Callable[[], None]]:
    """Run pyVoIP's unmodified SIP receive loop (SIP.py:850-857: non-blocking recv under a lock,
    sleep(0.01) when nothing is there) on a socket bound to `host`, without registering.
    Returns the thread and a function that stops and joins it."""
    phone: Any = None  # only the receive loop runs: the phone is never touched
    client = pv_sip.SIPClient(host, 5060, "bench", "bench", phone, myIP=host, myPort=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    client.s = client.out = sock
    client.NSD = True
    thread = threading.Thread(target=client.recv_loop, name="SIP Recieve (stock pyVoIP)", daemon=True)
    thread.start()

    def stop() -> None:
        client.NSD = False
        thread.join(2.0)
        sock.close()

    return thread, stop
