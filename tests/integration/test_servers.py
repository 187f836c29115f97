"""The real servers the suite starts (tests/servers.py): each answers, survives a stop/start, and
is gone once stopped by its PID."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.servers import coturn_server, postgres_server, redis_server, stun_binding


def gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_redis_answers_restarts_and_stops_by_pid(tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis:
        assert redis.command("SET", "k", "v") == b"+OK\r\n" and redis.command("GET", "k") == b"$1\r\nv\r\n"
        pid = redis.server.pid
        redis.server.stop()
        assert gone(pid) and not redis.server.running
        redis.server.start()
        assert redis.command("PING") == b"+PONG\r\n" and redis.server.pid != pid
        pid = redis.server.pid
    assert gone(pid)


def test_postgres_answers_sql(tmp_path: Path) -> None:
    with postgres_server(tmp_path) as pg:
        out = subprocess.run(["psql", pg.url, "-Atc", "select current_user, 40 + 2"], capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == "jego|42"
        pid = pg.server.pid
    assert gone(pid)


def test_coturn_answers_stun(tmp_path: Path) -> None:
    with coturn_server(tmp_path, secret="s3cret") as turn:
        mapped = stun_binding(turn.port)
        assert mapped is not None and mapped[0] == "127.0.0.1"
        pid = turn.server.pid
    assert gone(pid) and stun_binding(turn.port) is None
