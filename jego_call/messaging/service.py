"""Messaging wired into the signalling app: `setup_messaging(app)` (called by `create_app`).

It adds the HTTP routes (media upload and download, conversations, history pages) and a
cleanup_ctx that builds `Messaging` and routes the WebSocket types `send_message`, `receipt`
and `sync` to it through `hub.register_handler` (coroutines: the socket's reader awaits each,
so one connection's messages are handled in order). A message is acknowledged to its sender only
after its transaction is committed; when the database cannot be reached the sender gets the
error service_unavailable instead, and may retry with the same client_id. Protocol: docs/signalling.md, ## Messaging.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from ..accounts import Accounts
from ..config import MessagingConfig
from ..errors import ErrorCode, SignallingError
from ..signalling.http import authenticated_user
from ..signalling.hub import Hub, Session
from ..signalling.keys import ACCOUNTS, CONFIG, DB, HUB, MESSAGING
from . import protocol as p
from .media import FILE_MIME, MediaFiles, MediaRejected, Sniffed, TempUpload, analyse
from .store import Group, Media, Message, MessageStore

log = logging.getLogger("jego.messaging")

SYNC_LIMIT = 500            # messages per sync answer; `more: true` asks the client to sync again
WRITE_BATCH = 1 << 20       # bytes buffered before a write to the temp file (in a thread)
MAX_FILENAME = 255
MAX_PAGE = 200
MEDIA_URL_TTL_S = 600       # signed media URLs (for <img>/<audio> sources) live ten minutes


class Messaging:
    """Conversations for connected sessions: send, receipts, sync. One per app (app[MESSAGING])."""

    def __init__(self, store: MessageStore, files: MediaFiles, accounts: Accounts, hub: Hub,
                 cfg: MessagingConfig) -> None:
        self.store = store
        self.files = files
        self.accounts = accounts
        self.hub = hub
        self.cfg = cfg
        # "stored:<kind>", "delivered:live", "delivered:sync": read by jego_call/metrics.py
        self.counts: collections.Counter[str] = collections.Counter()

    def register(self) -> None:
        """Route the messaging WebSocket types to this object."""
        self.hub.register_handler(p.SendMessage, self.on_send)
        self.hub.register_handler(p.Receipt, self.on_receipt)
        self.hub.register_handler(p.Sync, self.on_sync)

    # -- sending --------------------------------------------------------------------------
    async def _check_peer(self, user: str, peer: str) -> None:
        if peer == user:
            raise SignallingError(ErrorCode.NOT_CONTACT, "you cannot send messages to yourself")
        known, contact, blocked = await self.accounts.reach(user, peer)  # one round trip
        if not known:
            raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {peer!r}")
        if not contact:
            raise SignallingError(ErrorCode.NOT_CONTACT, f"{peer!r} is not in your contacts: add them first")
        if blocked:  # the sender is told no more than that
            raise SignallingError(ErrorCode.UNAVAILABLE, "not available")

    async def _check_content(self, sender: str, msg: p.SendMessage) -> str:
        """The message's kind, after the text limit and media ownership checks."""
        kind = "text"
        if msg.text is not None and len(msg.text) > self.cfg.max_text_chars:
            raise SignallingError(ErrorCode.TOO_LARGE,
                                  f"text has {len(msg.text)} characters: at most {self.cfg.max_text_chars}")
        if msg.media_id is not None:
            media = await self.store.media(msg.media_id)
            if media is None:
                raise SignallingError(ErrorCode.NOT_FOUND, "no such media: upload it first (POST /api/media)")
            if media.owner != sender:
                raise SignallingError(ErrorCode.FORBIDDEN, "you can only send media you uploaded")
            kind = media.kind
        return kind

    async def require_member(self, user: str, group_id: str) -> Group:
        """The group, if `user` is a member now; not_found (no such group) or forbidden otherwise."""
        group = await self.store.group(group_id)
        if group is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"no group {group_id!r}")
        if group.member(user) is None:
            raise SignallingError(ErrorCode.FORBIDDEN, "you are not a member of this group")
        return group

    async def send(self, sender: str, msg: p.SendMessage) -> tuple[Message, bool]:
        """Validate and durably store one message; returns (message, duplicate). StorageUnavailable
        (service_unavailable) when the database cannot be reached: nothing was stored."""
        old = await self.store.by_client_id(sender, msg.client_id)
        if old is not None:  # a retry: the same ack again, whatever else changed
            return old, True
        if msg.group is not None:
            await self.require_member(sender, msg.group)
            kind = await self._check_content(sender, msg)
            return await self.store.send_group(sender, msg.group, msg.client_id, kind, msg.text, msg.media_id)
        await self._check_peer(sender, msg.to)
        kind = await self._check_content(sender, msg)
        return await self.store.send(sender, msg.to, msg.client_id, kind, msg.text, msg.media_id)

    async def on_send(self, session: Session, msg: p.SendMessage) -> None:
        stored, duplicate = await self.send(session.username, msg)
        wire = stored.to_wire()
        session.send({"type": "message_ack", "client_id": stored.client_id, "duplicate": duplicate,
                      "message": wire})
        if duplicate:
            return
        self.counts[f"stored:{stored.kind}"] += 1
        push = {"type": "message", "message": wire}
        if stored.group is not None:
            reached = await self.push_group(stored.group, push, skip=session)
            self.counts["delivered:live"] += len(reached - {stored.sender})
            return
        assert stored.recipient is not None
        if self.hub.send_to_user(stored.recipient, push):
            self.counts["delivered:live"] += 1
        self.hub.send_to_user(stored.sender, push, skip=session)  # the sender's other tabs and devices

    async def push_group(self, group_id: str, msg: dict[str, Any], skip: Session | None = None,
                         also: tuple[str, ...] = ()) -> set[str]:
        """Send `msg` to every session of the group's current members (and of `also`), but `skip`;
        returns the users it reached."""
        group = await self.store.group(group_id)
        users = dict.fromkeys([*(group.usernames if group else []), *also])
        reached: set[str] = set()
        for user in users:  # on every node of a cluster
            if self.hub.send_to_user(user, msg, skip=skip):
                reached.add(user)
        return reached

    # -- receipts -------------------------------------------------------------------------
    async def on_receipt(self, session: Session, msg: p.Receipt) -> None:
        user, peer = session.username, msg.with_
        if msg.group is not None:
            if await self.store.membership(msg.group, user) is None:
                raise SignallingError(ErrorCode.FORBIDDEN, "you are not a member of this group")
            mark = await self.store.mark_group(user, msg.group, msg.up_to_seq, msg.state)
            if mark is not None:  # every member's sessions keep the per-member watermarks
                await self.push_group(msg.group, {"type": "receipt", "group": msg.group, "by": user,
                                                  "state": msg.state, "up_to_seq": mark}, skip=session)
            return
        if not await self.accounts.exists(peer):
            raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {peer!r}")
        mark = await self.store.mark(user, peer, msg.up_to_seq, msg.state)
        if mark is None:
            return
        self.hub.send_to_user(peer, {"type": "receipt", "with": user, "by": user, "state": msg.state,
                                     "up_to_seq": mark})
        mine = {"type": "receipt", "with": peer, "by": user, "state": msg.state, "up_to_seq": msg.up_to_seq}
        self.hub.send_to_user(user, mine, skip=session)

    # -- sync -----------------------------------------------------------------------------
    async def on_sync(self, session: Session, msg: p.Sync) -> None:
        user = session.username
        sent = 0
        seen: set[int] = set()
        for peer, after_seq in msg.after:
            conv = await self.store.conversation_id(user, peer)
            if conv is None or conv in seen:
                continue
            seen.add(conv)
            for m in await self.store.after(user, peer, after_seq, SYNC_LIMIT - sent):
                session.send({"type": "message", "message": m.to_wire()})
                sent += 1
        seen_groups: set[str] = set()
        for gid, after_seq in msg.groups:
            if gid in seen_groups or await self.store.membership(gid, user) is None:
                continue
            seen_groups.add(gid)
            for m in await self.store.group_after(user, gid, after_seq, SYNC_LIMIT - sent):
                session.send({"type": "message", "message": m.to_wire()})
                sent += 1
        if sent < SYNC_LIMIT:
            for m in await self.store.undelivered(user, SYNC_LIMIT - sent, seen):
                session.send({"type": "message", "message": m.to_wire()})
                sent += 1
                self.counts["delivered:sync"] += 1
        if sent < SYNC_LIMIT:
            for m in await self.store.group_undelivered(user, SYNC_LIMIT - sent, seen_groups):
                session.send({"type": "message", "message": m.to_wire()})
                sent += 1
                self.counts["delivered:sync"] += 1
        for peer in await self.store.peers(user):
            delivered, read = await self.store.watermarks(user, peer)
            for state, mark in (("delivered", delivered), ("read", read)):
                if mark:
                    session.send({"type": "receipt", "with": peer, "by": peer, "state": state, "up_to_seq": mark})
        for gid in await self.store.groups_of(user):
            group = await self.store.group(gid)
            for member in group.members if group else ():
                if member.username == user:
                    continue
                for state, mark in (("delivered", member.delivered_seq), ("read", member.read_seq)):
                    if mark:
                        session.send({"type": "receipt", "group": gid, "by": member.username, "state": state,
                                      "up_to_seq": mark})
        session.send({"type": "sync_done", "count": sent, "more": sent >= SYNC_LIMIT})

    # -- media ----------------------------------------------------------------------------
    def decide(self, declared: str | None, size: int, sniffed: Sniffed) -> Sniffed:
        """Reconcile the declared kind (or none) with what the bytes are; SignallingError if they lie."""
        c = self.cfg
        if declared == "photo":
            if sniffed.kind != "photo":
                why = f" ({sniffed.note})" if sniffed.note else ""
                raise SignallingError(ErrorCode.UNSUPPORTED_MEDIA,
                                      f"a photo must be a PNG, JPEG, GIF or WebP image; this content is not{why}")
            if size > c.max_photo_bytes:
                raise SignallingError(ErrorCode.TOO_LARGE, f"a photo may have at most {c.max_photo_bytes} bytes")
            return sniffed
        if declared == "voice":
            if sniffed.kind != "voice":
                why = f" ({sniffed.note})" if sniffed.note else ""
                raise SignallingError(ErrorCode.UNSUPPORTED_MEDIA,
                                      f"a voice message must be WAV, OGG, WebM or MP3 audio; this content is not{why}")
            assert sniffed.duration_s is not None
            if sniffed.duration_s > c.max_voice_s:
                raise SignallingError(ErrorCode.TOO_LARGE, f"voice message is {sniffed.duration_s:.1f} s long: "
                                                           f"at most {c.max_voice_s:g} s")
            return sniffed
        if declared == "file":
            return Sniffed("file", FILE_MIME)
        # not declared: what the bytes are, unless over the photo/voice limits (then a plain file)
        if sniffed.kind == "photo" and size > c.max_photo_bytes:
            return Sniffed("file", FILE_MIME)
        if sniffed.kind == "voice" and (sniffed.duration_s or 0) > c.max_voice_s:
            return Sniffed("file", FILE_MIME)
        return sniffed

    async def upload(self, request: web.Request, owner: str) -> Media:
        """Stream the request body (raw or the multipart part `file`) to a temp file, check it, store it."""
        declared = request.query.get("kind")
        if declared not in (None, "photo", "voice", "file"):
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "kind must be photo, voice or file")
        limit = self.cfg.max_photo_bytes if declared == "photo" else self.cfg.max_file_bytes
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            raise SignallingError(ErrorCode.TOO_LARGE, f"upload is larger than {limit} bytes")
        filename = request.query.get("filename")
        read: Callable[[], Awaitable[bytes]]
        multipart = request.content_type.startswith("multipart/")
        if multipart:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    raise SignallingError(ErrorCode.INVALID_MESSAGE, "multipart body has no part named 'file'")
                if isinstance(part, aiohttp.BodyPartReader) and (part.name == "file" or part.filename):
                    break
            filename = filename or part.filename
            body_part = part

            async def read() -> bytes:
                return bytes(await body_part.read_chunk(256 * 1024))
        else:
            async def read() -> bytes:
                return await request.content.readany()
        up = self.files.new_upload()
        try:
            await self._receive(read, up, limit)
            if up.size == 0:
                raise SignallingError(ErrorCode.INVALID_MESSAGE, "the upload is empty")
            if not multipart and request.content_length is not None and up.size != request.content_length:
                raise SignallingError(ErrorCode.INVALID_MESSAGE, "the upload was cut off")
            sha = await asyncio.to_thread(up.finish)
            sniffed = Sniffed("file", FILE_MIME) if declared == "file" else await asyncio.to_thread(analyse, up.path)
            sniffed = self.decide(declared, up.size, sniffed)
            await asyncio.to_thread(self.files.commit, up.path, sha)
            thumb = await asyncio.to_thread(self.files.store_bytes, sniffed.thumbnail) if sniffed.thumbnail else None
        except MediaRejected as exc:
            raise SignallingError(ErrorCode.UNSUPPORTED_MEDIA, str(exc)) from None
        finally:
            up.discard()  # no-op once committed (the temp path has been renamed)
        media = Media(secrets.token_hex(16), owner, sniffed.kind, sniffed.mime, up.size, sha,
                      _clean_filename(filename), sniffed.width, sniffed.height, sniffed.duration_s, thumb,
                      time.time())
        await self.store.add_media(media)
        log.info("media %s from %s: %s %s, %d bytes", media.id, owner, media.kind, media.mime, media.size)
        return media

    @staticmethod
    async def _receive(read: Callable[[], Awaitable[bytes]], up: TempUpload, limit: int) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = await read()
                if not chunk:
                    break
                if up.size + len(buf) + len(chunk) > limit:
                    raise SignallingError(ErrorCode.TOO_LARGE, f"upload is larger than {limit} bytes")
                buf += chunk
                if len(buf) >= WRITE_BATCH:
                    await asyncio.to_thread(up.write, bytes(buf))
                    buf.clear()
        except (aiohttp.ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
            raise SignallingError(ErrorCode.INVALID_MESSAGE, f"the upload was cut off: {exc}") from None
        if buf:
            await asyncio.to_thread(up.write, bytes(buf))


def _clean_filename(name: str | None) -> str | None:
    """The last path component, without control characters or quotes, at most 255 characters."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '"')[:MAX_FILENAME].strip()
    return name or None




def _messaging(app: web.Application) -> Messaging:
    return app[MESSAGING]


# -- signed media URLs --------------------------------------------------------------------------
# An <img> or <audio> cannot send an Authorization header, and a token in a URL leaks into logs,
# history and Referer. So GET /api/media/{id}/link (with the header) returns short-lived URLs
# signed for one user, one media item and one variant: ?u=USER&exp=UNIX&sig=HMAC-SHA256.
def _url_key(accounts: Accounts) -> bytes:
    return hmac.new(accounts.secret, b"jego media url v1", hashlib.sha256).digest()


def _url_sig(accounts: Accounts, user: str, media_id: str, variant: str, exp: int) -> str:
    msg = f"{user}\n{media_id}\n{variant}\n{exp}".encode()
    return hmac.new(_url_key(accounts), msg, hashlib.sha256).hexdigest()


def signed_media_url(accounts: Accounts, user: str, media_id: str, variant: str, exp: int) -> str:
    """The path of `media_id` (variant "full" or "thumbnail") that `user` may fetch until `exp`."""
    sig = _url_sig(accounts, user, media_id, variant, exp)
    tail = "/thumbnail" if variant == "thumbnail" else ""
    return f"/api/media/{media_id}{tail}?u={quote(user)}&exp={exp}&sig={sig}"


async def media_user(request: web.Request, media_id: str, variant: str, now: float | None = None) -> str:
    """Who fetches this media: the bearer token's user, or the user a valid signed URL names."""
    if "sig" not in request.query:
        return await authenticated_user(request)
    q = request.query
    user, sig = q.get("u", ""), q.get("sig", "")
    try:
        exp = int(q.get("exp", ""))
    except ValueError:
        raise SignallingError(ErrorCode.NOT_AUTHENTICATED, "malformed media link") from None
    accounts = request.app[ACCOUNTS]
    if not hmac.compare_digest(sig, _url_sig(accounts, user, media_id, variant, exp)):
        raise SignallingError(ErrorCode.NOT_AUTHENTICATED, "bad media link signature")
    if exp < (time.time() if now is None else now):
        raise SignallingError(ErrorCode.NOT_AUTHENTICATED, "media link expired: ask for a new one")
    if not await accounts.exists(user):
        raise SignallingError(ErrorCode.NOT_AUTHENTICATED, "account no longer exists")
    return user


# -- HTTP handlers ------------------------------------------------------------------------------
async def upload_media(request: web.Request) -> web.Response:
    """POST /api/media[?kind=photo|voice|file&filename=NAME]: 201 with the media object."""
    user = await authenticated_user(request)
    media = await _messaging(request.app).upload(request, user)
    return web.json_response(media.to_wire(), status=201)


async def _media_for(request: web.Request, variant: str = "full") -> tuple[Messaging, Media]:
    media_id = request.match_info["media_id"]
    user = await media_user(request, media_id, variant)
    if not p.MEDIA_ID_RE.match(media_id):
        raise SignallingError(ErrorCode.NOT_FOUND, "no such media")
    svc = _messaging(request.app)
    return svc, await svc.store.require_media(user, media_id)


async def media_link(request: web.Request) -> web.Response:
    """GET /api/media/{id}/link: signed URLs of the media (and its thumbnail) for `<img>`/`<audio>`."""
    user = await authenticated_user(request)
    svc, media = await _media_for(request)
    exp = int(time.time()) + MEDIA_URL_TTL_S
    out: dict[str, object] = {"url": signed_media_url(svc.accounts, user, media.id, "full", exp),
                              "thumbnail_url": None, "expires_at": exp}
    if media.thumb_sha256 is not None:
        out["thumbnail_url"] = signed_media_url(svc.accounts, user, media.id, "thumbnail", exp)
    return web.json_response(out)


def _file_response(svc: Messaging, sha: str, mime: str, disposition: str) -> web.FileResponse:
    path = svc.files.path(sha)
    if not path.is_file():
        raise SignallingError(ErrorCode.NOT_FOUND, "media file is missing")
    return web.FileResponse(path, headers={
        "Content-Type": mime, "Content-Disposition": disposition, "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox", "Cache-Control": "private, max-age=86400",
    })


async def download_media(request: web.Request) -> web.FileResponse:
    """GET /api/media/{id}: the bytes (Range supported); only for members of its conversation."""
    svc, media = await _media_for(request)
    mode = "attachment" if media.kind == "file" else "inline"
    disposition = f"{mode}; filename*=UTF-8''{quote(media.filename)}" if media.filename else mode
    return _file_response(svc, media.sha256, media.mime, disposition)


async def media_thumbnail(request: web.Request) -> web.FileResponse:
    """GET /api/media/{id}/thumbnail: a JPEG of at most 320 px (photos only)."""
    svc, media = await _media_for(request, "thumbnail")
    if media.thumb_sha256 is None:
        raise SignallingError(ErrorCode.NOT_FOUND, "this media has no thumbnail")
    return _file_response(svc, media.thumb_sha256, "image/jpeg", "inline")


async def list_conversations(request: web.Request) -> web.Response:
    """GET /api/conversations: every conversation, newest first, with unread counts."""
    user = await authenticated_user(request)
    svc = _messaging(request.app)
    conversations = await svc.store.conversations(user)
    for c in conversations:
        c["display_name"] = await svc.accounts.display_name(c["with"])
    return web.json_response({"conversations": conversations})


def _query_int(request: web.Request, name: str, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"{name} must be an integer") from None
    if value < minimum:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"{name} must be at least {minimum}")
    return value


