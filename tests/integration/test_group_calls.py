"""Group calls end to end (issue 16): three `jego dial group` processes -> `jego serve` (hub + the
conference in the in-process bridge worker) and a phone on the simulated carrier. Audio is judged
by content: each recording holds the two other tones and not its own, levels within 1 dB; the
carrier's recording holds all three; a mute removes that tone from the others' recordings; a leave
ends only that member's legs. Also `jego group` and `jego message send group:ID` on a pty-free run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jego_call.media import analysis
from tests.conftest import PASSWORD, ROOT, LiveServer, add_contact, http_json, make_user, top_up

from .bridge_util import carrier_record, phone_server
from .test_dial import _env

ECHO = "+8613800138000"
TONES = {"mum": 500.0, "lili": 700.0, "wei": 1100.0}
LEVEL = -20.0   # dBFS peak of each tone


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = phone_server(tmp_path_factory.mktemp("groupcalls"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def group(server: LiveServer) -> str:
    tokens = {n: make_user(server, n) for n in TONES}
    top_up(server, "mum")   # the phone mum adds is a paid call (issue 13)
    for n in ("lili", "wei"):
        add_contact(server, tokens["mum"], n)
    status, body = http_json("POST", f"{server.url}/api/groups", {"name": "一家人", "members": ["lili", "wei"]},
                             tokens["mum"])
    assert status == 201, body
    return str(body["id"])


def jego(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jego_call.cli.main", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


class Dialer:
    """One `jego dial group` subprocess."""

    def __init__(self, server: LiveServer, user: str, group: str, tmp: Path, *args: str) -> None:
        self.user = user
        self.record = tmp / f"{user}.wav"
        self.err = tmp / f"{user}.err"
        cmd = [sys.executable, "-m", "jego_call.cli.main", "dial", "group", group, "--server", server.url,
               "--user", user, "--password", PASSWORD, "--json", "--play", f"tone:{TONES[user]:g}:{LEVEL:g}",
               "--record", str(self.record), *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                     stderr=open(self.err, "w"), text=True)  # noqa: SIM115

    def result(self, timeout: float = 60) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=timeout)
        assert out.strip(), f"{self.user}: no JSON (exit {self.proc.returncode}):\n{self.err.read_text()}"
        res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        assert self.proc.returncode == 0 and res["outcome"] == "answered", (res, self.err.read_text())
        return res


def start_all(server: LiveServer, group: str, tmp: Path, args: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """The three start at once: the first to reach the server starts the group's call, the
    others find it running (call_exists) and join it."""
    dialers = [Dialer(server, u, group, tmp, *args.get(u, [])) for u in TONES]
    res = {d.user: d.result() for d in dialers}
    assert sum(1 for r in res.values() if r["started"]) == 1, res
    assert len({r["call_id"] for r in res.values()}) == 1
    return res


def make_login(server: LiveServer, user: str) -> str:
    status, body = http_json("POST", f"{server.url}/api/login", {"username": user, "password": PASSWORD})
    assert status == 200
    return str(body["token"])


def _chunk_levels(x: np.ndarray, rate: int, freqs: list[float]) -> dict[float, float]:
    w = np.hanning(x.size)
    spec = np.abs(np.fft.rfft(x * w)) * 2 / w.sum()
    bins = np.fft.rfftfreq(x.size, 1 / rate)
    out = {}
    for f in freqs:
        band = (bins > f - 15) & (bins < f + 15)
        out[f] = 20 * np.log10(max(float(spec[band].max()), 1e-9))
    return out


def tone_levels(x: np.ndarray, rate: int, freqs: list[float]) -> dict[float, float]:
    """The level (dBFS of a sine's peak) of each frequency in `x`: Hann-windowed FFTs of 0.5 s
    chunks, the median per frequency (a lost packet here and there does not move it)."""
    n = rate // 2
    if x.size < n:
        raise AssertionError(f"segment too short: {x.size} samples")
    chunks = [_chunk_levels(x[i:i + n], rate, freqs) for i in range(0, x.size - n + 1, n)]
    return {f: float(np.median([c[f] for c in chunks])) for f in freqs}


def window(res: dict[str, Any], start_unix: float, end_unix: float) -> tuple[np.ndarray, int]:
    """The part of a dialer's recording between two Unix times."""
    x, rate = analysis.read_wav(res["record"])
    t0 = res["record_started_at"]
    a, b = int(max(0.0, start_unix - t0) * rate), int(max(0.0, end_unix - t0) * rate)
    assert b - a > rate // 4, (start_unix - t0, end_unix - t0, x.size / rate)
    return x[a:b], rate


def event_time(res: dict[str, Any], what: str) -> float:
    return float(next(e["t"] for e in res["events"] if e["what"] == what))


def assert_hears(levels: dict[float, float], present: list[float], absent: list[float], who: str) -> None:
    got = [levels[f] for f in present]
    for f in present:
        assert abs(levels[f] - LEVEL) <= 3.0, (who, f, levels)
    assert max(got) - min(got) <= 1.0, (who, levels)        # the others' tones within 1 dB of each other
    for f in absent:
        assert levels[f] < min(got) - 30, (who, f, levels)   # not there (its own, or a muted one)


def test_three_dialers_each_hear_the_two_others(server: LiveServer, group: str, tmp_path: Path) -> None:
    res = start_all(server, group, tmp_path, {"mum": ["--duration", "14"], "lili": ["--duration", "9"],
                                              "wei": ["--duration", "9"]})
    start = max(r["joined_at"] for r in res.values()) + 1.0
    end = min(r["left_at"] for r in res.values()) - 0.5
    for user, r in res.items():
        x, rate = window(r, start, end)
        others = [f for u, f in TONES.items() if u != user]
        assert_hears(tone_levels(x, rate, list(TONES.values())), others, [TONES[user]], user)
    # lili and wei left first: their legs ended, mum's call went on
    assert max(res["lili"]["left_at"], res["wei"]["left_at"]) < res["mum"]["left_at"] - 1
    assert {p["username"]: p["state"] for p in res["mum"]["participants"]} == {"mum": "joined", "lili": "left",
                                                                               "wei": "left"}


def test_phone_added_hears_all_three_and_is_heard_by_all(server: LiveServer, group: str, tmp_path: Path) -> None:
    res = start_all(server, group, tmp_path, {"mum": ["--duration", "16", "--add-phone", ECHO, "--add-phone-at", "4"],
                                              "lili": ["--duration", "11"], "wei": ["--duration", "11"]})
    phone = [p for p in res["mum"]["phones"] if p["number"] == ECHO]
    assert phone, res["mum"]["phones"]
    cdr = carrier_record(server, ECHO)
    heard, rate = analysis.read_wav(cdr["recording"])
    mid = heard[int(rate * 1.0): int(rate * 4.0)]   # the carrier's recording starts at its answer
    assert_hears(tone_levels(mid, rate, list(TONES.values())), list(TONES.values()), [], "carrier")
    # the echo comes back: after the phone joined, everyone also hears their own tone (from the phone)
    added = event_time(res["mum"], "add_phone")
    start, end = added + 3.0, min(r["left_at"] for r in res.values()) - 0.5
    for user, r in res.items():
        x, rate_ = window(r, start, end)
        levels = tone_levels(x, rate_, list(TONES.values()))
        assert levels[TONES[user]] > LEVEL - 12, (user, levels)   # its own tone, from the phone's echo


def test_mute_stops_that_tone_and_a_leave_ends_only_that_member(server: LiveServer, group: str,
                                                               tmp_path: Path) -> None:
    res = start_all(server, group, tmp_path, {"mum": ["--duration", "16"], "lili": ["--duration", "13",
                                              "--mute-at", "5"], "wei": ["--duration", "9"]})
    joined = max(r["joined_at"] for r in res.values())
    muted = event_time(res["lili"], "mute")
    wei_left = res["wei"]["left_at"]
    # before the mute: mum hears lili and wei
    x, rate = window(res["mum"], joined + 0.8, muted - 0.3)
    assert_hears(tone_levels(x, rate, list(TONES.values())), [700.0, 1100.0], [500.0], "mum before")
    # muted: mum and wei no longer hear lili; wei still hears mum
    x, rate = window(res["mum"], muted + 0.5, wei_left - 0.5)
    lv = tone_levels(x, rate, list(TONES.values()))
    assert lv[700.0] < lv[1100.0] - 30, lv
    x, rate = window(res["wei"], muted + 0.5, wei_left - 0.5)
    lv = tone_levels(x, rate, list(TONES.values()))
    assert lv[700.0] < lv[500.0] - 30, lv
    # wei left: the call goes on for mum and lili (lili still hears mum), and only wei's leg ended
    x, rate = window(res["lili"], wei_left + 0.8, res["lili"]["left_at"] - 0.5)
    lv = tone_levels(x, rate, list(TONES.values()))
    assert abs(lv[500.0] - LEVEL) <= 3.0 and lv[1100.0] < lv[500.0] - 30, lv
    assert res["mum"]["connected_s"] > 15 and res["lili"]["connected_s"] > 12
    assert res["wei"]["reason"] == "left" and res["mum"]["reason"] == "left"


def test_group_cli_and_group_messages(server: LiveServer, tmp_path: Path) -> None:
    for n in ("ann", "ben"):
        make_user(server, n)
    tok = make_login(server, "ann")
    add_contact(server, tok, "ben")
    auth = ["--server", server.url, "--user", "ann", "--password", PASSWORD]
    res = jego("group", "create", "周末", "ben", "--json", *auth)
    assert res.returncode == 0, res.stderr
    gid = json.loads(res.stdout)["id"]
    res = jego("message", "send", f"group:{gid}", "大家好", "--json", *auth)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["group"] == gid
    res = jego("message", "list", f"group:{gid}", "--server", server.url, "--user", "ben", "--password", PASSWORD)
    assert res.returncode == 0 and "大家好" in res.stdout and "created" in res.stdout, res.stdout
    res = jego("group", "list", *auth)
    assert gid in res.stdout and "ben" in res.stdout
    res = jego("group", "add", gid, "nobody", *auth)
    assert res.returncode == 1 and "unknown_user" in res.stderr
    res = jego("group", "remove", gid, "ann", "--server", server.url, "--user", "ben", "--password", PASSWORD)
    assert res.returncode == 1 and "forbidden" in res.stderr
    res = jego("group", "leave", gid, *auth)
    assert res.returncode == 0, res.stderr
    res = jego("group", "list", *auth)
    assert gid not in res.stdout
    res = jego("group", "create", "x", "--user", "ann")
    assert res.returncode == 2
