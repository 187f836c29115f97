"""`jego contact` and `jego group` (jego_call/cli/contact.py, group.py) in-process against a
signalling app served on 127.0.0.1 from a thread of this process (an aiohttp AppRunner on its
own loop, SQLite in tmp_path, a cheap argon2): what they print and their exit codes, done (0),
refused by the server with its code and words (1, one line on stderr), and the same
in --json.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from jego_call.cli.main import main
from jego_call.config import load_config
from jego_call.signalling.server import create_app
from tests.unit.appkit import PASSWORD


@pytest.fixture
def server(tmp_path: Path, cheap_hashes: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key in list(os.environ):
        if key.startswith("JEGO_"):
            monkeypatch.delenv(key)
    cfg = load_config(None, environ={}, overrides={"data": {"dir": str(tmp_path / "data")}})
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def up() -> None:
        runner = web.AppRunner(create_app(cfg))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(up())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(20)
    yield str(box["url"])
    asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    t.join(20)
    loop.close()


def post(url: str, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=10) as res:
        out: dict[str, Any] = json.loads(res.read())
        return out


def user(url: str, name: str, shown: str | None = None) -> str:
    body: dict[str, Any] = {"username": name, "password": PASSWORD}
    if shown:
        body["display_name"] = shown
    return str(post(url, "/api/register", body)["token"])


def jego(capsys: pytest.CaptureFixture[str], url: str, who: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--server", url, "--user", who, "--password", PASSWORD])
    out, err = capsys.readouterr()
    return code, out, err


# --- jego contact ------------------------------------------------------------------------------------------

def test_contact_add_list_remove(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    user(server, "alice")
    user(server, "bob", "Bob B")
    code, out, err = jego(capsys, server, "alice", "contact", "list")
    assert (code, out.strip(), err) == (0, "no contacts yet: jego contact add NAME", "")
    code, out, _ = jego(capsys, server, "alice", "contact", "add", "BOB")
    assert (code, out.strip()) == (0, "added bob (Bob B) (offline)")
    code, out, _ = jego(capsys, server, "alice", "contact", "list")
    assert (code, out.strip()) == (0, "bob (Bob B)  offline")
    code, out, _ = jego(capsys, server, "alice", "contact", "list", "--json")
    assert code == 0 and json.loads(out) == {"contacts": [{"username": "bob", "display_name": "Bob B",
                                                           "presence": "offline"}], "blocked": []}
    code, out, _ = jego(capsys, server, "alice", "contact", "remove", "bob", "--json")
    assert code == 0 and json.loads(out) == {"action": "remove", "username": "bob"}
    assert jego(capsys, server, "alice", "contact", "list")[1].startswith("no contacts yet")


def test_contact_block_and_unblock(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    user(server, "alice")
    user(server, "bob")
    code, out, _ = jego(capsys, server, "alice", "contact", "block", "bob")
    assert (code, out.strip()) == (0, "blocked bob: they can no longer call or message you")
    code, out, _ = jego(capsys, server, "alice", "contact", "list")
    assert "blocked: bob" in out
    code, out, _ = jego(capsys, server, "alice", "contact", "unblock", "bob")
    assert (code, out.strip()) == (0, "unblocked bob (add them again with: jego contact add bob)")
    code, out, err = jego(capsys, server, "alice", "contact", "unblock", "bob")
    assert code == 1 and out == "" and err == "jego contact unblock: not_found: 'bob' is not blocked\n"


@pytest.mark.parametrize(("argv", "words"), [
    (["contact", "add", "ghost"], "unknown_user: no user 'ghost'"),
    (["contact", "add", "alice"], "self_contact: you cannot add or block yourself"),
    (["contact", "block", "ghost"], "unknown_user: no user 'ghost'"),
    (["contact", "remove", "ghost"], "not_contact: "),
])
def test_contact_refusals_are_one_plain_line_and_exit_1(server: str, capsys: pytest.CaptureFixture[str],
                                                        argv: list[str], words: str) -> None:
    user(server, "alice")
    code, out, err = jego(capsys, server, "alice", *argv)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"jego contact {argv[1]}: {words}"), err  # the code, then the server's words


def test_a_wrong_password_is_exit_1_with_words(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    user(server, "alice")
    code = main(["contact", "list", "--server", server, "--user", "alice", "--password", "wrong-pass-1"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and "wrong username or password" in err and err.count("\n") == 1


# --- jego group ----------------------------------------------------------------------------------------------

def test_group_create_list_add_leave(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    ta = user(server, "alice")
    user(server, "bob")
    user(server, "cat")
    post(server, "/api/contacts", {"username": "bob"}, ta)
    post(server, "/api/contacts", {"username": "cat"}, ta)
    code, out, err = jego(capsys, server, "alice", "group", "create", "Family", "bob", "--json")
    assert code == 0 and err == "", err
    gid = json.loads(out)["id"]
    assert gid
    code, out, _ = jego(capsys, server, "alice", "group", "list", "--json")
    assert code == 0
    listed = json.loads(out)
    (g,) = [x for x in listed if x["id"] == gid]
    assert g["name"] == "Family"
    names = {m["username"] for m in g["members"]}
    assert names == {"alice", "bob"}
    code, out, err = jego(capsys, server, "alice", "group", "add", gid, "cat")
    assert code == 0, err
    code, out, err = jego(capsys, server, "bob", "group", "add", gid, "cat")
    assert code == 1 and err.count("\n") == 1 and err.startswith("jego group add: "), err
    code, out, err = jego(capsys, server, "bob", "group", "leave", gid)
    assert code == 0, err
    code, out, _ = jego(capsys, server, "bob", "group", "list", "--json")
    assert all(x["id"] != gid for x in json.loads(out))
    code, out, _ = jego(capsys, server, "bob", "group", "list")
    assert (code, out.strip()) == (0, "no groups")


def test_a_group_of_strangers_is_refused(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    user(server, "alice")
    user(server, "bob")  # not alice's contact
    code, out, err = jego(capsys, server, "alice", "group", "create", "Strangers", "bob")
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("jego group create: "), err


def test_an_unknown_group_is_exit_1(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    user(server, "alice")
    code, out, err = jego(capsys, server, "alice", "group", "leave", "nosuchgroup123")
    assert code == 1 and out == "" and err.startswith("jego group leave: "), err


# --- jego message ---------------------------------------------------------------------------------------------

def friends(url: str) -> None:
    ta = user(url, "alice")
    tb = user(url, "bob")
    post(url, "/api/contacts", {"username": "bob"}, ta)
    post(url, "/api/contacts", {"username": "alice"}, tb)


def test_message_send_then_list_in_order(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    friends(server)
    for text in ("你好", "second", "third"):
        code, out, err = jego(capsys, server, "alice", "message", "send", "bob", text, "--json")
        assert code == 0 and err == "", err
        sent = json.loads(out)
        assert sent["text"] == text and sent["from"] == "alice", sent
    code, out, err = jego(capsys, server, "bob", "message", "list", "alice", "--json")
    assert code == 0, err
    msgs = json.loads(out)["messages"]
    assert [m["text"] for m in msgs] == ["你好", "second", "third"]
    seqs = [m["seq"] for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    code, out, _ = jego(capsys, server, "bob", "message", "list", "alice", "--json", "--limit", "1")
    msgs = json.loads(out)["messages"]
    assert [m["text"] for m in msgs] == ["third"]  # the newest page
    code, out, _ = jego(capsys, server, "bob", "message", "list", "alice", "--json", "--before-seq", str(seqs[2]))
    msgs = json.loads(out)["messages"]
    assert [m["text"] for m in msgs] == ["你好", "second"]


def test_message_to_nobody_or_a_blocker_is_exit_1(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    friends(server)
    code, out, err = jego(capsys, server, "alice", "message", "send", "ghost", "hi")
    assert code == 1 and out == "" and err.startswith("jego message send: unknown_user: "), err
    assert jego(capsys, server, "bob", "contact", "block", "alice")[0] == 0
    code, out, err = jego(capsys, server, "alice", "message", "send", "bob", "hi")
    assert (code, err) == (1, "jego message send: unavailable: not available\n")


def test_message_send_a_file_that_is_not_there_is_usage(server: str, capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    friends(server)
    code, out, err = jego(capsys, server, "alice", "message", "send", "bob", "--file", str(tmp_path / "none.png"))
    assert code == 2 and out == "" and err.startswith("jego message send: ") and err.count("\n") == 1, err
