"""Real servers for the tests, from Debian's packages, each started here and stopped by PID.

    with redis_server(tmp_path) as redis:          # redis.url = "redis://127.0.0.1:PORT/0"
    with postgres_server(tmp_path) as pg:          # pg.url = "postgresql://jego@127.0.0.1:PORT/jego"
    with prometheus_server(tmp_path, ["127.0.0.1:8080"]) as prom:   # prom.url, prom.query(expr)
    with coturn_server(tmp_path, secret="s3cret") as turn:          # turn.url = "turn:127.0.0.1:PORT"

Every server binds 127.0.0.1 on a free port, keeps its data under the test's tmp dir, runs in
the foreground as our child (its own process group) and is stopped with SIGTERM, then SIGKILL,
by the PID we started — never by name. `stop()`/`start()` on a running server lets a test take
it away and bring it back (fault tests). scripts/setup.sh installs redis-server, postgresql,
prometheus and coturn for the test suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import wait_for

HOST = "127.0.0.1"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float,
          log: Path | None) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        with contextlib.suppress(OSError, ValueError):
            return check()
        return False

    try:
        wait_for(ready, timeout, f"{what} to become ready", interval=0.05)
    except AssertionError:
        raise RuntimeError(f"{what} did not become ready within {timeout} s") from None


def _tcp_ready(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    return check


@dataclass
class Managed:
    """One server process: `argv`, how to tell it is ready, where its log goes."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    log: Path
    env: dict[str, str] | None = None
    user: str | None = None          # run as this user (postgres refuses root)
    timeout: float = 30.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        argv = self.argv
        if self.user is not None and os.geteuid() == 0:
            argv = ["runuser", "-u", self.user, "--", *argv]
        out = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True)
        finally:
            out.close()
        try:
            _wait(self.ready, self.proc, self.name, self.timeout, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the process we started (by its PID and process group), SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed: scripts/setup.sh installs it for the tests")
    return path


# --- Redis ------------------------------------------------------------------------------------

@dataclass
class RedisServer:
    server: Managed
    port: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """One RESP command on a fresh connection (for readiness checks and test probes)."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
        with socket.create_connection((HOST, self.port), timeout=2) as s:
            s.sendall(payload)
            return s.recv(65536)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[RedisServer]:
    port = free_port()
    d = tmp / f"redis-{port}"
    d.mkdir(parents=True)
    argv = [_require("redis-server"), "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(d), "--daemonize", "no", "--protected-mode", "yes"]
    holder: list[RedisServer] = []

    def ready() -> bool:
        return holder[0].command("PING").startswith(b"+PONG")

    server = RedisServer(Managed("redis-server", argv, ready, d / "redis.log"), port)
    holder.append(server)
    server.server.start()
    try:
        yield server
    finally:
        server.server.stop()


# --- PostgreSQL -------------------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    return _require(name)


@dataclass
class PostgresServer:
    server: Managed
    port: int
    data: Path

    @property
    def url(self) -> str:
        return f"postgresql://jego@{HOST}:{self.port}/jego"

    def create_database(self, name: str) -> str:
        """A new, empty database `name` on this server (createdb); its URL."""
        made = subprocess.run([_pg_bin("createdb"), "-h", HOST, "-p", str(self.port), "-U", "jego", name],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if made.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {made.stderr.decode(errors='replace')}")
        return self.url.rsplit("/", 1)[0] + "/" + name


def _pg_ready(port: int) -> Callable[[], bool]:
    """Accepting queries, not only TCP connections (during start-up it answers "starting up")."""
    def check() -> bool:
        return subprocess.run([_pg_bin("pg_isready"), "-q", "-h", HOST, "-p", str(port), "-U", "jego", "-d", "postgres"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5).returncode == 0
    return check


@contextlib.contextmanager
def postgres_server(tmp: Path, *, durable: bool = False) -> Iterator[PostgresServer]:
    """A throw-away cluster: initdb (trust auth for user jego on loopback), database `jego`.

    Tests run it with fsync and synchronous commit off (fast, and a test never pulls the power);
    `durable=True` keeps PostgreSQL's defaults (every commit flushed to disk), for benchmarks."""
    port = free_port()
    user = None
    if os.geteuid() == 0:
        # postgres refuses to run as root: its files live in a directory of its own under /tmp
        # (pytest's tmp tree is private to root), removed when the server is done.
        user = "postgres"
        pw = pwd.getpwnam(user)
        d = Path(tempfile.mkdtemp(prefix=f"jego-pg-{port}-"))
        os.chmod(d, 0o755)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    else:
        d = tmp / f"pg-{port}"
        d.mkdir(parents=True)
    data = d / "data"
    init = [_pg_bin("initdb"), "-D", str(data), "-U", "jego", "--auth=trust", "-E", "UTF8", "--no-sync"]
    if user is not None:
        init = ["runuser", "-u", user, "--", *init]
    subprocess.run(init, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    argv = [_pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(d), "-c", f"listen_addresses={HOST}"]
    if not durable:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    server = PostgresServer(Managed("postgres", argv, _pg_ready(port), d / "postgres.log", user=user), port, data)
    server.server.start()
    try:
        created = subprocess.run([_pg_bin("createdb"), "-h", HOST, "-p", str(port), "-U", "jego", "jego"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr.decode(errors='replace')}")
        yield server
    finally:
        server.server.stop(signal.SIGINT)  # postgres: SIGINT is "fast shutdown"
        if user is not None:
            shutil.copy(d / "postgres.log", tmp / f"postgres-{port}.log")
            shutil.rmtree(d, ignore_errors=True)


# --- Prometheus -------------------------------------------------------------------------------

@dataclass
class PrometheusServer:
    server: Managed
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as r:  # noqa: S310 - loopback
            return json.loads(r.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector for `expr` (GET /api/v1/query): [{"metric": {...}, "value": [t, "v"]}]."""
        body = self.api("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def targets_up(self) -> bool:
        body = self.api("/api/v1/targets")
        active = body["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)


@contextlib.contextmanager
def prometheus_server(tmp: Path, targets: Sequence[str], *, interval_s: float = 1.0) -> Iterator[PrometheusServer]:
    """Prometheus scraping `targets` ("host:port" with /metrics) every `interval_s`."""
    port = free_port()
    d = tmp / f"prometheus-{port}"
    d.mkdir(parents=True)
    cfg = d / "prometheus.yml"
    cfg.write_text(
        "global:\n"
        f"  scrape_interval: {interval_s:g}s\n"
        f"  evaluation_interval: {interval_s:g}s\n"
        "scrape_configs:\n"
        "  - job_name: jego\n"
        f"    static_configs:\n      - targets: [{', '.join(repr(t) for t in targets)}]\n")
    argv = [_require("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={d / 'tsdb'}",
            f"--web.listen-address={HOST}:{port}", "--log.level=warn"]
    holder: list[PrometheusServer] = []

    def ready() -> bool:
        with urllib.request.urlopen(f"http://{HOST}:{port}/-/ready", timeout=1) as r:  # noqa: S310
            return bool(r.status == 200)

    server = PrometheusServer(Managed("prometheus", argv, ready, d / "prometheus.log"), port)
    holder.append(server)
    server.server.start()
    try:
        yield server
    finally:
        server.server.stop()


# --- coturn -----------------------------------------------------------------------------------

def stun_binding(port: int, timeout: float = 0.5) -> tuple[str, int] | None:
    """Send one STUN Binding request (RFC 5389 §6) to 127.0.0.1:port; the mapped address or None."""
    txid = os.urandom(12)
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + txid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(request, (HOST, port))
        try:
            data, _ = s.recvfrom(2048)
        except TimeoutError:
            return None
    if len(data) < 20 or data[:2] != b"\x01\x01" or data[4:20] != b"\x21\x12\xa4\x42" + txid:
        return None
    pos = 20
    while pos + 4 <= len(data):
        kind, length = int.from_bytes(data[pos:pos + 2], "big"), int.from_bytes(data[pos + 2:pos + 4], "big")
        value = data[pos + 4:pos + 4 + length]
        if kind == 0x0020 and len(value) >= 8:  # XOR-MAPPED-ADDRESS
            xport = int.from_bytes(value[2:4], "big") ^ 0x2112
            ip = bytes(b ^ m for b, m in zip(value[4:8], b"\x21\x12\xa4\x42", strict=True))
            return socket.inet_ntoa(ip), xport
        pos += 4 + length + (-length % 4)
    return None


@dataclass
class TurnServer:
    server: Managed
    port: int
    secret: str
    realm: str

    @property
    def url(self) -> str:
        return f"turn:{HOST}:{self.port}?transport=udp"


@contextlib.contextmanager
def coturn_server(tmp: Path, *, secret: str, realm: str = "jego.test", verbose: bool = False) -> Iterator[TurnServer]:
    """coturn on loopback with `use-auth-secret` (TURN REST API credentials), relaying on loopback;
    `verbose`: its log names every allocation and its user (how a test proves a call was relayed)."""
    port = free_port(socket.SOCK_DGRAM)
    d = tmp / f"coturn-{port}"
    d.mkdir(parents=True)
    low = 40000 + (port % 1000) * 20
    argv = [_require("turnserver"), "-n", f"--listening-ip={HOST}", f"--listening-port={port}",
            f"--relay-ip={HOST}", f"--min-port={low}", f"--max-port={low + 19}", "--use-auth-secret",
            f"--static-auth-secret={secret}", f"--realm={realm}", "--no-tls", "--no-dtls", "--no-cli",
            "--allow-loopback-peers", "--fingerprint", f"--pidfile={d / 'turnserver.pid'}",
            f"--log-file={d / 'turnserver.log'}", "--simple-log", f"--userdb={d / 'turndb'}"]
    if verbose:
        argv.append("--verbose")

    def ready() -> bool:
        return stun_binding(port) is not None

    server = TurnServer(Managed("turnserver", argv, ready, d / "stdout.log"), port, secret, realm)
    server.server.start()
    try:
        yield server
    finally:
        server.server.stop()
