"""Group chats over HTTP: `setup_groups(app)` (called by `create_app` after messaging).

Routes (docs/signalling.md, ## Groups): create, list, read, rename, add and remove members,
leave, make admins, history pages and the receipts of one message. Messages, receipts and sync
of groups go through the messaging WebSocket types (`group` instead of `to`/`with`), handled by
`Messaging` on the same store. Every membership change is one transaction with its system line;
then the members' sessions (and a removed member's) get the line as `message` and the group as
`{"type": "group", "event", "group"}`. The hub's group-call desk reads membership through
`GroupDirectory`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..accounts import Accounts, normalise_username
from ..errors import ErrorCode, SignallingError
from ..messaging import protocol as mp
from ..messaging.service import Messaging
from ..messaging.store import Group, Message, MessageStore
from ..signalling.http import authenticated_user, json_body
from ..signalling.hub import Hub
from ..signalling.keys import ACCOUNTS, GROUPS, HUB, MESSAGING
from .names import MAX_MEMBERS, normalise_group_name

MAX_PAGE = 200


class GroupDirectory:
    """What the hub's group-call desk asks about groups (a local SQLite read)."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store

    def group_members(self, group_id: str) -> list[str] | None:
        group = self.store.group(group_id)
        return None if group is None else group.usernames

    def group_name(self, group_id: str) -> str:
        group = self.store.group(group_id)
        return group.name if group is not None else group_id


class Groups:
    """Membership changes and their pushes. One per app, built at start-up."""

    def __init__(self, messaging: Messaging, accounts: Accounts, hub: Hub) -> None:
        self.messaging = messaging
        self.store = messaging.store
        self.accounts = accounts
        self.hub = hub

    # -- reading ---------------------------------------------------------------------------
    def to_wire(self, group: Group, viewer: str | None = None) -> dict[str, Any]:
        """The group object: id, name, creator, members (oldest first) with their receipt watermarks."""
        out: dict[str, Any] = {
            "id": group.id, "name": group.name, "created_by": group.created_by,
            "created_at": round(group.created_at, 3), "last_seq": group.last_seq,
            "members": [{**m.to_wire(), "display_name": self.accounts.display_name(m.username),
                         "presence": self.hub.presence(m.username)} for m in group.members],
            "call": self.hub.group_call(group.id),
        }
        if viewer is not None:
            last = self.store.get(group.conversation_id, group.last_seq) if group.last_seq else None
            out["unread"] = self.store.group_unread(viewer, group.id)
            out["last_message"] = last.to_wire() if last is not None else None
            me = group.member(viewer)
            out["role"] = me.role if me else None
        return out

    def require(self, user: str, group_id: str, *, admin: bool = False) -> Group:
        group = self.messaging.require_member(user, group_id)
        if admin and not group.is_admin(user):
            raise SignallingError(ErrorCode.FORBIDDEN, "only the group's admins may do that")
        return group

    # -- changing --------------------------------------------------------------------------
    def _checked_new(self, actor: str, names: object, have: int) -> list[str]:
        """Usernames to add: existing users in `actor`'s contacts who have not blocked them, within the limit."""
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "'members' must be a list of usernames")
        out: list[str] = []
        for raw in names:
            try:
                name = normalise_username(raw)
            except SignallingError:
                raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {raw!r}") from None
            if name == actor or name in out:
                continue
            if not self.accounts.exists(name):
                raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {name!r}")
            if not self.accounts.is_contact(actor, name):
                raise SignallingError(ErrorCode.NOT_CONTACT, f"{name!r} is not in your contacts: add them first")
            if self.accounts.is_blocked(name, actor):
                raise SignallingError(ErrorCode.UNAVAILABLE, f"{name!r} is not available")
            out.append(name)
        if have + len(out) > MAX_MEMBERS:
            raise SignallingError(ErrorCode.GROUP_FULL, f"a group has at most {MAX_MEMBERS} members")
        return out

    def create(self, creator: str, name: object, members: object) -> Group:
        clean = normalise_group_name(name)
        new = self._checked_new(creator, members if members is not None else [], 1)
        group = self.store.create_group(creator, clean, new)
        first = self.store.get(group.conversation_id, 1)
        self._announce(group, "created", [first] if first else [])
        return group

    def add(self, actor: str, group_id: str, members: object) -> Group:
        group = self.require(actor, group_id, admin=True)
        current = set(group.usernames)
        wanted = [n for n in self._checked_new(actor, members, 0) if n not in current]
        self._checked_new(actor, wanted, len(current))  # the limit with the members already there
        line = self.store.add_members(group_id, actor, wanted)
        return self._changed(group_id, "added", [line] if line else [])

    def remove(self, actor: str, group_id: str, user: str) -> Group:
        """An admin removes `user`, or anyone removes themselves (leaving)."""
        group = self.require(actor, group_id, admin=(user != actor))
        if group.member(user) is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"{user!r} is not a member of this group")
        lines = self.store.remove_member(group_id, actor, user)
        self.hub.group_member_left(group_id, user)
        return self._changed(group_id, "left" if user == actor else "removed", lines, also=(user,))

    def make_admin(self, actor: str, group_id: str, user: str) -> Group:
        group = self.require(actor, group_id, admin=True)
        if group.member(user) is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"{user!r} is not a member of this group")
        line = self.store.make_admin(group_id, actor, user)
        return self._changed(group_id, "admin", [line] if line else [])

    def rename(self, actor: str, group_id: str, name: object) -> Group:
        self.require(actor, group_id, admin=True)
        line = self.store.rename_group(group_id, actor, normalise_group_name(name))
        return self._changed(group_id, "renamed", [line])

    def _changed(self, group_id: str, event: str, lines: list[Message], also: tuple[str, ...] = ()) -> Group:
        group = self.store.group(group_id)
        assert group is not None
        if lines:
            self._announce(group, event, lines, also)
        return group

    def _announce(self, group: Group, event: str, lines: list[Message], also: tuple[str, ...] = ()) -> None:
        """The system lines as `message`, then the group itself, to every member (and `also`)."""
        for line in lines:
            self.messaging.push_group(group.id, {"type": "message", "message": line.to_wire()}, also=also)
        wire = self.to_wire(group)
        self.messaging.push_group(group.id, {"type": "group", "event": event, "group": wire})
        for user in also:
            if group.member(user) is None:
                self.hub.send_to_user(user, {"type": "group", "event": event, "member": False,
                                             "group": {"id": group.id, "name": group.name}})


