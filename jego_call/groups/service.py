"""Group chats over HTTP: `setup_groups(app)` (called by `create_app` after messaging).

Routes (docs/signalling.md, ## Groups): create, list, read, rename, add and remove members,
leave, make admins, history pages and the receipts of one message. Messages, receipts and sync
of groups go through the messaging WebSocket types (`group` instead of `to`/`with`), handled by
`Messaging` on the same store. Every membership change is one transaction with its system line;
then the members' sessions (and a removed member's) get the line as `message` and the group as
`{"type": "group", "event", "group"}`. The hub's group-call desk reads membership through
a `GroupDirectory` (`make_group_directory`: SQLite reads, or an in-memory cache on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from ..accounts import Accounts, normalise_username
from ..db import run_sync
from ..directory import LiveDirectory
from ..errors import ErrorCode, SignallingError
from ..messaging import protocol as mp
from ..messaging.service import Messaging
from ..messaging.store import Group, Message, MessageStore
from ..signalling.http import authenticated_user, json_body
from ..signalling.hub import Hub
from ..signalling.keys import ACCOUNTS, DIRECTORY, GROUP_DIRECTORY, GROUPS, HUB, MESSAGING
from .names import MAX_MEMBERS, normalise_group_name

log = logging.getLogger("jego.groups")

MAX_PAGE = 200
GROUPS_CHANNEL = "jego_groups"  # NOTIFY payload: a group id whose membership or name changed


class SqliteGroupDirectory:
    """What the hub's group-call desk asks about groups: a local SQLite read (never waits)."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store

    def group_members(self, group_id: str) -> list[str] | None:
        group = run_sync(self.store.group(group_id))
        return None if group is None else group.usernames

    def group_name(self, group_id: str) -> str:
        group = run_sync(self.store.group(group_id))
        return group.name if group is not None else group_id

    async def start(self) -> None:
        pass

    async def ensure(self, group_id: str) -> None:
        pass

    async def changed(self, group_id: str) -> None:
        pass


