"""SIPVicious (PyPI `sipvicious`) against the simulated carrier: `svwar` cannot tell the trunk
account from any other name, and `svcrack` does not find the trunk password although it is
the 41st word of its dictionary, because the carrier's digest lockout (20 failures per source
within a sliding 60 s) answers 403 without a challenge once 20 guesses have failed. The
lockout slows a dictionary attack to 20 guesses a minute rather than ending it, so svcrack is
stopped before the window slides (a patient attacker with this password in a list would get
there: trunk passwords must not be dictionary words). The tools always run bound to loopback
(-b/-x 127.0.0.1, a free -P port) and never with -A (auto-detect IP) or -R (report back)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from bridge.carrier.trunk import Carrier
from tests.integration.carrier_util import HOST, PASSWORD, USER, Uac, free_port, running_carrier

BIN = Path(sys.executable).parent
SVWAR = shutil.which("sipvicious_svwar", path=str(BIN)) or shutil.which("sipvicious_svwar")
SVCRACK = shutil.which("sipvicious_svcrack", path=str(BIN)) or shutil.which("sipvicious_svcrack")

pytestmark = pytest.mark.slow


async def sipvicious(tool: str | None, carrier: Carrier, home: Path, *args: str, stop_after: float | None = None) -> str:
    """Run a SIPVicious tool against `carrier`; with `stop_after`, interrupt it (SIGINT, as
    Ctrl-C: it then prints what it found) after that many seconds."""
    assert tool is not None, "sipvicious is a test dependency (pyproject.toml [test])"
    cmd = [tool, *args, "-b", HOST, "-x", HOST, "-P", str(free_port()), f"udp://{HOST}:{carrier.udp_port}"]
    assert "-A" not in cmd and "-R" not in cmd
    env = {**os.environ, "HOME": str(home)}          # its session files stay in the test's directory
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, cwd=home, env=env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), stop_after or 240)
    except TimeoutError:
        assert stop_after is not None, "sipvicious did not finish"
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return out.decode(errors="replace")
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


async def test_svwar_cannot_enumerate_the_trunk_account(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["admin", "100", "1000", USER, "test", "sip", "trunk", "bob"]) + "\n")
    async with running_carrier(tmp_path / "carrier") as carrier:
        for method in ("REGISTER", "INVITE", "OPTIONS"):
            out = await sipvicious(SVWAR, carrier, tmp_path, "-m", method, "-d", str(names))
            assert "found nothing" in out, out
            assert f"| {USER} " not in out and f"|{USER}|" not in out
        forced = await sipvicious(SVWAR, carrier, tmp_path, "--force", "-m", "REGISTER", "-d", str(names))
        assert "found nothing" in forced, forced       # every name gets the same challenge
        assert carrier.stats["auth_failures"] == 0 and carrier.stats["calls"] == 0


async def test_svcrack_does_not_find_the_trunk_password_and_is_locked_out(tmp_path: Path) -> None:
    words = [f"guess{i:03d}" for i in range(40)] + [PASSWORD] + [f"late{i}" for i in range(10)]
    dictionary = tmp_path / "passwords.txt"
    dictionary.write_text("\n".join(words) + "\n")     # the real password is the 41st word
    async with running_carrier(tmp_path / "carrier") as carrier:
        t0 = carrier.now()
        # 45 s: inside the 60 s window that the first failure opens
        out = await sipvicious(SVCRACK, carrier, tmp_path, "-u", USER, "-d", str(dictionary), stop_after=45.0)
        assert PASSWORD not in out and "| jego " not in out, out
        stats = carrier.stats
        assert 20 <= stats["auth_failures"] <= 40 and stats["auth_blocked"] > 0, stats   # locked after 20
        assert carrier.registrar.bindings(USER, carrier.now()) == []          # nothing registered
        # locked out: the right password from the attacker's address gets 403 without a challenge
        assert carrier.now() - t0 < 58
        async with Uac(carrier.udp_port) as ua:
            resp = await ua.register()
            assert resp.status == 403 and resp.headers.get("WWW-Authenticate") is None
