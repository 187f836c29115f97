"""Bridge worker processes: `jego serve` (`[bridge] workers`) and `jego bridge --workers N`.

    pool = WorkerPool(specs)        # worker_specs(cfg, url, secret, count, ...) makes them
    await pool.start()              # each spec: one `jego bridge` child process, started now
    await pool.readiness()          # None when every worker's /readyz says ready, else why not
    await pool.scrape()             # the workers' /metrics texts (jego serve merges them)
    await pool.stop()               # SIGTERM to each (it hangs up its calls), SIGKILL after a grace

One worker per core ("auto") lets the bridge use every core: a Python process holds one. Each
child is a full `jego bridge` that registers with the trunk and the server on its own; the
server spreads calls over them by free capacity. A child that exits while the pool runs is
started again after a back-off (`restart_delay`: 0.5 s doubling to 10 s, back to 0.5 s after it
has run 30 s). Children are told the supervisor's PID (`--parent-pid`): they ask the kernel for
SIGTERM when it dies (PR_SET_PDEATHSIG), so a `kill -9` of `jego serve` leaves no orphan worker.
They share the data directory's dialog store (bridge-dialogs.sqlite3) with distinct worker ids,
so a dead worker's answered calls are BYEd by a sibling or by its own restart (dialogs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from jego_call.config import Config

log = logging.getLogger("jego.bridge")

ROOT = Path(__file__).resolve().parents[2]
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_S = 30.0          # a worker that ran this long starts again after BACKOFF_MIN_S
STOP_GRACE_S = 10.0      # SIGTERM, then SIGKILL after this (a worker hangs up its calls first)
PROBE_TIMEOUT_S = 1.5


def restart_delay(previous_s: float, lived_s: float) -> float:
    """How long to wait before starting a worker that exited after `lived_s` seconds, the wait
    before its last start having been `previous_s` (0 for the first exit): doubling back-off."""
    if lived_s >= STABLE_S or previous_s <= 0:
        return BACKOFF_MIN_S
    return min(BACKOFF_MAX_S, previous_s * 2)


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def worker_name(base: str, index: int, count: int) -> str:
    """`base` for a single worker; else base-1..N ("bridge-1" with 2 workers: bridge-1, bridge-2)."""
    if count == 1:
        return base
    stem = base.rstrip("0123456789").rstrip("-_") if base[-1:].isdigit() else base
    return f"{stem or 'bridge'}-{index + 1}"


@dataclass
class WorkerSpec:
    """One worker process: its name, its `jego bridge` argv (without --parent-pid) and extra
    environment. `metrics_port` 0: the pool picks a free port at each start (it must know the
    port to ask the worker's /readyz and /metrics)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0


def worker_specs(cfg: Config, server_url: str, secret: str, count: int, *, config_path: str | None,
                 name: str | None = None, max_calls: int | None = None) -> list[WorkerSpec]:
    """`count` workers for [bridge] of `cfg`, talking to `server_url`. A fixed `sip_port` or
    `metrics_port` in the config is the first worker's; the next ones take the ports after it."""
    b = cfg.bridge
    specs = []
    for i in range(count):
        wname = worker_name(name or b.name, i, count)
        argv = [sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", server_url, "--name", wname,
                "--data-dir", str(cfg.data.dir)]
        if config_path:
            argv += ["--config", config_path]
        if max_calls is not None:
            argv += ["--max-calls", str(max_calls)]
        env = {"JEGO_BRIDGE_SECRET": secret}  # not in argv, where `ps` shows it
        if b.sip_port:
            env["JEGO_BRIDGE_SIP_PORT"] = str(b.sip_port + i)
        specs.append(WorkerSpec(wname, argv, env, b.local_host, b.metrics_port + i if b.metrics_port else 0))
    return specs


class WorkerProcess:
    """One supervised child. `proc` is None while it waits to be started again."""

    def __init__(self, spec: WorkerSpec, parent_pid: int) -> None:
        self.spec = spec
        self.parent_pid = parent_pid
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0
        self.started_at = 0.0
        self.delay = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def base_url(self) -> str:
        return f"http://{self.spec.metrics_host}:{self.metrics_port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        self.metrics_port = self.spec.metrics_port or free_tcp_port(self.spec.metrics_host)
        env = {k: v for k, v in os.environ.items()}
        env.update(self.spec.env)
        env["JEGO_BRIDGE_METRICS_PORT"] = str(self.metrics_port)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        argv = [*self.spec.argv, "--parent-pid", str(self.parent_pid)]
        # stdout/stderr inherited: the worker's lines go where the supervisor's go
        # its own session (and scheduler autogroup): a terminal's Ctrl-C reaches the supervisor,
        # which stops the workers in order; the kernel's PDEATHSIG covers a supervisor killed hard
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, close_fds=True,
                                     start_new_session=True)
        self.starts += 1
        self.started_at = time.monotonic()
        log.info("bridge worker %s started (pid %d, metrics port %d)", self.name, self.proc.pid, self.metrics_port)
        return self.proc