class CachedGroupDirectory:
    """The desk's groups on PostgreSQL, from memory, so the pure core never waits on the network.
    `ensure(group)` (the socket shell, before a group_call_start) loads a group and its members'
    names (`people`); `changed(group)` (Groups, after each of this node's membership changes)
    reloads it and tells the other nodes (NOTIFY jego_groups), whose copies reload too. After the
    listening connection was lost every held group is reloaded. At most `capacity` groups are
    kept (least recently used go first); a lookup the cache cannot answer is loaded for next time
    and answered as "no such group"."""

    def __init__(self, store: MessageStore, people: LiveDirectory, capacity: int = 10_000) -> None:
        self.store = store
        self.people = people
        self.capacity = capacity
        self.groups: OrderedDict[str, Group | None] = OrderedDict()
        self.misses = 0
        self._versions: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    def _get(self, group_id: str) -> Group | None:
        if group_id not in self.groups:
            self.misses += 1
            log.warning("group directory miss for %r: loading it", group_id)
            self._background(self._load(group_id))
            return None
        self.groups.move_to_end(group_id)
        return self.groups[group_id]

    def group_members(self, group_id: str) -> list[str] | None:
        group = self._get(group_id)
        return None if group is None else group.usernames

    def group_name(self, group_id: str) -> str:
        group = self._get(group_id)
        return group.name if group is not None else group_id

    async def start(self) -> None:
        await self.store.db.listen(GROUPS_CHANNEL, self._heard, self._reconnected)

    async def ensure(self, group_id: str) -> None:
        if group_id not in self.groups:
            await self._load(group_id)
        group = self.groups.get(group_id)
        if group is not None:
            await self.people.ensure(*group.usernames)

    async def changed(self, group_id: str) -> None:
        self._versions[group_id] += 1
        if group_id in self.groups:
            await self._load(group_id)
        await self.store.db.notify(GROUPS_CHANNEL, group_id)

    async def _load(self, group_id: str) -> None:
        while True:
            version = self._versions[group_id]
            group = await self.store.group(group_id)
            if self._versions[group_id] == version:  # no change came in meanwhile
                break
        self.groups[group_id] = group
        self.groups.move_to_end(group_id)
        while len(self.groups) > self.capacity:
            self.groups.popitem(last=False)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        async def quietly() -> None:
            try:
                await coro
            except Exception as exc:  # PostgreSQL away: the next change or reconnect reloads it
                log.warning("group directory reload failed: %s", exc)

        task = asyncio.get_running_loop().create_task(quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _heard(self, group_id: str) -> None:
        self._versions[group_id] += 1
        if group_id in self.groups:
            self._background(self._load(group_id))

    def _reconnected(self) -> None:
        for group_id in list(self.groups):
            self._versions[group_id] += 1
            self._background(self._load(group_id))


GroupDirectory = SqliteGroupDirectory | CachedGroupDirectory


def make_group_directory(store: MessageStore, people: LiveDirectory) -> GroupDirectory:
    """The desk's group directory for the engine `store` runs on."""
    if store.db.engine == "sqlite":
        return SqliteGroupDirectory(store)
    return CachedGroupDirectory(store, people)


class Groups:
    """Membership changes and their pushes. One per app, built at start-up."""

    def __init__(self, messaging: Messaging, accounts: Accounts, hub: Hub,
                 directory: GroupDirectory | None = None) -> None:
        self.messaging = messaging
        self.store = messaging.store
        self.accounts = accounts
        self.hub = hub
        self.directory = directory if directory is not None else SqliteGroupDirectory(self.store)

    # -- reading ---------------------------------------------------------------------------
    async def to_wire(self, group: Group, viewer: str | None = None) -> dict[str, Any]:
        """The group object: id, name, creator, members (oldest first) with their receipt watermarks."""
        names = await self.accounts.display_names(group.usernames)
        out: dict[str, Any] = {
            "id": group.id, "name": group.name, "created_by": group.created_by,
            "created_at": round(group.created_at, 3), "last_seq": group.last_seq,
            "members": [{**m.to_wire(), "display_name": names.get(m.username) or m.username,
                         "presence": self.hub.presence(m.username)} for m in group.members],
            "call": self.hub.group_call(group.id),
        }
        if viewer is not None:
            last = await self.store.get(group.conversation_id, group.last_seq) if group.last_seq else None
            out["unread"] = await self.store.group_unread(viewer, group.id)
            out["last_message"] = last.to_wire() if last is not None else None
            me = group.member(viewer)
            out["role"] = me.role if me else None
        return out

    async def require(self, user: str, group_id: str, *, admin: bool = False) -> Group:
        group = await self.messaging.require_member(user, group_id)
        if admin and not group.is_admin(user):
            raise SignallingError(ErrorCode.FORBIDDEN, "only the group's admins may do that")
        return group

    # -- changing --------------------------------------------------------------------------
    async def _checked_new(self, actor: str, names: object, have: int) -> list[str]:
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
            if not await self.accounts.exists(name):
                raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {name!r}")
            if not await self.accounts.is_contact(actor, name):
                raise SignallingError(ErrorCode.NOT_CONTACT, f"{name!r} is not in your contacts: add them first")
            if await self.accounts.is_blocked(name, actor):
                raise SignallingError(ErrorCode.UNAVAILABLE, f"{name!r} is not available")
            out.append(name)
        if have + len(out) > MAX_MEMBERS:
            raise SignallingError(ErrorCode.GROUP_FULL, f"a group has at most {MAX_MEMBERS} members")
        return out

    async def create(self, creator: str, name: object, members: object) -> Group:
        clean = normalise_group_name(name)
        new = await self._checked_new(creator, members if members is not None else [], 1)
        group = await self.store.create_group(creator, clean, new)
        await self.directory.changed(group.id)
        first = await self.store.get(group.conversation_id, 1)
        await self._announce(group, "created", [first] if first else [])
        return group

    async def add(self, actor: str, group_id: str, members: object) -> Group:
        group = await self.require(actor, group_id, admin=True)
        current = set(group.usernames)
        wanted = [n for n in await self._checked_new(actor, members, 0) if n not in current]
        await self._checked_new(actor, wanted, len(current))  # the limit with the members already there
        line = await self.store.add_members(group_id, actor, wanted)
        return await self._changed(group_id, "added", [line] if line else [])

    async def remove(self, actor: str, group_id: str, user: str) -> Group:
        """An admin removes `user`, or anyone removes themselves (leaving)."""
        group = await self.require(actor, group_id, admin=(user != actor))
        if group.member(user) is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"{user!r} is not a member of this group")
        lines = await self.store.remove_member(group_id, actor, user)
        await self.directory.changed(group_id)
        self.hub.group_member_left(group_id, user)
        return await self._changed(group_id, "left" if user == actor else "removed", lines, also=(user,))

    async def make_admin(self, actor: str, group_id: str, user: str) -> Group:
        group = await self.require(actor, group_id, admin=True)
        if group.member(user) is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"{user!r} is not a member of this group")
        line = await self.store.make_admin(group_id, actor, user)
        return await self._changed(group_id, "admin", [line] if line else [])

    async def rename(self, actor: str, group_id: str, name: object) -> Group:
        await self.require(actor, group_id, admin=True)
        line = await self.store.rename_group(group_id, actor, normalise_group_name(name))
        return await self._changed(group_id, "renamed", [line])

    async def _changed(self, group_id: str, event: str, lines: list[Message], also: tuple[str, ...] = ()) -> Group:
        if lines:
            await self.directory.changed(group_id)
        group = await self.store.group(group_id)
        assert group is not None
        if lines:
            await self._announce(group, event, lines, also)
        return group

    async def _announce(self, group: Group, event: str, lines: list[Message], also: tuple[str, ...] = ()) -> None:
        """The system lines as `message`, then the group itself, to every member (and `also`)."""
        for line in lines:
            await self.messaging.push_group(group.id, {"type": "message", "message": line.to_wire()}, also=also)
        wire = await self.to_wire(group)
        await self.messaging.push_group(group.id, {"type": "group", "event": event, "group": wire})
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
    user = await authenticated_user(request)
    body = await json_body(request)
    svc = _groups(request)
    group = await svc.create(user, body.get("name"), body.get("members", []))
    return web.json_response(await svc.to_wire(group, user), status=201)


