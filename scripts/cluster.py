"""Run a local cluster (scripts/cluster is the entry point; it installs the servers first).

Starts redis-server, PostgreSQL (only when config/jego.toml has a [db] section with `url`: the
database layer of issue 12) and coturn with `use-auth-secret`, each on a free 127.0.0.1 port
under --dir, stopped by PID (tests/servers.py); then `--nodes` `jego serve` processes sharing
them (and one data dir: accounts, messages, media), and one `jego bridge` worker connected to the
last node. Prints every URL and waits for Ctrl-C, then stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import coturn_server, postgres_server, redis_server  # noqa: E402


def has_db_url() -> bool:
    """Whether this checkout's database layer takes `[db] url` (PostgreSQL)."""
    with open(ROOT / "config" / "jego.toml", "rb") as f:
        return "url" in tomllib.load(f).get("db", {})


def start(argv: list[str], env: dict[str, str], log: Path, wait_for: str | None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while wait_for is not None and not re.search(wait_for, log.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{argv[2:4]} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--base-port", type=int, default=8081)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/jego-cluster"))
    ap.add_argument("--no-bridge", action="store_true", help="no `jego bridge` worker (nor carrier)")
    args = ap.parse_args()
    if not 1 <= args.nodes <= 16:
        ap.error("--nodes: 1 to 16")
    base: Path = args.dir
    base.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    names: list[str] = []
    turn_secret = secrets.token_hex(16)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(base))
        turn = stack.enter_context(coturn_server(base, secret=turn_secret))
        env = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
        env.update(PYTHONUNBUFFERED="1", JEGO_CLUSTER_REDIS_URL=redis.url,
                   JEGO_CLUSTER_KEY_PREFIX="jego", JEGO_ICE_TURN_URLS=f'["{turn.url}"]',
                   JEGO_ICE_TURN_SECRET=turn_secret)
        pg = None
        if has_db_url():
            pg = stack.enter_context(postgres_server(base))
            env["JEGO_DB_URL"] = pg.url
        data = base / "data"
        jego = [sys.executable, "-m", "jego_call.cli.main"]
        urls = []
        try:
            for i in range(args.nodes):
                port = args.base_port + i
                extra = [] if i == 0 and not args.no_bridge else ["--no-carrier"]
                node_env = {**env, "JEGO_CLUSTER_NODE_ID": f"node{i + 1}"}
                procs.append(start([*jego, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
                                    str(data), "--no-bridge", *extra], node_env, base / f"node{i + 1}.log",
                                   r"is running: open (http://\S+)/"))
                urls.append(f"http://127.0.0.1:{port}/")
                names.append(f"node{i + 1}")
            if not args.no_bridge:
                procs.append(start([*jego, "bridge", "--server", urls[-1].rstrip("/"), "--data-dir", str(data),
                                    "--name", "bridge-1"], {**env, "JEGO_BRIDGE_SIP_PORT": "0"},
                                   base / "bridge-1.log", r"connected to .* as a gateway"))
                names.append("bridge-1")
            print("Jego Call cluster is running:")
            for i, url in enumerate(urls):
                print(f"  node{i + 1}: {url}   (log {base / f'node{i + 1}.log'})")
            print(f"  redis:    {redis.url}")
            print(f"  turn:     {turn.url} (use-auth-secret; clients get ephemeral credentials)")
            print(f"  database: {pg.url if pg else str(data / 'jego.sqlite3') + ' (SQLite, shared by the nodes)'}")
            if not args.no_bridge:
                print(f"  bridge:   bridge-1 on node{args.nodes}, carrier simulator in node1")
            print("Put any HTTP/WebSocket load balancer in front (no sticky sessions needed). Ctrl-C stops.",
                  flush=True)
            done = False

            def on_signal(_sig: int, _frm: object) -> None:
                nonlocal done
                done = True

            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            while not done:
                for p, name in zip(procs, names, strict=True):
                    if p.poll() is not None:
                        print(f"{name} exited with {p.returncode}: stopping everything", file=sys.stderr)
                        done = True
                time.sleep(0.5)
        finally:
            for p in reversed(procs):
                stop(p)
    print("Jego Call cluster stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
