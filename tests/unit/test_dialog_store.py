"""bridge/gateway/dialogs.py: a trunk dialog written down survives its worker; the BYE rebuilt
from the record is the one the dialog would have sent (RFC 3261 §12.2.1.1, §15.1.1); orphans
are claimed once, by one worker, only when their owner's heartbeat is stale."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.gateway.dialogs import CSEQ_MARGIN, DialogRecord, DialogStore, OrphanReaper, record_of
from bridge.sip.causes import reason_header
from bridge.sip.dialog import Dialog
from bridge.sip.message import SipRequest, make_response, new_request, parse_message
from tests.helpers import until


def answered_dialog(record_route: str | None = None) -> Dialog:
    inv = new_request("INVITE", "sip:+8613800138000@127.0.0.1:5060", from_="<sip:jego@127.0.0.1:5070>",
                      to="<sip:+8613800138000@127.0.0.1:5060>", contact="<sip:jego@127.0.0.1:5070>", cseq=2)
    headers = [("Contact", "<sip:+8613800138000@127.0.0.1:5060;transport=udp>")]
    if record_route:
        headers.append(("Record-Route", record_route))
    resp = make_response(inv, 200, to_tag="carrier-tag", headers=headers)
    return Dialog.as_uac(inv, resp, ("127.0.0.1", 5060), reliable=False)


def record(owner: str = "w1-aaaa", *, call_id_suffix: str = "", now: float = 100.0) -> DialogRecord:
    d = answered_dialog()
    rec = record_of(d, ("127.0.0.1", 5060), owner=owner, now=now, app_call_id="app-1")
    if call_id_suffix:
        rec = replace(rec, call_id=rec.call_id + call_id_suffix)
    return rec


def test_the_bye_rebuilt_from_a_record_is_the_dialogs_own() -> None:
    d = answered_dialog("<sip:proxy.carrier.test;lr>")
    rec = record_of(d, ("127.0.0.1", 5060), owner="w1", now=1.0)
    back = DialogRecord.from_json(rec.to_json())
    assert back == rec
    bye = back.bye_request(reason_header(41))
    bye.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKx", first=True)  # the endpoint's job
    wire = parse_message(bye.serialise())
    assert isinstance(wire, SipRequest)
    assert wire.method == "BYE" and wire.call_id == d.id.call_id
    assert wire.from_tag == d.id.local_tag and wire.to_tag == "carrier-tag"
    assert str(wire.uri) == "sip:+8613800138000@127.0.0.1:5060;transport=udp"  # the remote target
    assert wire.headers.get_all("Route") == ["<sip:proxy.carrier.test;lr>"]  # loose route kept
    assert wire.cseq.seq == d.local_seq + 1 + CSEQ_MARGIN > d.local_seq  # above anything the dead worker sent
    assert wire.headers.get("Reason") == reason_header(41)
    # The tags live in the dialog id only: never twice in From/To.
    assert (wire.headers.get("From") or "").count("tag=") == 1 and (wire.headers.get("To") or "").count("tag=") == 1


def test_store_put_drop_and_records(tmp_path: Path) -> None:
    store = DialogStore.open(tmp_path / "d.sqlite3")
    a, b = record(call_id_suffix="a"), record(call_id_suffix="b")
    store.put(a)
    store.put(b)
    store.put(a)  # idempotent
    assert sorted(r.key for r in store.records()) == sorted([a.key, b.key])
    store.drop(a.key)
    assert store.records() == [b]
    store.close()
    again = DialogStore.open(tmp_path / "d.sqlite3")  # survives the process (a file)
    assert again.records() == [b]
    again.close()


def test_orphans_are_claimed_only_when_the_owner_is_stale_and_only_once(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    w1, w2, w3 = (DialogStore.open(path) for _ in range(3))  # three processes' connections
    w1.heartbeat("w1", 100.0)
    w1.put(record("w1"))
    w2.heartbeat("w2", 100.0)
    assert w2.claim_orphans("w2", 101.0, stale_s=2.5) == []  # w1 is alive
    assert w2.claim_orphans("w1", 110.0, stale_s=2.5) == []  # never your own
    w2.heartbeat("w2", 103.0)
    w3.heartbeat("w3", 103.0)
    [got] = w2.claim_orphans("w2", 103.0, stale_s=2.5)  # w1 last seen 3 s ago: gone
    assert got.owner == "w1"
    assert w3.claim_orphans("w3", 103.1, stale_s=2.5) == []  # now w2's, and w2 is alive
    assert [r.key for r in w3.records()] == [got.key]
    for s in (w1, w2, w3):
        s.close()


def test_a_record_without_any_heartbeat_is_an_orphan() -> None:
    store = DialogStore.memory()
    store.put(record("crashed-before-its-first-heartbeat"))
    assert len(store.claim_orphans("w9", 5.0, stale_s=2.5)) == 1


@pytest.mark.parametrize("status", [200, 481, None])
async def test_reaper_byes_each_orphan_and_forgets_it_once_answered(status: int | None) -> None:
    store = DialogStore.memory()
    store.put(record("dead-1"))
    now = [1000.0]
    sent: list[DialogRecord] = []
    loop = asyncio.get_running_loop()

    def send_bye(rec: DialogRecord) -> asyncio.Future[int | None]:
        sent.append(rec)
        fut: asyncio.Future[int | None] = loop.create_future()
        loop.call_soon(fut.set_result, status)
        return fut

    reaper = OrphanReaper(store, "heir", send_bye, clock=lambda: now[0])
    assert [r.owner for r in reaper.sweep()] == ["dead-1"]
    assert len(sent) == 1 and store.records() != []  # kept until the BYE is over
    await until(lambda: reaper.reaped, 1, "the BYE's answer (call_soon)")
    assert [(r.owner, s) for r, s in reaper.reaped] == [("dead-1", status)]
    assert store.records() == []
    now[0] += 1.0
    assert reaper.sweep() == [] and len(sent) == 1  # nothing BYE'd twice


async def test_a_clean_stop_retires_the_heartbeat() -> None:
    store = DialogStore.memory()
    reaper = OrphanReaper(store, "w1", lambda rec: None, heartbeat_s=3600)
    reaper.start()
    await reaper.stop()
    store.put(record("w1"))
    # w1 said goodbye: a dialog it still owned (it could not) is an orphan at once.
    assert len(store.claim_orphans("w2", 0.0, stale_s=2.5)) == 1