class WorkerPool:
    """Supervised `jego bridge` children: `start`, `readiness`, `scrape`, `stop`."""

    def __init__(self, specs: Sequence[WorkerSpec], *, stop_grace_s: float = STOP_GRACE_S) -> None:
        self.workers = [WorkerProcess(s, os.getpid()) for s in specs]
        self.stop_grace_s = stop_grace_s
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._http: aiohttp.ClientSession | None = None

    @property
    def restarts(self) -> int:
        return sum(max(0, w.starts - 1) for w in self.workers)

    async def start(self) -> None:
        """Start every worker now; each is watched (and restarted) by a task of its own."""
        for w in self.workers:
            w.spawn()
            task = asyncio.ensure_future(self._watch(w))
            task.set_name(f"bridge-supervisor-{w.name}")
            self._tasks.append(task)

    async def _watch(self, w: WorkerProcess) -> None:
        while not self._stopping:
            proc = w.proc
            if proc is not None:
                code = await wait_exit(proc)
                if self._stopping:
                    return
                lived = time.monotonic() - w.started_at
                w.delay = restart_delay(w.delay, lived)
                log.warning("bridge worker %s (pid %d) exited with %s after %.1f s; starting it again in %.1f s",
                            w.name, proc.pid, describe_exit(code), lived, w.delay)
                w.proc = None
            await asyncio.sleep(w.delay)
            if self._stopping:
                return
            try:
                w.spawn()
            except OSError as exc:
                log.error("bridge worker %s: cannot start: %s", w.name, exc)
                w.delay = BACKOFF_MAX_S

    async def stop(self) -> None:
        """SIGTERM every worker (each hangs up its calls and un-registers), wait for them, then
        SIGKILL what is left after the grace period. Idempotent."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        procs = [w.proc for w in self.workers if w.proc is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for p in procs:
            try:
                await asyncio.wait_for(wait_exit(p), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("bridge worker pid %d did not stop within %.0f s: killed", p.pid, self.stop_grace_s)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await wait_exit(p)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S))
        return self._http

    async def _get(self, w: WorkerProcess, path: str) -> tuple[int, str]:
        async with self._session().get(w.base_url + path) as r:
            return r.status, await r.text()

    async def readiness(self) -> str | None:
        """None when every worker answers its /readyz with 200, else what is not ready."""
        async def one(w: WorkerProcess) -> str | None:
            if w.proc is None or w.proc.poll() is not None:
                return f"{w.name}: not running (restarting)"
            try:
                status, body = await self._get(w, "/readyz")
            except (aiohttp.ClientError, TimeoutError, OSError):
                return f"{w.name}: starting"
            return None if status == 200 else f"{w.name}: {body.strip()[:200]}"

        problems = [p for p in await asyncio.gather(*(one(w) for w in self.workers)) if p]
        return "; ".join(problems) if problems else None

    async def scrape(self) -> list[str]:
        """Each running worker's /metrics text (a worker that does not answer is left out)."""
        async def one(w: WorkerProcess) -> str | None:
            if w.proc is None or w.proc.poll() is not None:
                return None
            try:
                status, body = await self._get(w, "/metrics")
            except (aiohttp.ClientError, TimeoutError, OSError):
                return None
            return body if status == 200 else None

        return [t for t in await asyncio.gather(*(one(w) for w in self.workers)) if t]

    def status(self) -> list[Mapping[str, object]]:
        return [{"name": w.name, "pid": w.pid, "starts": w.starts, "metrics_port": w.metrics_port}
                for w in self.workers]


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait (without a thread) for `proc` to exit; its return code. A pidfd is readable once
    the process has exited (Linux 5.3+); elsewhere a thread waits."""
    if proc.poll() is not None:
        return int(proc.returncode)
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return int(await asyncio.to_thread(proc.wait))
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    try:
        loop.add_reader(fd, readable)
        try:
            await done
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return int(proc.wait())


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def die_with_parent(parent_pid: int) -> None:
    """In a worker: SIGTERM when the supervisor `parent_pid` dies (prctl PR_SET_PDEATHSIG), and
    exit now if it already has (our parent is no longer it)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit(f"jego bridge: the supervisor (pid {parent_pid}) is gone")
