"""The TURN REST API credentials (jego_call/signalling/turn.py), as coturn's use-auth-secret checks them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from jego_call.config import IceConfig
from jego_call.signalling.turn import ice_servers_for, refresh_after_s, turn_credentials


def test_username_is_expiry_colon_user_and_password_its_hmac_sha1() -> None:
    user, password, expiry = turn_credentials("s3cret", "alice", 1_800_000_000.7, 600)
    assert expiry == 1_800_000_600 and user == "1800000600:alice"
    want = base64.b64encode(hmac.new(b"s3cret", b"1800000600:alice", hashlib.sha1).digest()).decode()
    assert password == want
    assert turn_credentials("other", "alice", 1_800_000_000, 600)[1] != password


def test_a_colon_or_odd_character_in_a_name_cannot_reach_coturn() -> None:
    user, _, _ = turn_credentials("s", "gw:east 1/中", 0, 60)
    assert user.count(":") == 1 and user.split(":", 1)[1] == "gw.east.1.."


def test_ice_servers_carry_own_credentials_but_never_the_secret() -> None:
    ice = IceConfig(servers=({"urls": ["stun:stun.example.org"]},), turn_urls=("turn:t.example.org:3478",),
                    turn_secret="top-secret", turn_ttl_s=86400)
    servers, expires = ice_servers_for(ice, "bob", 1000.0)
    assert servers[0] == {"urls": ["stun:stun.example.org"]}
    assert servers[1]["urls"] == ["turn:t.example.org:3478"] and servers[1]["username"] == "87400:bob"
    assert expires == 87400 and "top-secret" not in json.dumps(servers)
    assert refresh_after_s(ice) == 43200.0
    plain, none = ice_servers_for(IceConfig(), "bob", 1000.0)
    assert plain == [] and none is None
