"""Shared fixtures: a live `jego serve` subprocess, users on it, and in-process app clients.

`live_server` starts a real server on a free 127.0.0.1 port with a temp data dir and a 5 s ring
timeout; `server_factory(**env)` starts one with other JEGO_* settings (in tests/integration/
a module's `backends` marker runs them on PostgreSQL and Redis too: its conftest). `make_user(server, name)`
registers an account over HTTP and returns its token; `top_up(server, name, 5000)` gives it
prepaid credit (minor units) on the server's database, as `jego credit add` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared"
PASSWORD = "correct-horse-9"


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] | None = None

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def restart(self) -> None:
        """Start a new `jego serve` on the same data dir (after stop() or a SIGKILL); `url` changes."""
        self.stop()
        new = start_server(self.data_dir.parent, self.extra_args, **self.env)
        self.url, self.proc, self.log_path = new.url, new.proc, new.log_path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_server(tmp: Path, extra_args: list[str] | None = None, **env: str) -> LiveServer:
    """Start `jego serve` on a free port; waits until it prints its URL."""
    data_dir = tmp / "data"
    log_path = tmp / f"serve-{time.monotonic_ns()}.log"
    full_env = dict(os.environ)
    # one bridge worker process unless a test asks for more ("auto" starts one per core: seconds
    # of start-up per server for nothing most tests look at)
    full_env.update({"JEGO_CALLS_RING_TIMEOUT_S": "5", "PYTHONUNBUFFERED": "1", "JEGO_BRIDGE_WORKERS": "1"})
    full_env.update(env)
    args = [sys.executable, "-m", "jego_call.cli.main", "serve", "--port", "0", "--data-dir", str(data_dir)]
    args += extra_args if extra_args is not None else ["--no-carrier", "--no-bridge"]
    logf = open(log_path, "w")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=logf, stderr=subprocess.STDOUT, text=True)

    def printed_url() -> str | None:
        text = log_path.read_text(errors="replace")
        if match := re.search(r"open (http://[0-9.:]+)/", text):
            return match.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"jego serve exited {proc.returncode}:\n{text}")
        return None

    try:
        url = wait_for(printed_url, 60, "jego serve to print its URL", interval=0.05)   # generous under load
    except AssertionError:
        proc.kill()
        raise RuntimeError(f"jego serve did not start:\n{log_path.read_text()}") from None
    return LiveServer(url, data_dir, proc, log_path, env, extra_args)


class ServerFactory(Protocol):
    """`server_factory(extra_args, **env)`: one more `jego serve`, stopped at the test's end."""

    def __call__(self, extra_args: list[str] | None = None, **env: str) -> LiveServer: ...


@contextlib.contextmanager
def serving(tmp_path: Path, base_env: Callable[[], dict[str, str]] = dict) -> Iterator[ServerFactory]:
    """A ServerFactory whose servers live in `tmp_path` and stop on exit; each server's settings
    are `base_env()` (a storage backend: tests/integration/conftest.py) under its own `env`."""
    servers: list[LiveServer] = []

    def factory(extra_args: list[str] | None = None, **env: str) -> LiveServer:
        sub = tmp_path / f"srv{len(servers)}"
        sub.mkdir()
        s = start_server(sub, extra_args, **{**base_env(), **env})
        servers.append(s)
        return s

    try:
        yield factory
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    with serving(tmp_path) as factory:
        yield factory


@pytest.fixture
def live_server(server_factory: ServerFactory) -> LiveServer:
    return server_factory()


def http_json(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """One JSON request with urllib; returns (status, decoded body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            raw = res.read()
            return res.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def make_user(server: LiveServer, name: str, password: str = PASSWORD) -> str:
    """Register `name` on `server`; returns its token."""
    status, body = http_json("POST", f"{server.url}/api/register", {"username": name, "password": password})
    assert status == 201, body
    return str(body["token"])


def top_up(server: LiveServer, name: str, amount: int = 5000, note: str = "test credit") -> int:
    """Add `amount` minor units of credit to `name` on the server's database (the ledger
    `jego credit add` uses; safe while the server runs); returns the new balance."""
    import asyncio
    import concurrent.futures

    from jego_call.billing.fraud import FraudConfig
    from jego_call.billing.service import Billing, load_rate_table
    from jego_call.db import Database, PostgresDatabase

    async def add() -> int:
        url = server.env.get("JEGO_DB_URL", "")
        db = await PostgresDatabase.connect(url) if url else Database.open(server.data_dir / "jego.sqlite3")
        try:
            rates = load_rate_table(server.env.get("JEGO_BILLING_RATES", "config/rates.toml"))
            return await Billing(db, rates, FraudConfig()).top_up(name, amount, note)
        finally:
            await db.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(add())
    # Called from a test or fixture on a running loop: the ledger gets a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, add()).result()


def add_contact(server: LiveServer, token: str, name: str) -> None:
    status, body = http_json("POST", f"{server.url}/api/contacts", {"username": name}, token)
    assert status in (200, 201), body


# scripts/test runs the suite in two phases: most files on two pytest-xdist workers at once
# (`-m "not serial"`), then these alone (`-m serial`), because what they assert depends on the
# CPU being free: real-time pacing, on-time shares, PESQ through live transcoding, load runs.
SERIAL_MODULES = frozenset({
    # PESQ through live transcoding, frames on time over a long call, threads per call
    "test_bridge", "test_dial", "test_call_quality", "test_media_endpoint", "test_lean_leg",
    "test_bridge_media_engine", "test_bridge_long_call", "test_dialer_loss",
    # three Chromiums and a conference, judged by FFT
    "test_browser_groups",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