async def list_groups(request: web.Request) -> web.Response:
    """GET /api/groups: the groups you are in, most recently active first."""
    user = await authenticated_user(request)
    svc = _groups(request)
    out = []
    for gid in await svc.store.groups_of(user):
        group = await svc.store.group(gid)
        if group is not None:
            out.append(await svc.to_wire(group, user))
    return web.json_response({"groups": out})


async def get_group(request: web.Request) -> web.Response:
    user = await authenticated_user(request)
    svc = _groups(request)
    return web.json_response(await svc.to_wire(await svc.require(user, _gid(request)), user))


async def patch_group(request: web.Request) -> web.Response:
    """PATCH /api/groups/{id} {"name"}: admins rename the group."""
    user = await authenticated_user(request)
    body = await json_body(request)
    svc = _groups(request)
    return web.json_response(await svc.to_wire(await svc.rename(user, _gid(request), body.get("name")), user))


async def add_members(request: web.Request) -> web.Response:
    """POST /api/groups/{id}/members {"members": [...]}: admins add members."""
    user = await authenticated_user(request)
    body = await json_body(request)
    svc = _groups(request)
    return web.json_response(await svc.to_wire(await svc.add(user, _gid(request), body.get("members")), user))


async def remove_member(request: web.Request) -> web.Response:
    """DELETE /api/groups/{id}/members/{username}: an admin removes a member (yourself: you leave)."""
    user = await authenticated_user(request)
    svc = _groups(request)
    who = request.match_info["username"].strip().lower()
    group = await svc.remove(user, _gid(request), who)
    if who == user:
        return web.Response(status=204)
    return web.json_response(await svc.to_wire(group, user))


async def leave_group(request: web.Request) -> web.Response:
    """POST /api/groups/{id}/leave: 204; the last admin leaving makes the oldest member admin."""
    user = await authenticated_user(request)
    await _groups(request).remove(user, _gid(request), user)
    return web.Response(status=204)


async def add_admin(request: web.Request) -> web.Response:
    """POST /api/groups/{id}/admins {"username"}: admins make a member an admin."""
    user = await authenticated_user(request)
    body = await json_body(request)
    who = body.get("username")
    if not isinstance(who, str):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "'username' must be a string")
    svc = _groups(request)
    group = await svc.make_admin(user, _gid(request), who.strip().lower())
    return web.json_response(await svc.to_wire(group, user))


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
    user = await authenticated_user(request)
    svc = _groups(request)
    gid = _gid(request)
    if await svc.store.membership(gid, user) is None:
        if await svc.store.group(gid) is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"no group {gid!r}")
        raise SignallingError(ErrorCode.FORBIDDEN, "you are not a member of this group")
    limit = min(_query_int(request, "limit") or svc.messaging.cfg.page_size, MAX_PAGE)
    messages, more = await svc.store.group_page(user, gid, _query_int(request, "before_seq"), limit)
    return web.json_response({"group": gid, "messages": [m.to_wire() for m in messages], "has_more": more})


async def message_receipts(request: web.Request) -> web.Response:
    """GET /api/groups/{id}/messages/{seq}/receipts: who has it and who has read it."""
    user = await authenticated_user(request)
    svc = _groups(request)
    gid = _gid(request)
    await svc.require(user, gid)
    try:
        seq = int(request.match_info["seq"])
    except ValueError:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "seq must be an integer") from None
    got = await svc.store.receipts(gid, seq)
    shown = await svc.accounts.display_names({u for v in got.values() for u in v})
    named = {k: [{"username": u, "display_name": shown.get(u) or u} for u in v] for k, v in got.items()}
    return web.json_response({"group": gid, "seq": seq, **named})


async def _groups_ctx(app: web.Application) -> AsyncIterator[None]:
    directory = make_group_directory(app[MESSAGING].store, app[DIRECTORY])
    await directory.start()
    app[GROUPS] = Groups(app[MESSAGING], app[ACCOUNTS], app[HUB], directory)
    app[GROUP_DIRECTORY] = directory
    app[HUB].set_groups(directory)
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
