"""Messaging over real sockets: text with receipts, photos, voice, files, Range, offline sync,
retries, bad uploads, permissions; durability across kill -9 of a live `jego serve`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import signal
import sqlite3
import uuid
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from jego_call.db import Database
from jego_call.signalling.keys import CONFIG, DB
from tests.helpers import until

from ..conftest import LiveServer, ServerFactory, http_json, make_user
from ..conftest import add_contact as live_add_contact
from .conftest import Backend, Factory
from .sigclient import AppClient, Ws, add_contact, register

# Each test on a client or a live server runs embedded (SQLite, in-memory state) and as a cluster
# node on a real PostgreSQL and a real redis-server (tests/integration/conftest.py).
pytestmark = pytest.mark.backends("sqlite", "cluster")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cid() -> str:
    return uuid.uuid4().hex


def media_dir(client: AppClient) -> Path:
    return client.app[CONFIG].media_dir


def stored_files(client: AppClient) -> list[Path]:
    root = media_dir(client)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def media_rows(client: AppClient) -> int:
    db: Database = client.app[DB]
    row = await db.query_one("SELECT COUNT(*) FROM media")
    assert row is not None
    return int(row[0])


async def users(client: AppClient, *names: str, contacts: bool = True) -> list[str]:
    tokens = [await register(client, n) for n in names]
    if contacts:
        for i, t in enumerate(tokens[:2]):
            await add_contact(client, t, names[1 - i])
    return tokens


async def send(ws: Ws, to: str, text: str | None = None, media_id: str | None = None,
               client_id: str | None = None) -> dict[str, Any]:
    """Send and return the ack (or the error the send caused)."""
    client_id = client_id or cid()
    msg: dict[str, Any] = {"type": "send_message", "id": client_id, "client_id": client_id, "to": to}
    if text is not None:
        msg["text"] = text
    if media_id is not None:
        msg["media_id"] = media_id
    await ws.send(msg)
    while True:
        got = await ws.recv()
        if got.get("type") == "message_ack" and got["client_id"] == client_id:
            return got
        if got.get("type") == "error" and got.get("ref") == client_id:
            return got


async def upload(client: AppClient, token: str, data: bytes, kind: str | None = None,
                 filename: str | None = None, multipart: bool = False) -> tuple[int, dict[str, Any]]:
    params = {k: v for k, v in (("kind", kind), ("filename", filename)) if v is not None}
    if multipart:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=filename or "upload.bin", content_type="image/png")
        res = await client.post("/api/media", data=form, params=params, headers=auth(token))
    else:
        res = await client.post("/api/media", data=data, params=params,
                                headers={**auth(token), "Content-Type": "image/png"})
    return res.status, await res.json()


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 7) % 256, (y * 3) % 256, 90) for y in range(h) for x in range(w)])
    img.save(buf, "PNG")
    return buf.getvalue()


def noisy_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def wav(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


# -- text -------------------------------------------------------------------------------------
async def test_text_both_ways_with_receipts_and_history(client: AppClient) -> None:
    ta, tb = await users(client, "alice", "bob")
    a, b = await Ws.open(client, ta), await Ws.open(client, tb)
    ack = await send(a, "bob", "你好, Bob")
    assert ack["type"] == "message_ack" and ack["duplicate"] is False
    m = ack["message"]
    assert (m["seq"], m["from"], m["to"], m["kind"], m["text"], m["state"]) == (1, "alice", "bob", "text",
                                                                                 "你好, Bob", "sent")
    assert m["ts"] > 0
    got = (await b.expect("message"))["message"]
    assert got == m
    await b.send({"type": "receipt", "with": "alice", "state": "delivered", "up_to_seq": 1})
    r = await a.expect("receipt", state="delivered")
    assert (r["with"], r["by"], r["up_to_seq"]) == ("bob", "bob", 1)
    await b.send({"type": "receipt", "with": "alice", "state": "read", "up_to_seq": 1})
    r = await a.expect("receipt", state="read")
    assert r["up_to_seq"] == 1
    reply = await send(b, "alice", "hi mum")
    assert reply["message"]["seq"] == 2  # one sequence per conversation, both directions
    assert (await a.expect("message"))["message"]["text"] == "hi mum"

    res = await client.get("/api/conversations/bob/messages", headers=auth(ta))
    page = await res.json()
    assert [(x["seq"], x["from"], x["state"]) for x in page["messages"]] == [(1, "alice", "read"), (2, "bob", "sent")]
    assert page["has_more"] is False and page["read_seq"] == 1
    res = await client.get("/api/conversations", headers=auth(ta))
    convs = (await res.json())["conversations"]
    assert [(c["with"], c["last_seq"], c["unread"]) for c in convs] == [("bob", 2, 1)]
    assert convs[0]["last_message"]["text"] == "hi mum"
    res = await client.get("/api/conversations", headers=auth(tb))
    assert (await res.json())["conversations"][0]["unread"] == 0
    for w in (a, b):
        await w.close()


async def test_history_pages(client: AppClient) -> None:
    ta, tb = await users(client, "alice", "bob")
    a = await Ws.open(client, ta)
    for i in range(7):
        assert (await send(a, "bob", f"m{i}"))["message"]["seq"] == i + 1
    res = await client.get("/api/conversations/alice/messages?limit=3", headers=auth(tb))
    page = await res.json()
    assert [m["seq"] for m in page["messages"]] == [5, 6, 7] and page["has_more"]
    res = await client.get("/api/conversations/alice/messages?limit=3&before_seq=5", headers=auth(tb))
    assert [m["seq"] for m in (await res.json())["messages"]] == [2, 3, 4]
    res = await client.get("/api/conversations/alice/messages?limit=3&before_seq=2", headers=auth(tb))
    page = await res.json()
    assert [m["seq"] for m in page["messages"]] == [1] and not page["has_more"]
    res = await client.get("/api/conversations/alice/messages?limit=x", headers=auth(tb))
    assert res.status == 400 and (await res.json())["error"]["code"] == "invalid_message"
    res = await client.get("/api/conversations/nobody/messages", headers=auth(tb))
    assert res.status == 404 and (await res.json())["error"]["code"] == "unknown_user"
    res = await client.get("/api/conversations/alice/messages")
    assert res.status == 401
    await a.close()


async def test_other_tabs_of_the_sender_see_the_message(client: AppClient) -> None:
    ta, tb = await users(client, "alice", "bob")
    a1, a2, b = await Ws.open(client, ta), await Ws.open(client, ta), await Ws.open(client, tb)
    ack = await send(a1, "bob", "from tab 1")
    assert (await a2.expect("message"))["message"] == ack["message"]
    assert (await b.expect("message"))["message"] == ack["message"]
    await b.send({"type": "receipt", "with": "alice", "state": "read", "up_to_seq": 1})
    await a1.expect("receipt", by="bob", state="read", up_to_seq=1)   # stored and told (before b2 is there)
    b2 = await Ws.open(client, tb)
    await b.send({"type": "receipt", "with": "alice", "state": "read", "up_to_seq": 1})  # no change: silent
    await b2.no_message("receipt", 0.3)
    for w in (a1, a2, b, b2):
        await w.close()


# -- errors -----------------------------------------------------------------------------------
async def test_send_errors(make_client: Factory) -> None:
    client = await make_client(messaging={"max_text_chars": 10})
    ta, tb, tc = await users(client, "alice", "bob", "carol")
    a = await Ws.open(client, ta)
    assert (await send(a, "carol", "hello"))["code"] == "not_contact"
    assert (await send(a, "nobody", "hello"))["code"] == "unknown_user"
    assert (await send(a, "alice", "hello"))["code"] == "not_contact"
    assert (await send(a, "bob", "   "))["code"] == "invalid_message"
    assert (await send(a, "bob", ""))["code"] == "invalid_message"
    err = await send(a, "bob", "x" * 11)
    assert err["code"] == "too_large" and "at most 10" in err["message"]
    assert (await send(a, "bob", "x" * 10))["type"] == "message_ack"
    assert (await send(a, "bob", media_id="0" * 32))["code"] == "not_found"
    # someone else's media
    status, media = await upload(client, tc, b"carol's bytes", kind="file")
    assert status == 201
    assert (await send(a, "bob", media_id=media["id"]))["code"] == "forbidden"
    # both text and media, bad client id
    await a.send({"type": "send_message", "id": "x1", "client_id": cid(), "to": "bob", "text": "a",
                  "media_id": media["id"]})
    assert (await a.expect_error("invalid_message"))["ref"] == "x1"
    await a.send({"type": "send_message", "id": "x2", "client_id": "short", "to": "bob", "text": "a"})
    assert (await a.expect_error("invalid_message"))["ref"] == "x2"
    await a.send({"type": "receipt", "with": "bob", "state": "seen", "up_to_seq": 1})
    await a.expect_error("invalid_message")
    await a.send({"type": "receipt", "with": "bob", "state": "read", "up_to_seq": 0})
    await a.expect_error("invalid_message")
    await a.send({"type": "receipt", "with": "ghost", "state": "read", "up_to_seq": 1})
    await a.expect_error("unknown_user")
    # before auth
    w = await Ws.open(client)
    await w.send({"type": "send_message", "client_id": cid(), "to": "bob", "text": "hi"})
    await w.expect_error("not_authenticated")
    for s in (a, w):
        await s.close()


async def test_retry_with_same_client_id_is_stored_once(client: AppClient) -> None:
    ta, tb = await users(client, "alice", "bob")
    a, b = await Ws.open(client, ta), await Ws.open(client, tb)
    same = cid()
    first = await send(a, "bob", "only once", client_id=same)
    again = await send(a, "bob", "only once", client_id=same)
    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["message"] == first["message"]
    # a retry from another connection (a reconnect) gets the same answer
    a2 = await Ws.open(client, ta)
    third = await send(a2, "bob", "only once", client_id=same)
    assert third["duplicate"] is True and third["message"]["seq"] == 1
    assert (await b.expect("message"))["message"]["seq"] == 1
    await b.no_message("message", 0.5)
    res = await client.get("/api/conversations/alice/messages", headers=auth(tb))
    assert len((await res.json())["messages"]) == 1
    # client ids are per sender: bob may use the same one
    assert (await send(b, "alice", "mine", client_id=same))["duplicate"] is False
    for w in (a, a2, b):
        await w.close()


# -- offline and sync -------------------------------------------------------------------------
async def test_offline_recipient_gets_everything_in_order_exactly_once(client: AppClient) -> None:
    ta, tb = await users(client, "alice", "bob")
    a = await Ws.open(client, ta)
    for i in range(30):
        await send(a, "bob", f"message {i}")
    b = await Ws.open(client, tb)
    await b.no_message("message", 0.3)  # nothing is pushed before the client asks
    await b.send({"type": "sync"})
    got = []
    while True:
        msg = await b.recv()
        if msg["type"] == "message":
            got.append(msg["message"])
        elif msg["type"] == "sync_done":
            assert msg == {"type": "sync_done", "count": 30, "more": False}
            break
    assert [m["seq"] for m in got] == list(range(1, 31))
    assert [m["text"] for m in got] == [f"message {i}" for i in range(30)]
    await b.no_message("message", 0.5)
    await b.send({"type": "receipt", "with": "alice", "state": "delivered", "up_to_seq": 30})
    r = await a.expect("receipt", state="delivered")
    assert r["up_to_seq"] == 30
    await b.close()
    # live while online, then nothing left undelivered on the next connect
    b = await Ws.open(client, tb)
    await send(a, "bob", "live one")
    assert (await b.expect("message"))["message"]["seq"] == 31
    await b.send({"type": "receipt", "with": "alice", "state": "delivered", "up_to_seq": 31})
    await a.expect("receipt", state="delivered", up_to_seq=31)
    await b.close()
    b = await Ws.open(client, tb)
    await b.send({"type": "sync"})
    done = await b.expect("sync_done")
    assert done["count"] == 0
    assert not [m for m in b.seen if m["type"] == "message"]
    # catching up from a sequence number: both directions after it
    await b.send({"type": "sync", "conversations": [{"with": "alice", "after_seq": 28}]})
    seqs = []
    while (msg := await b.recv())["type"] != "sync_done":
        if msg["type"] == "message":
            seqs.append(msg["message"]["seq"])
    assert seqs == [29, 30, 31]
    await a.close()
    await b.close()


async def test_sync_tells_the_sender_its_receipts(client: AppClient) -> None:
    ta, tb = await users(client, "alice", "bob")
    a = await Ws.open(client, ta)
    for i in range(3):
        await send(a, "bob", f"m{i}")
    await a.close()
    b = await Ws.open(client, tb)
    await b.send({"type": "receipt", "with": "alice", "state": "delivered", "up_to_seq": 3})
    await b.send({"type": "receipt", "with": "alice", "state": "read", "up_to_seq": 2})
    await b.send({"type": "ping"})
    await b.expect("pong")
    a = await Ws.open(client, ta)
    await a.send({"type": "sync", "conversations": [{"with": "bob", "after_seq": 3}]})
    await a.expect("sync_done")
    receipts = {(m["state"], m["up_to_seq"]) for m in a.seen if m["type"] == "receipt"}
    assert receipts == {("delivered", 3), ("read", 2)}
    await a.close()
    await b.close()


# -- media ------------------------------------------------------------------------------------
async def test_photo_with_thumbnail(client: AppClient) -> None:
    ta, tb = await users(client, "alice", "bob")
    a, b = await Ws.open(client, ta), await Ws.open(client, tb)
    data = png(800, 600)
    status, media = await upload(client, ta, data, kind="photo", filename="../../etc/cat.png")
    assert status == 201, media
    assert (media["kind"], media["mime"], media["width"], media["height"], media["size"]) == (
        "photo", "image/png", 800, 600, len(data))
    assert media["thumbnail"] is True and media["filename"] == "cat.png"
    ack = await send(a, "bob", media_id=media["id"])
    assert ack["message"]["kind"] == "photo" and ack["message"]["media"]["id"] == media["id"]
    got = (await b.expect("message"))["message"]
    assert got["media"]["width"] == 800
    res = await client.get(f"/api/media/{media['id']}/thumbnail", headers=auth(tb))
    assert res.status == 200 and res.headers["Content-Type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(await res.read()))
    assert thumb.format == "JPEG" and thumb.size == (320, 240)
    # issue 11: no token in URLs; <img src> uses a short-lived link signed for bob and this media
    res = await client.get(f"/api/media/{media['id']}?token={tb}")
    assert res.status == 401 and (await res.json())["error"]["code"] == "not_authenticated"
    res = await client.get(f"/api/media/{media['id']}/link", headers=auth(tb))
    link = await res.json()
    assert res.status == 200 and "token" not in link["url"] and link["thumbnail_url"].startswith(
        f"/api/media/{media['id']}/thumbnail?")
    res = await client.get(link["url"])
    assert res.status == 200 and res.headers["Content-Type"] == "image/png"
    assert await res.read() == data
    res = await client.get(link["thumbnail_url"])
    assert res.status == 200 and res.headers["Content-Type"] == "image/jpeg"
    # stored content-addressed: media/ab/abcdef...
    sha = hashlib.sha256(data).hexdigest()
    assert (media_dir(client) / sha[:2] / sha).read_bytes() == data
    # sniffed without a declared kind too, multipart this time
    status, again = await upload(client, ta, data, multipart=True, filename="x.bin")
    assert status == 201 and again["kind"] == "photo" and again["id"] != media["id"]
    await a.close()
    await b.close()


async def test_voice_wav_duration(make_client: Factory) -> None:
    client = await make_client(messaging={"max_voice_s": 5.0})
    ta, tb = await users(client, "alice", "bob")
    a, b = await Ws.open(client, ta), await Ws.open(client, tb)
    data = wav(2.5)
    status, media = await upload(client, ta, data, kind="voice", filename="note.wav")
    assert status == 201, media
    assert (media["kind"], media["mime"]) == ("voice", "audio/wav")
    assert media["duration_s"] == pytest.approx(2.5, abs=0.01)
    assert media["thumbnail"] is False
    ack = await send(a, "bob", media_id=media["id"])
    assert ack["message"]["kind"] == "voice"
    assert (await b.expect("message"))["message"]["media"]["duration_s"] == pytest.approx(2.5, abs=0.01)
    res = await client.get(f"/api/media/{media['id']}", headers=auth(tb))
    assert res.headers["Content-Type"] == "audio/wav" and await res.read() == data
    res = await client.get(f"/api/media/{media['id']}/thumbnail", headers=auth(tb))
    assert res.status == 404
    # too long for a voice message: refused as voice, a plain file when not declared
    status, err = await upload(client, ta, wav(6.0), kind="voice")
    assert status == 413 and err["error"]["code"] == "too_large" and "at most 5 s" in err["error"]["message"]
    status, other = await upload(client, ta, wav(6.0))
    assert status == 201 and other["kind"] == "file"
    # sniffed: a short WAV without a declared kind is a voice message
    status, sniffed = await upload(client, ta, wav(1.0), filename="note.txt")
    assert status == 201 and sniffed["kind"] == "voice"
    await a.close()
    await b.close()


async def test_file_download_is_byte_identical_and_ranges_work(client: AppClient) -> None:
    ta, tb = await users(client, "alice", "bob")
    a = await Ws.open(client, ta)
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one write batch
    status, media = await upload(client, ta, data, filename="report.pdf", multipart=True)
    assert status == 201, media
    assert (media["kind"], media["mime"], media["size"], media["filename"]) == (
        "file", "application/octet-stream", len(data), "report.pdf")
    await send(a, "bob", media_id=media["id"])
    url = f"/api/media/{media['id']}"
    res = await client.get(url, headers=auth(tb))
    assert res.status == 200 and await res.read() == data
    assert res.headers["Content-Disposition"].startswith("attachment")
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    res = await client.get(url, headers={**auth(tb), "Range": "bytes=1000-1999"})
    assert res.status == 206
    assert res.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert await res.read() == data[1000:2000]
    res = await client.get(url, headers={**auth(tb), "Range": "bytes=-100"})
    assert res.status == 206 and await res.read() == data[-100:]
    res = await client.get(url, headers={**auth(tb), "Range": f"bytes={len(data) + 5}-"})
    assert res.status == 416
    await a.close()


async def test_lying_png_is_rejected_and_nothing_is_kept(client: AppClient) -> None:
    ta, _tb = await users(client, "alice", "bob")
    status, err = await upload(client, ta, b"GIF89a but really just text" * 10, kind="photo", filename="cat.png")
    assert status == 415 and err["error"]["code"] == "unsupported_media"
    truncated = png(200, 200)[:300]  # PNG magic, broken body
    status, err = await upload(client, ta, truncated, kind="photo", filename="cat.png")
    assert status == 415 and "not a valid PNG" in err["error"]["message"]
    status, err = await upload(client, ta, png(10, 10), kind="voice")
    assert status == 415 and err["error"]["code"] == "unsupported_media"
    status, err = await upload(client, ta, b"x", kind="sticker")
    assert status == 400 and err["error"]["code"] == "invalid_message"
    status, err = await upload(client, ta, b"")
    assert status == 400
    assert stored_files(client) == [] and await media_rows(client) == 0
    # the same bytes as a plain file are fine (a .png name means nothing)
    status, ok = await upload(client, ta, truncated, filename="cat.png")
    assert status == 201 and ok["kind"] == "file"


async def test_upload_size_limits(make_client: Factory) -> None:
    client = await make_client(messaging={"max_file_bytes": 100_000, "max_photo_bytes": 50_000})
    ta, _ = await users(client, "alice", "bob")
    status, err = await upload(client, ta, os.urandom(100_001))
    assert status == 413 and err["error"]["code"] == "too_large"
    big_png = noisy_png(150, 150)
    assert len(big_png) > 50_000
    status, err = await upload(client, ta, big_png, kind="photo")
    assert status == 413
    status, ok = await upload(client, ta, big_png)  # undeclared: over the photo limit, so a file
    assert status == 201 and ok["kind"] == "file"
    status, ok = await upload(client, ta, os.urandom(100_000), multipart=True)
    assert status == 201
    # a streamed (chunked) body over the limit is cut short by the server too
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield os.urandom(10_000)
    res = await client.post("/api/media", data=chunks(), headers=auth(ta))
    assert res.status == 413
    assert len(stored_files(client)) == 2 and await media_rows(client) == 2


async def _cut_off_upload(client: AppClient, token: str, total: int, send_bytes: int, chunked: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    head = (f"POST /api/media?filename=big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n")
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    tmp = media_dir(client) / "tmp"
    earlier = set(tmp.iterdir()) if tmp.exists() else set()
    writer.write(head.encode())
    sent = 0
    while sent < send_bytes:
        n = min(64 * 1024, send_bytes - sent)
        body = os.urandom(n)
        writer.write(f"{n:x}\r\n".encode() + body + b"\r\n" if chunked else body)
        await writer.drain()
        sent += n

    def partial_body() -> bool:   # the server has started this upload's temp file
        return tmp.exists() and any(p not in earlier and p.stat().st_size > 0 for p in tmp.iterdir())
    await until(partial_body, 10, "the partial body in the server's temp file")
    writer.transport.abort()  # RST: the connection dies mid-body
    writer.close()


async def test_upload_cut_off_midway_leaves_nothing(client: AppClient) -> None:
    ta, _ = await users(client, "alice", "bob")
    for chunked in (False, True):
        await _cut_off_upload(client, ta, total=4_000_000, send_bytes=2_500_000, chunked=chunked)
    with contextlib.suppress(AssertionError):   # the handler notices the dead socket and cleans up
        await until(lambda: not stored_files(client), 5, "the cut-off uploads cleaned up", interval=0.1)
    assert stored_files(client) == [] and await media_rows(client) == 0
    tmp = media_dir(client) / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    status, ok = await upload(client, ta, b"fine afterwards")
    assert status == 201 and len(stored_files(client)) == 1


async def test_only_members_may_read_media(client: AppClient) -> None:
    ta, tb, tc = await users(client, "alice", "bob", "carol")
    a = await Ws.open(client, ta)
    status, media = await upload(client, ta, png(64, 48), kind="photo")
    assert status == 201
    url = f"/api/media/{media['id']}"
    # before it is sent, only the uploader may read it
    assert (await client.get(url, headers=auth(ta))).status == 200
    res = await client.get(url, headers=auth(tb))
    assert res.status == 403 and (await res.json())["error"]["code"] == "forbidden"
    await send(a, "bob", media_id=media["id"])
    assert (await client.get(url, headers=auth(tb))).status == 200
    for path in (url, url + "/thumbnail"):
        res = await client.get(path, headers=auth(tc))
        assert res.status == 403 and (await res.json())["error"]["code"] == "forbidden"
    res = await client.get(url, headers={**auth(tc), "Range": "bytes=0-9"})
    assert res.status == 403
    res = await client.get(url)
    assert res.status == 401
    res = await client.get("/api/media/" + "0" * 32, headers=auth(ta))
    assert res.status == 404 and (await res.json())["error"]["code"] == "not_found"
    res = await client.get("/api/media/../../jego.sqlite3", headers=auth(ta))
    assert res.status == 404
    await a.close()


# -- durability: a live server killed with SIGKILL --------------------------------------------
async def _live_ws(server: LiveServer, token: str) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(server.ws_url)
    await ws.send_json({"type": "auth", "token": token})
    while (await ws.receive_json(timeout=5))["type"] != "auth_ok":
        pass
    return http, ws


async def test_acked_message_survives_kill_9(server_factory: ServerFactory, backend: Backend) -> None:
    server = server_factory()  # on "cluster": a node on the module's PostgreSQL and redis-server
    assert ("JEGO_DB_URL" in server.env) == (backend.name != "sqlite")
    ta, tb = make_user(server, "alice"), make_user(server, "bob")
    live_add_contact(server, ta, "bob")
    http, ws = await _live_ws(server, ta)
    # a burst, then kill -9 right after the last ack: every acked message must be on disk
    ids = [cid() for _ in range(20)]
    for i, c in enumerate(ids):
        await ws.send_json({"type": "send_message", "client_id": c, "to": "bob", "text": f"durable {i}"})
    acked: list[int] = []
    while len(acked) < len(ids):
        msg = await ws.receive_json(timeout=10)
        if msg["type"] == "message_ack":
            acked.append(msg["message"]["seq"])
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    await ws.close()
    await http.close()
    server.restart()
    status, page = http_json("GET", f"{server.url}/api/conversations/alice/messages", token=tb)
    assert status == 200, page
    assert [m["text"] for m in page["messages"]] == [f"durable {i}" for i in range(20)]
    assert [m["seq"] for m in page["messages"]] == acked == list(range(1, 21))
    # and the offline recipient is handed them after the restart
    http, ws = await _live_ws(server, tb)
    await ws.send_json({"type": "sync"})
    seqs = []
    while (msg := await ws.receive_json(timeout=10))["type"] != "sync_done":
        if msg["type"] == "message":
            seqs.append(msg["message"]["seq"])
    assert seqs == list(range(1, 21))
    await ws.close()
    await http.close()
    _, ready = http_json("GET", f"{server.url}/readyz")
    assert ready["checks"].get("redis") == ("ok" if backend.redis else None), ready  # a node on the Redis
    if backend.name != "sqlite":
        assert not (server.data_dir / "jego.sqlite3").exists()  # the messages came from PostgreSQL
        return
    # the database really is in WAL mode
    conn = sqlite3.connect(server.data_dir / "jego.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()

