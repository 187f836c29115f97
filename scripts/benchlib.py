"""Shared by the benchmark scripts: a clean environment, process CPU from /proc, and a
`jego serve` subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without JEGO_* settings, unbuffered, plus `extra`."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
    e["PYTHONUNBUFFERED"] = "1"
    e.update(extra)
    return e


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(tmp: Path, **env: str) -> tuple[subprocess.Popen[str], str]:
    """`jego serve --no-carrier --no-bridge` on a free port with `env` (JEGO_* overrides);
    returns (process, base URL) once it prints its URL."""
    log = tmp / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "serve", "--port", "0",
                                 "--data-dir", str(tmp / "data"), "--no-carrier", "--no-bridge"],
                                cwd=ROOT, env=clean_env(**env), stdout=fh, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"open (http://[0-9.:]+)/", log.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"server did not start:\n{log.read_text()}")