async def list_messages(request: web.Request) -> web.Response:
    """GET /api/conversations/{username}/messages?before_seq=&limit=: one page, oldest first."""
    user = await authenticated_user(request)
    svc = _messaging(request.app)
    peer = request.match_info["username"].strip().lower()
    if not await svc.accounts.exists(peer):
        raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {peer!r}")
    before = _query_int(request, "before_seq", 1)
    limit = _query_int(request, "limit", 1) or svc.cfg.page_size
    limit = min(limit, max(MAX_PAGE, svc.cfg.page_size))
    messages, more = await svc.store.page(user, peer, before, limit)
    delivered, read = await svc.store.watermarks(user, peer)
    return web.json_response({"with": peer, "messages": [m.to_wire() for m in messages], "has_more": more,
                              "delivered_seq": delivered, "read_seq": read})


async def _messaging_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    files = MediaFiles(cfg.media_dir)
    removed = await asyncio.to_thread(files.clean_temp)
    if removed:
        log.warning("removed %d half-written uploads from %s", removed, files.tmp)
    svc = Messaging(MessageStore(app[DB]), files, app[ACCOUNTS], app[HUB], cfg.messaging)
    svc.register()
    app[MESSAGING] = svc
    yield


def setup_messaging(app: web.Application) -> None:
    """Add messaging to a `create_app` app: routes now, the service at start-up (after the hub)."""
    app.cleanup_ctx.append(_messaging_ctx)
    app.router.add_post("/api/media", upload_media)
    app.router.add_get("/api/media/{media_id}", download_media)
    app.router.add_get("/api/media/{media_id}/thumbnail", media_thumbnail)
    app.router.add_get("/api/media/{media_id}/link", media_link)
    app.router.add_get("/api/conversations", list_conversations)
    app.router.add_get("/api/conversations/{username}/messages", list_messages)


__all__ = ["MESSAGING", "Messaging", "setup_messaging"]

