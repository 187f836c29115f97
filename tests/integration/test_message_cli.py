"""`jego message send` / `list` as real subprocesses against a live `jego serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import PASSWORD, ROOT, LiveServer, ServerFactory, add_contact, http_json, make_user


def jego(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "jego_call.cli.main", "message", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def pair(live_server: LiveServer) -> LiveServer:
    ta, tb = make_user(live_server, "alice"), make_user(live_server, "bob")
    make_user(live_server, "carol")
    add_contact(live_server, ta, "bob")
    add_contact(live_server, tb, "alice")
    return live_server


def as_user(server: LiveServer, name: str) -> list[str]:
    return ["--server", server.url, "--user", name, "--password", PASSWORD]


def test_send_text_file_photo_voice_and_list(pair: LiveServer, tmp_path: Path) -> None:
    s = pair
    r = jego("send", "bob", "hello from the terminal", *as_user(s, "alice"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("sent #1 ") and "alice -> bob [sent]: hello from the terminal" in r.stdout
    # env credentials and --json
    r = jego("send", "alice", "你好", "--server", s.url, "--json", env={"JEGO_USER": "bob", "JEGO_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["seq"] == 2 and json.loads(r.stdout)["text"] == "你好"

    photo = tmp_path / "holiday.dat"   # the name says nothing; the content is a JPEG
    Image.new("RGB", (640, 480), (200, 30, 30)).save(photo, "JPEG")
    voice = tmp_path / "note.bin"
    rate = 8000
    with wave.open(str(voice), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(np.arange(rate * 3) * 0.2) * 8000).astype("<i2").tobytes())
    blob = tmp_path / "notes.png"      # named like a photo, but it is not one
    blob.write_bytes(os.urandom(50_000))
    for path, kind in ((photo, "photo"), (voice, "voice"), (blob, "file")):
        r = jego("send", "bob", "--file", str(path), "--json", *as_user(s, "alice"))
        assert r.returncode == 0, r.stderr
        msg = json.loads(r.stdout)
        assert msg["kind"] == kind and msg["media"]["filename"] == path.name
    r = jego("list", "bob", "--json", *as_user(s, "alice"))
    assert r.returncode == 0, r.stderr
    page = json.loads(r.stdout)
    kinds = [(m["seq"], m["from"], m["kind"]) for m in page["messages"]]
    assert kinds == [(1, "alice", "text"), (2, "bob", "text"), (3, "alice", "photo"), (4, "alice", "voice"),
                     (5, "alice", "file")]
    photo_media = page["messages"][2]["media"]
    assert (photo_media["width"], photo_media["height"]) == (640, 480)
    assert page["messages"][3]["media"]["duration_s"] == pytest.approx(3.0, abs=0.01)
    # the file downloads byte for byte as the recipient
    token = http_json("POST", f"{s.url}/api/login", {"username": "bob", "password": PASSWORD})[1]["token"]
    req = urllib.request.Request(f"{s.url}/api/media/{page['messages'][4]['media']['id']}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.read() == blob.read_bytes()
    r = jego("list", "alice", "--limit", "2", *as_user(s, "bob"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("#4 ") and "voice message 3.0 s" in lines[0]
    assert lines[1].startswith("#5 ") and "notes.png" in lines[1]
    assert lines[2] == "(older messages: --before-seq 4)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bad_invocations(pair: LiveServer, tmp_path: Path) -> None:
    s = pair
    cases = [
        (["send", "bob", "--file", str(tmp_path / "missing.jpg"), *as_user(s, "alice")], 2, "no such file"),
        (["send", "bob", "   ", *as_user(s, "alice")], 2, "the text is empty"),
        (["send", "bob", *as_user(s, "alice")], 2, "the text is empty"),
        (["send", "bob", "hi", "--server", s.url], 2, "give --user and --password"),
        (["send", "nobody", "hi", *as_user(s, "alice")], 1, "unknown_user"),
        (["send", "carol", "hi", *as_user(s, "alice")], 1, "not_contact"),
        (["send", "bob", "hi", "--server", s.url, "--user", "alice", "--password", "wrong-password"], 1,
         "auth_failed"),
        (["send", "bob", "hi", "--server", f"http://127.0.0.1:{free_port()}", "--user", "alice",
          "--password", PASSWORD], 1, "cannot reach"),
        (["list", "nobody", *as_user(s, "alice")], 1, "unknown_user"),
        (["list", "bob", "--limit", "0", *as_user(s, "alice")], 2, "--limit"),
    ]
    for args, code, text in cases:
        r = jego(*args)
        assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
        assert text in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stdout == ""
    # nothing was stored by the failures
    r = jego("list", "bob", "--json", *as_user(s, "alice"))
    assert json.loads(r.stdout)["messages"] == []


def test_text_over_the_limit(server_factory: ServerFactory, tmp_path: Path) -> None:
    s = server_factory(JEGO_MESSAGING_MAX_TEXT_CHARS="20")
    ta = make_user(s, "alice")
    make_user(s, "bob")
    add_contact(s, ta, "bob")
    r = jego("send", "bob", "x" * 21, *as_user(s, "alice"))
    assert r.returncode == 1 and "too_large" in r.stderr and "at most 20" in r.stderr

