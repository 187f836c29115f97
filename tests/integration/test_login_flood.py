"""A login flood against a live `jego serve`: 200 wrong passwords for one account from one
address are locked out and answered 429, while a spread flood from 50 other addresses keeps
the password hasher saturated; meanwhile a `jego dial` call between two other users connects
and its audio stays on time, judged by content (tone frequency, level, gaps, loss, pacing)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jego_call.media import analysis
from tests.conftest import PASSWORD, ROOT, LiveServer, ServerFactory, http_json, make_user
from tests.integration.test_dial import DIAL, Answerer, _env

pytestmark = pytest.mark.slow


async def attempt(http: aiohttp.ClientSession, url: str, user: str, password: str) -> tuple[int, dict[str, Any],
                                                                                          str | None]:
    async with http.post(f"{url}/api/login", json={"username": user, "password": password}) as res:
        return res.status, await res.json(), res.headers.get("Retry-After")


def session(source: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0), limit=10),
                                 timeout=aiohttp.ClientTimeout(total=120))


TONE_S = 5.0


async def call(server: LiveServer, rec: Path) -> dict[str, Any]:
    """alice calls bob (echo) with a 5 s 1 kHz tone for 6.5 s; the dialer's --json report."""
    proc = await asyncio.create_subprocess_exec(
        *DIAL, "call", "bob", "--server", server.url, "--user", "alice", "--password", PASSWORD,
        "--play", f"tone:1000:-10:{TONE_S:g}", "--duration", "6.5", "--record", str(rec), "--json",
        cwd=ROOT, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    res: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return res


def judge(res: dict[str, Any], rec: Path) -> None:
    """Connected, and the echoed tone came back whole: frequency, level, no loss, no gaps."""
    assert res["outcome"] == "answered" and res["setup_ms"] < 5000
    assert res["connected_s"] == pytest.approx(6.5, abs=0.5)
    audio = res["audio"]
    assert audio["packets_received"] > 250 and audio["packets_lost"] == 0
    assert audio["dominant_hz"] == pytest.approx(1000, abs=20)
    x, rate = analysis.read_wav(rec)
    body = x[int(0.5 * rate): int(4.5 * rate)]
    assert analysis.dominant_frequency(body, rate) == pytest.approx(1000, abs=20)
    assert analysis.level_dbfs(body) == pytest.approx(analysis.sine_rms_dbfs(-10), abs=2)
    assert analysis.active_duration(x, rate) >= 0.95 * TONE_S


async def test_login_flood_leaves_a_call_on_time(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory()
    for name in ("alice", "bob", "victim"):
        make_user(server, name)
    bob = Answerer(server, "bob", ["--echo", "--count", "2"], tmp_path)
    # A control call first, without the flood: the machine is shared, so the flooded call is
    # judged against what this machine gives right now as well as against the absolute bar.
    control = await call(server, tmp_path / "control.wav")
    stop = asyncio.Event()
    victim: list[tuple[int, dict[str, Any], str | None]] = []
    victim_at: list[float] = []
    loop = asyncio.get_running_loop()
    spread: list[int] = []
    ready = asyncio.Event()         # the victim is locked out and the hasher is busy

    async def one_address() -> None:
        """200 wrong passwords for `victim` from 127.0.0.2, 8 a second (25 s), 5 at a time."""
        async with session("127.0.0.2") as http:
            sem = asyncio.Semaphore(5)

            async def one(i: int) -> None:
                await asyncio.sleep(i / 8)   # pacing: the attack's 8 attempts a second
                async with sem:
                    victim.append(await attempt(http, server.url, "victim", f"guess-{i:04d}"))
                    victim_at.append(loop.time())
                    if victim[-1][0] == 429 and len(spread) >= 5:
                        ready.set()

            await asyncio.gather(*(one(i) for i in range(200)))

    async def from_many(k: int) -> None:
        """Address 127.0.0.(10+k) guesses the passwords of its own names until the call is over."""
        async with session(f"127.0.0.{10 + k}") as http:
            i = 0
            while not stop.is_set():
                status, _, _ = await attempt(http, server.url, f"flood{k}-{i % 3}", f"pw-{i}-wrong")
                spread.append(status)
                if len(spread) >= 5 and any(s == 429 for s, _, _ in victim):
                    ready.set()
                i += 1
                await asyncio.sleep(0.5)   # pacing: each flooding address tries twice a second

    target = asyncio.ensure_future(one_address())
    many = [asyncio.ensure_future(from_many(k)) for k in range(50)]
    try:
        await asyncio.wait_for(ready.wait(), 60)
        call_start = loop.time()
        rec = tmp_path / "tone.wav"
        res = await call(server, rec)
        call_end = loop.time()
    finally:
        stop.set()
        for t in many:
            t.cancel()
        await asyncio.gather(*many, return_exceptions=True)
        await target
    during = sum(1 for t in victim_at if call_start <= t <= call_end)
    assert during >= 40, f"only {during} of the one-address flood's attempts came during the call"
    for r, path in ((control, tmp_path / "control.wav"), (res, rec)):
        judge(r, path)
    on_time, base = res["audio"]["frames_on_time"], control["audio"]["frames_on_time"]
    assert on_time >= min(0.9, base - 0.05), (on_time, base)
    assert bob.wait() == 0
    # the one-address flood: five passwords judged, the other 195 answered 429 with Retry-After
    codes = [s for s, _, _ in victim]
    assert len(codes) == 200 and set(codes) <= {401, 429}
    assert codes.count(401) <= 5 and codes.count(429) >= 195
    for status, body, retry in victim:
        if status == 429:
            assert retry is not None and int(retry) >= 1 and body["error"]["code"] == "rate_limited"
            assert "wrong" not in body["error"]["message"].lower()
    status, body = http_json("POST", f"{server.url}/api/login", {"username": "victim", "password": PASSWORD})
    assert status == 429                                   # still locked: even the right password waits
    assert set(spread) <= {401, 429} and spread.count(401) >= 5     # the hasher kept working, bounded
    print(f"flood: victim {codes.count(401)}x401 {codes.count(429)}x429; spread {len(spread)} attempts, "
          f"{spread.count(401)} judged; {during} victim attempts during the call; frames on time {on_time:.3f}"
          f" (control {base:.3f}), setup {res['setup_ms']} ms (control {control['setup_ms']} ms)",
          file=sys.stderr)
