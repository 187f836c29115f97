"""[pure] The group-call WebSocket types (docs/signalling.md, ## Group calls), parsed into frozen
dataclasses and registered with `@message`; importing this module registers them. The hub's
group-call desk (calls.py) acts on them.

From users: group_call_start, group_call_join, group_call_decline, group_call_leave,
group_call_mute, group_call_ring, group_call_add_phone, group_call_drop_phone, group_call_ice,
and the video mesh's mesh_offer, mesh_answer, mesh_ice. From the gateway that hosts the
conference: conference_answer and conference_leg_failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ErrorCode, SignallingError
from ..messaging.protocol import group_id
from ..signalling.messages import _ice, _sdp, call_id, field_str, message

LEG_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,80}$")
USER_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _media(d: dict[str, Any]) -> tuple[str, ...]:
    media = d.get("media", ["audio"])
    if media not in (["audio"], ["audio", "video"]):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'media' must be [\"audio\"] or [\"audio\", \"video\"]")
    return tuple(media)


def _bool(d: dict[str, Any], name: str, default: bool | None = None) -> bool:
    v = d.get(name, default)
    if not isinstance(v, bool):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be true or false")
    return v


def _user(d: dict[str, Any], name: str) -> str:
    return str(field_str(d, name, max_len=64, pattern=USER_RE)).lower()


def _leg(d: dict[str, Any]) -> str:
    return str(field_str(d, "leg", max_len=80, pattern=LEG_RE))


@dataclass(frozen=True, slots=True)
class GroupCallStart:
    call_id: str
    group: str
    media: tuple[str, ...]
    sdp: str                 # the starter's offer for their audio leg to the conference


@dataclass(frozen=True, slots=True)
class GroupCallJoin:
    call_id: str
    sdp: str                 # offer for this session's audio leg to the conference
    video: bool              # wants to be in the video mesh


@dataclass(frozen=True, slots=True)
class GroupCallDecline:
    call_id: str


@dataclass(frozen=True, slots=True)
class GroupCallLeave:
    call_id: str


@dataclass(frozen=True, slots=True)
class GroupCallMute:
    call_id: str
    muted: bool
    leg: str | None = None   # a phone leg to mute; None: yourself


@dataclass(frozen=True, slots=True)
class GroupCallRing:
    call_id: str
    username: str


@dataclass(frozen=True, slots=True)
class GroupCallAddPhone:
    call_id: str
    number: str


@dataclass(frozen=True, slots=True)
class GroupCallDropPhone:
    call_id: str
    leg: str


@dataclass(frozen=True, slots=True)
class GroupCallIce:
    call_id: str
    candidate: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class MeshOffer:
    call_id: str
    to: str
    sdp: str


@dataclass(frozen=True, slots=True)
class MeshAnswer:
    call_id: str
    to: str
    sdp: str


@dataclass(frozen=True, slots=True)
class MeshIce:
    call_id: str
    to: str
    candidate: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ConferenceAnswer:
    call_id: str
    leg: str
    sdp: str


@dataclass(frozen=True, slots=True)
class ConferenceLegFailed:
    call_id: str
    leg: str
    detail: str


@message("group_call_start")
def _start(d: dict[str, Any]) -> GroupCallStart:
    return GroupCallStart(call_id(d), group_id(d), _media(d), _sdp(d))


@message("group_call_join")
def _join(d: dict[str, Any]) -> GroupCallJoin:
    return GroupCallJoin(call_id(d), _sdp(d), _bool(d, "video", False))


@message("group_call_decline")
def _decline(d: dict[str, Any]) -> GroupCallDecline:
    return GroupCallDecline(call_id(d))


@message("group_call_leave")
def _leave(d: dict[str, Any]) -> GroupCallLeave:
    return GroupCallLeave(call_id(d))


@message("group_call_mute")
def _mute(d: dict[str, Any]) -> GroupCallMute:
    return GroupCallMute(call_id(d), _bool(d, "muted"), _leg(d) if d.get("leg") is not None else None)


@message("group_call_ring")
def _ring(d: dict[str, Any]) -> GroupCallRing:
    return GroupCallRing(call_id(d), _user(d, "username"))


@message("group_call_add_phone")
def _add_phone(d: dict[str, Any]) -> GroupCallAddPhone:
    return GroupCallAddPhone(call_id(d), str(field_str(d, "number", max_len=64)).strip())


@message("group_call_drop_phone")
def _drop_phone(d: dict[str, Any]) -> GroupCallDropPhone:
    return GroupCallDropPhone(call_id(d), _leg(d))


@message("group_call_ice")
def _gc_ice(d: dict[str, Any]) -> GroupCallIce:
    return GroupCallIce(call_id(d), _ice(d).candidate)


@message("mesh_offer")
def _mesh_offer(d: dict[str, Any]) -> MeshOffer:
    return MeshOffer(call_id(d), _user(d, "to"), _sdp(d))


@message("mesh_answer")
def _mesh_answer(d: dict[str, Any]) -> MeshAnswer:
    return MeshAnswer(call_id(d), _user(d, "to"), _sdp(d))


@message("mesh_ice")
def _mesh_ice(d: dict[str, Any]) -> MeshIce:
    return MeshIce(call_id(d), _user(d, "to"), _ice(d).candidate)


@message("conference_answer")
def _conf_answer(d: dict[str, Any]) -> ConferenceAnswer:
    return ConferenceAnswer(call_id(d), _leg(d), _sdp(d))


@message("conference_leg_failed")
def _conf_failed(d: dict[str, Any]) -> ConferenceLegFailed:
    return ConferenceLegFailed(call_id(d), _leg(d), str(field_str(d, "detail", max_len=200, optional=True) or ""))


GROUP_CALL_TYPES = (GroupCallStart, GroupCallJoin, GroupCallDecline, GroupCallLeave, GroupCallMute, GroupCallRing,
                    GroupCallAddPhone, GroupCallDropPhone, GroupCallIce, MeshOffer, MeshAnswer, MeshIce,
                    ConferenceAnswer, ConferenceLegFailed)
