"""The RFC 4475 SIP torture messages sent over a real UDP socket to a running carrier: none may
crash it, and an OPTIONS probe is answered after every one.

The messages name foreign hosts (192.0.2.x, example.com ...). The carrier only ever answers the
packet's source address, and on top of that this test only runs inside a private network
namespace where loopback is the only interface (scripts/test runs the suite in one); outside one,
as root, it re-runs itself under `unshare -n`, else it is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .carrier_util import HOST, ROOT, running_carrier

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "sip" / "rfc4475"

pytestmark = pytest.mark.timeout(120)


def only_loopback() -> bool:
    """True when this process's network namespace has no interface but lo. (socket.if_nameindex
    asks the kernel for the current namespace; /sys/class/net shows the one sysfs was mounted in.)"""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def probe(n: int, port: int) -> bytes:
    return (f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{port + 1};branch=z9hG4bKprobe{n}\r\n"
            f"From: <sip:probe@{HOST}>;tag=p{n}\r\nTo: <sip:carrier@{HOST}>\r\n"
            f"Call-ID: probe-{n}@{HOST}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


async def recv_probe_answer(sock: socket.socket, n: int, timeout: float = 3.0) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with contextlib.suppress(TimeoutError):
        while True:   # the loop wakes us when a datagram is there (sock is non-blocking)
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), deadline - loop.time())
            if f"Call-ID: probe-{n}@".encode() in data:
                return data
    raise AssertionError(f"no answer to OPTIONS probe {n}")


def test_corpus_is_in_a_private_network_namespace() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"../shared/sip/rfc4475 is absent: {CORPUS} (the RFC 4475 torture messages)")
    if only_loopback():
        return  # test_rfc4475_over_udp below runs here
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("not in a private network namespace and cannot create one (needs root and unshare)")
    # Re-run this file with loopback as the only interface.
    cmd = (f"ip link set lo up && exec {sys.executable} -m pytest -p no:cacheprovider -q "
           f"{Path(__file__)}::test_rfc4475_over_udp")
    done = subprocess.run(["unshare", "-n", "--", "bash", "-c", cmd], cwd=ROOT, capture_output=True,
                          text=True, timeout=110)
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]


async def test_rfc4475_over_udp(tmp_path: Path) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"../shared/sip/rfc4475 is absent: {CORPUS}")
    if not only_loopback():
        pytest.skip("runs only in a private network namespace (see the test above)")
    files = sorted(CORPUS.glob("*.dat"))
    assert len(files) >= 40
    async with running_carrier(tmp_path / "data") as carrier:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as torture, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as prober:
            torture.bind((HOST, 0))
            prober.bind((HOST, 0))
            torture.setblocking(False)
            prober.setblocking(False)
            answered: dict[str, int] = {}
            for n, path in enumerate(files, 1):
                torture.sendto(path.read_bytes()[:65000], (HOST, carrier.udp_port))
                prober.sendto(probe(n, carrier.udp_port), (HOST, carrier.udp_port))
                reply = await recv_probe_answer(prober, n)
                assert reply.startswith(b"SIP/2.0 200 "), (path.name, reply[:200])
                count = 0
                while True:
                    try:
                        torture.recv(65535)
                        count += 1
                    except BlockingIOError:
                        break
                answered[path.stem] = count
            assert carrier.started and carrier.active_calls == 0
    # Requests get answers (400, 505, 401/407 challenges ...) on our socket; responses none.
    assert answered["badvers"] >= 1 and answered["badinv01"] >= 1
    assert answered["unreason"] == 0 and answered["noreason"] == 0
    assert carrier.stats["options"] >= len(files)