# -- HTTP handlers --------------------------------------------------------------------------
def _groups(request: web.Request) -> Groups:
    return request.app[GROUPS]


def _gid(request: web.Request) -> str:
    gid = request.match_info["group_id"]
    if not mp.GROUP_ID_RE.match(gid):
        raise SignallingError(ErrorCode.NOT_FOUND, f"no group {gid[:40]!r}")
    return gid


async def create_group(request: web.Request) -> web.Response:
    """POST /api/groups {"name", "members": [...]}: 201 the group."""
    user = authenticated_user(request)
    body = await json_body(request)
    svc = _groups(request)
    group = svc.create(user, body.get("name"), body.get("members", []))
    return web.json_response(svc.to_wire(group, user), status=201)


async def list_groups(request: web.Request) -> web.Response:
    """GET /api/groups: the groups you are in, most recently active first."""
    user = authenticated_user(request)
    svc = _groups(request)
    out = []
    for gid in svc.store.groups_of(user):
        group = svc.store.group(gid)
        if group is not None:
            out.append(svc.to_wire(group, user))
    return web.json_response({"groups": out})


async def get_group(request: web.Request) -> web.Response:
    user = authenticated_user(request)
    svc = _groups(request)
    return web.json_response(svc.to_wire(svc.require(user, _gid(request)), user))


async def patch_group(request: web.Request) -> web.Response:
    """PATCH /api/groups/{id} {"name"}: admins rename the group."""
    user = authenticated_user(request)
    body = await json_body(request)
    svc = _groups(request)
    return web.json_response(svc.to_wire(svc.rename(user, _gid(request), body.get("name")), user))


