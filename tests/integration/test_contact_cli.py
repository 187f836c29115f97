"""`jego contact` and `jego user add` as real subprocesses (issue 11): a terminal-only user adds a
contact, messages them, blocks and unblocks; `jego user add` asks for the password twice without
echo on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

from ..conftest import PASSWORD, ROOT, LiveServer, http_json, make_user


def jego(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
    return subprocess.run([sys.executable, "-m", "jego_call.cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def as_user(server: LiveServer, name: str) -> list[str]:
    return ["--server", server.url, "--user", name, "--password", PASSWORD]


def test_contact_commands_against_a_live_server(live_server: LiveServer) -> None:
    s = live_server
    for name in ("alice", "bob"):
        make_user(s, name)
    status, _ = http_json("PATCH", f"{s.url}/api/me", {"display_name": "鲍勃"},
                          http_json("POST", f"{s.url}/api/login", {"username": "bob", "password": PASSWORD})[1]["token"])
    assert status == 200
    # before: a terminal user cannot message anyone
    r = jego("message", "send", "bob", "hello", *as_user(s, "alice"))
    assert r.returncode == 1 and "not_contact" in r.stderr
    r = jego("contact", "add", "Bob", *as_user(s, "alice"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "added bob (鲍勃) (offline)"
    r = jego("message", "send", "bob", "hello from the terminal", *as_user(s, "alice"))
    assert r.returncode == 0, r.stderr
    r = jego("contact", "list", "--json", *as_user(s, "alice"))
    assert json.loads(r.stdout) == {"contacts": [{"username": "bob", "display_name": "鲍勃", "presence": "offline"}],
                                    "blocked": []}
    # bob blocks alice from his terminal: her message is refused with "not available"
    r = jego("contact", "block", "alice", *as_user(s, "bob"))
    assert (r.returncode, r.stdout.strip()) == (0, "blocked alice: they can no longer call or message you")
    r = jego("contact", "list", *as_user(s, "bob"))
    assert r.stdout.splitlines() == ["no contacts yet: jego contact add NAME", "blocked: alice"]
    r = jego("message", "send", "bob", "are you there?", *as_user(s, "alice"))
    assert r.returncode == 1 and r.stderr.strip() == "jego message send: unavailable: not available"
    r = jego("contact", "unblock", "alice", *as_user(s, "bob"))
    assert r.returncode == 0 and "unblocked alice" in r.stdout
    r = jego("contact", "remove", "bob", *as_user(s, "alice"))
    assert (r.returncode, r.stdout.strip()) == (0, "removed bob")
    # refusals: exit 1 with one line; usage errors exit 2
    r = jego("contact", "remove", "bob", *as_user(s, "alice"))
    assert r.returncode == 1 and r.stderr.startswith("jego contact remove: not_contact:")
    r = jego("contact", "unblock", "bob", *as_user(s, "alice"))
    assert r.returncode == 1 and "not_found" in r.stderr
    r = jego("contact", "add", "bob", "--server", s.url)
    assert r.returncode == 2 and "--user" in r.stderr


def _run_on_pty(args: list[str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run `args` with a pseudo-terminal as its controlling terminal, typing `answers` at each
    "Password" prompt; returns (exit code, everything it wrote to the terminal)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}

    def make_ctty() -> None:  # getpass opens /dev/tty: make the pty this session's terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=make_ctty)
    os.close(slave)
    seen = b""
    todo = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if todo and seen.rstrip().endswith(b":") and seen.count(b"Password") > len(answers) - len(todo):
                    os.write(master, todo.pop(0).encode() + b"\n")
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, seen.decode(errors="replace")


def test_user_add_asks_for_the_password_twice_without_echo(tmp_path: Path) -> None:
    data = tmp_path / "data"
    base = [sys.executable, "-m", "jego_call.cli.main", "user", "add"]
    rc, out = _run_on_pty([*base, "wangfang", "--display-name", "王芳", "--data-dir", str(data)],
                          ["a secret long one", "a secret long one"])
    assert rc == 0, out
    assert out.count("Password") == 2 and "created user wangfang" in out
    assert "a secret long one" not in out  # no echo
    rc, out = _run_on_pty([*base, "second", "--data-dir", str(data)], ["first-password", "other-password"])
    assert rc == 2 and "the passwords do not match" in out
    r = jego("user", "list", "--data-dir", str(data))
    assert r.stdout.split() == ["wangfang"]
    # the password typed works, and the display name was stored
    from jego_call.accounts import Accounts, load_secret
    from jego_call.config import load_config
    from jego_call.db import Database, run_sync

    cfg = load_config(None, environ={}, overrides={"data": {"dir": str(data)}})
    db = Database.open(data / "jego.sqlite3")
    try:
        accounts = Accounts(db, load_secret(data), cfg.auth)
        assert run_sync(accounts.login("wangfang", "a secret long one")).username == "wangfang"
        assert run_sync(accounts.display_name("wangfang")) == "王芳"
    finally:
        run_sync(db.close())
