"""GET /api/credit and GET /api/rate on a real aiohttp server; recovery at start-up; the
`jego credit` and `jego user unsuspend` commands as subprocesses on a data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from jego_call.config import load_config
from jego_call.db import Database, run_sync
from jego_call.errors import ConfigError
from jego_call.signalling.keys import BILLING
from jego_call.signalling.server import create_app

from .conftest import Factory
from .sigclient import PASSWORD, AppClient, register

ROOT = Path(__file__).resolve().parents[2]

# Each test on a client runs on SQLite and on PostgreSQL (tests/integration/conftest.py).
pytestmark = pytest.mark.backends("sqlite", "postgres")


async def get(client: AppClient, path: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    res = await client.get(path, headers=headers)
    return res.status, await res.json()


async def test_credit_endpoint(client: AppClient) -> None:
    assert (await get(client, "/api/credit", None))[0] == 401
    token = await register(client, "alice")
    status, body = await get(client, "/api/credit", token)
    assert status == 200 and body["enabled"] is True
    assert (body["balance"], body["currency"], body["minor_units"], body["entries"], body["suspended"]) == (
        0, "CNY", 2, [], None)
    assert (body["low"], body["low_balance"], body["low_balance_text"]) == (True, 500, "5.00 CNY")
    billing = client.app[BILLING]
    await billing.top_up("alice", 1250, "card 4711")
    now = time.time()
    a = await billing.authorise("api-call-1", "alice", "+8613800138000", now)
    assert a.ok
    await billing.answered("api-call-1", now)
    _, held = await get(client, "/api/credit", token)
    assert (held["balance"], held["held"], held["available"], held["open_calls"]) == (1250, 1245, 5, 1)
    assert held["low"] is True   # what is held by the call in progress is not available
    assert held["calls_in_progress"][0]["destination"] == "+8613800138000"
    await billing.settle("api-call-1", now, now + 75)
    _, body = await get(client, "/api/credit?limit=1", token)
    assert (body["balance"], body["balance_text"], body["held"], body["low"]) == (1220, "12.20 CNY", 0, False)
    (entry,) = body["entries"]
    assert (entry["kind"], entry["amount"], entry["amount_text"], entry["billed_s"], entry["destination"]) == (
        "call", -30, "-0.30 CNY", 120, "+8613800138000")
    assert (await get(client, "/api/credit?limit=x", token))[0] == 400


async def test_rate_endpoint(client: AppClient) -> None:
    token = await register(client, "alice")
    status, body = await get(client, "/api/rate?number=138%200013%208000", token)
    assert status == 200 and body["callable"] and body["e164"] == "+8613800138000"
    assert body["rate"]["per_minute_text"] == "0.15 CNY" and body["rate"]["increment"] == "60/60"
    assert body["rate"]["destination"] == "China Mobile mobile" and body["destination_zh"] == "中国移动手机"
    _, land = await get(client, "/api/rate?number=010%206552%209988", token)
    assert land["rate"]["per_minute_text"] == "0.10 CNY" and land["rate"]["increment"] == "30/6"
    _, barred = await get(client, "/api/rate?number=%2B864001234567", token)
    assert not barred["callable"] and barred["refusal"]["reason"] == "destination_barred"
    assert "Shared-cost" in barred["refusal"]["en"]
    _, sat = await get(client, "/api/rate?number=%2B8613492123456", token)
    assert sat["refusal"]["reason"] == "destination_barred" and "Satellite" in sat["refusal"]["en"]
    _, abroad = await get(client, "/api/rate?number=%2B4915112345678", token)
    assert abroad["refusal"]["reason"] == "destination_barred"
    _, sos = await get(client, "/api/rate?number=110", token)
    assert sos["refusal"]["reason"] == "emergency"
    status, bad = await get(client, "/api/rate?number=12", token)
    assert status == 400 and bad["error"]["code"] == "invalid_number"
    assert (await get(client, "/api/rate?number=13800138000", None))[0] == 401


async def test_no_rate_when_the_table_has_none(make_client: Factory, tmp_path: Path) -> None:
    rates = tmp_path / "rates.toml"
    rates.write_text('currency = "CNY"\n[[rate]]\nprefix = "+8610"\nper_minute = "0.10"\n')
    client = await make_client(billing={"rates": str(rates)})
    token = await register(client, "alice")
    _, body = await get(client, "/api/rate?number=13800138000", token)
    assert body["refusal"] == {"reason": "no_rate", "en": "There is no rate for this destination, so it cannot be called",
                               "zh": "此目的地没有资费，无法拨打"}


def test_a_bad_rates_file_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    rates = tmp_path / "rates.toml"
    rates.write_text('currency = "CNY"\n[[rate]]\nprefix = "+86"\nper_minute = 0.15\n')
    cfg = load_config(None, environ={}, overrides={"data": {"dir": str(tmp_path / "d")},
                                                   "billing": {"rates": str(rates)}})
    with pytest.raises(ConfigError) as err:
        create_app(cfg)
    assert err.value.key == "rates.rate[0].per_minute"


def test_a_bad_low_balance_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    cfg = load_config(None, environ={"JEGO_BILLING_LOW_BALANCE": "lots"},
                      overrides={"data": {"dir": str(tmp_path / "d")}})
    with pytest.raises(ConfigError, match="amount") as err:
        create_app(cfg)
    assert err.value.key == "billing.low_balance"


async def test_start_up_settles_calls_a_crash_left_open(tmp_path: Path) -> None:
    from jego_call.billing.fraud import FraudConfig
    from jego_call.billing.service import Billing, load_rate_table
    data = tmp_path / "d"
    db = Database.open(data / "jego.sqlite3")
    await db.execute("INSERT INTO users(username, password_hash, created_at) VALUES ('alice', 'x', 0)")
    b = await Billing.open(db, load_rate_table(), FraudConfig())
    now = time.time() - 600
    await b.top_up("alice", 500, "t", now)
    await b.authorise("crashed", "alice", "+8613800138000", now)
    await b.answered("crashed", now + 1)
    await b.heartbeat(["crashed"], now + 91)               # last seen 90 s after the answer
    await db.close()
    cfg = load_config(None, environ={}, overrides={"data": {"dir": str(data)}})
    client = TestClient(TestServer(create_app(cfg), host="127.0.0.1"))
    await client.start_server()
    try:
        view = await client.app[BILLING].view("alice")
        assert (view["balance"], view["held"]) == (470, 0)          # 2 started minutes at 0.15
        assert view["entries"][0]["call_id"] == "crashed" and view["entries"][0]["billed_s"] == 120
    finally:
        await client.close()


# -- the CLI --------------------------------------------------------------------------------
# One real subprocess per command proves the console entry; the other cases call the same
# `main(argv)` in this process (every `jego` start imports aiortc: seconds on a loaded machine).

def jego(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
    return subprocess.run([sys.executable, "-m", "jego_call.cli.main", *args, "--data-dir", str(data)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def run(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    from jego_call.cli.main import main
    try:
        code = main([*args, "--data-dir", str(data)])
    except SystemExit as exc:           # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_credit_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("JEGO_")]:
        monkeypatch.delenv(k)
    data = tmp_path / "data"
    assert run(capsys, data, "user", "add", "alice", "--password", PASSWORD)[0] == 0
    r = jego(data, "credit", "add", "alice", "12,50", "--note", "Alipay order 4711")
    assert r.returncode == 0 and r.stdout.strip() == "added 12.50 CNY to alice: balance 12.50 CNY"
    code, out, _ = run(capsys, data, "credit", "add", "ALICE", "5", "--note", "bank transfer")
    assert code == 0 and "balance 17.50 CNY" in out
    code, out, _ = run(capsys, data, "credit", "add", "alice", "-2.50", "--note", "correction")
    assert code == 0 and out.strip() == "deducted 2.50 CNY from alice: balance 15.00 CNY"
    for amount, words in (("1,000", "ambiguous"), ("12.505", "decimal places"), ("5 EUR", "in EUR"),
                          ("x", "not a number")):
        code, _, err = run(capsys, data, "credit", "add", "alice", amount, "--note", "n")
        assert code == 2 and words in err, (amount, err)
    code, _, err = run(capsys, data, "credit", "add", "alice", "5", "--note", "  ")
    assert code == 2 and "--note" in err
    assert run(capsys, data, "credit", "add", "alice", "5")[0] == 2          # argparse: --note is required
    code, _, err = run(capsys, data, "credit", "add", "bob", "5", "--note", "n")
    assert code == 1 and "no user 'bob'" in err
    code, _, err = run(capsys, data, "credit", "add", "alice", "-100", "--note", "n")
    assert code == 1 and "cannot deduct 100.00 CNY" in err
    r = jego(data, "credit", "show", "alice")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0] == "alice: balance 15.00 CNY, held by calls in progress 0.00 CNY, available 15.00 CNY"
    assert lines[1] == "phone calls: allowed" and "correction" in lines[2] and "Alipay order 4711" in lines[4]
    code, out, _ = run(capsys, data, "credit", "show", "alice", "--json", "--limit", "2")
    view = json.loads(out)
    assert view["balance"] == 1500 and len(view["entries"]) == 2 and view["entries"][0]["amount"] == -250
    assert run(capsys, data, "credit", "show", "bob")[0] == 1


def test_unsuspend_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from jego_call.billing.fraud import FraudConfig
    from jego_call.billing.service import Billing, load_rate_table
    for k in [k for k in os.environ if k.startswith("JEGO_")]:
        monkeypatch.delenv(k)
    data = tmp_path / "data"
    assert run(capsys, data, "user", "add", "alice", "--password", PASSWORD)[0] == 0
    code, _, err = run(capsys, data, "user", "unsuspend", "alice")
    assert code == 1 and "not suspended" in err
    assert run(capsys, data, "user", "unsuspend", "nobody")[0] == 1
    b = run_sync(Billing.open(Database.open(data / "jego.sqlite3"), load_rate_table(), FraudConfig()))
    run_sync(b.top_up("alice", 10_000, "t"))
    now = time.time()
    for i in range(5):
        a = run_sync(b.authorise(f"s{i}", "alice", f"+8613800138{i:03d}", now + i))
        if a.ok:
            run_sync(b.settle(f"s{i}", None, now + i))
    assert run_sync(b.view("alice"))["suspended"] is not None
    code, out, _ = run(capsys, data, "credit", "show", "alice")
    assert "phone calls SUSPENDED" in out and "jego user unsuspend alice" in out
    r = jego(data, "user", "unsuspend", "alice", "--note", "customer called us")
    assert r.returncode == 0 and r.stdout.strip() == "phone calls of alice are allowed again"
    assert run_sync(b.view("alice"))["suspended"] is None
    assert run_sync(b.authorise("after", "alice", "+8613800138009", now + 10)).ok