async def add_members(request: web.Request) -> web.Response:
    """POST /api/groups/{id}/members {"members": [...]}: admins add members."""
    user = authenticated_user(request)
    body = await json_body(request)
    svc = _groups(request)
    return web.json_response(svc.to_wire(svc.add(user, _gid(request), body.get("members")), user))


async def remove_member(request: web.Request) -> web.Response:
    """DELETE /api/groups/{id}/members/{username}: an admin removes a member (yourself: you leave)."""
    user = authenticated_user(request)
    svc = _groups(request)
    who = request.match_info["username"].strip().lower()
    group = svc.remove(user, _gid(request), who)
    if who == user:
        return web.Response(status=204)
    return web.json_response(svc.to_wire(group, user))


async def leave_group(request: web.Request) -> web.Response:
    """POST /api/groups/{id}/leave: 204; the last admin leaving makes the oldest member admin."""
    user = authenticated_user(request)
    _groups(request).remove(user, _gid(request), user)
    return web.Response(status=204)


async def add_admin(request: web.Request) -> web.Response:
    """POST /api/groups/{id}/admins {"username"}: admins make a member an admin."""
    user = authenticated_user(request)
    body = await json_body(request)
    who = body.get("username")
    if not isinstance(who, str):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "'username' must be a string")
    svc = _groups(request)
    return web.json_response(svc.to_wire(svc.make_admin(user, _gid(request), who.strip().lower()), user))


def _query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"{name} must be an integer") from None
    if value < 1:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"{name} must be at least 1")
    return value


async def group_messages(request: web.Request) -> web.Response:
    """GET /api/groups/{id}/messages?before_seq=&limit=: a page you may see (former members: up to
    their removal)."""
    user = authenticated_user(request)
    svc = _groups(request)
    gid = _gid(request)
    if svc.store.membership(gid, user) is None:
        if svc.store.group(gid) is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"no group {gid!r}")
        raise SignallingError(ErrorCode.FORBIDDEN, "you are not a member of this group")
    limit = min(_query_int(request, "limit") or svc.messaging.cfg.page_size, MAX_PAGE)
    messages, more = svc.store.group_page(user, gid, _query_int(request, "before_seq"), limit)
    return web.json_response({"group": gid, "messages": [m.to_wire() for m in messages], "has_more": more})


async def message_receipts(request: web.Request) -> web.Response:
    """GET /api/groups/{id}/messages/{seq}/receipts: who has it and who has read it."""
    user = authenticated_user(request)
    svc = _groups(request)
    gid = _gid(request)
    svc.require(user, gid)
    try:
        seq = int(request.match_info["seq"])
    except ValueError:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "seq must be an integer") from None
    got = svc.store.receipts(gid, seq)
    named = {k: [{"username": u, "display_name": svc.accounts.display_name(u)} for u in v] for k, v in got.items()}
    return web.json_response({"group": gid, "seq": seq, **named})


async def _groups_ctx(app: web.Application) -> AsyncIterator[None]:
    app[GROUPS] = Groups(app[MESSAGING], app[ACCOUNTS], app[HUB])
    app[HUB].set_groups(GroupDirectory(app[MESSAGING].store))
    yield


def setup_groups(app: web.Application) -> None:
    """Add groups to a `create_app` app (after `setup_messaging`)."""
    app.cleanup_ctx.append(_groups_ctx)
    r = app.router
    r.add_post("/api/groups", create_group)
    r.add_get("/api/groups", list_groups)
    r.add_get("/api/groups/{group_id}", get_group)
    r.add_patch("/api/groups/{group_id}", patch_group)
    r.add_post("/api/groups/{group_id}/members", add_members)
    r.add_delete("/api/groups/{group_id}/members/{username}", remove_member)
    r.add_post("/api/groups/{group_id}/leave", leave_group)
    r.add_post("/api/groups/{group_id}/admins", add_admin)
    r.add_get("/api/groups/{group_id}/messages", group_messages)
    r.add_get("/api/groups/{group_id}/messages/{seq}/receipts", message_receipts)
