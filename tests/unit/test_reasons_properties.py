"""One vocabulary across the SIP core and the call: `bridge.sip.causes` (Q.850 <-> SIP) and
`jego_call.call.reasons.from_sip` agree, `from_sip` is total, and the catalogue the web client
reads is plain JSON with every reason in it.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.gateway.fakes import FakeLeg
from bridge.gateway.legs import refused
from bridge.sip.causes import cause_for_sip, reason_header, sip_for_cause
from jego_call.call.reasons import REASONS, EndReason, catalogue, from_sip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.integers(-5, 1000)), st.one_of(st.none(), st.integers(-5, 300)))
def test_from_sip_is_total(code: int | None, cause: int | None) -> None:
    assert isinstance(from_sip(code, cause), EndReason)


def test_a_response_without_a_reason_header_reads_as_its_own_code() -> None:
    """A carrier that sends no Reason: the cause we infer from the code (RFC 3398 §7.2.4.1) tells
    the same verdict as the code alone."""
    differ = {}
    for code in range(400, 700):
        alone, inferred = from_sip(code), from_sip(code, cause_for_sip(code))
        if REASONS[alone].outcome != REASONS[inferred].outcome:
            differ[code] = (alone, inferred)
    # The one exception: a bare 480 infers cause 20 (the SBC default in carrier.md), which read
    # as a verdict would say switched_off. No leg reads it so (refused(), below): the inferred
    # cause is only recorded. Any new divergence fails here.
    assert differ == {480: (EndReason.NO_ANSWER, EndReason.SWITCHED_OFF)}


def test_every_leg_judges_a_bare_response_by_its_code_alone() -> None:
    """bridge.gateway.legs.refused, the one rule the pyVoIP leg and the fake leg end by: without a
    Reason header the verdict is from_sip(code), and the cause recorded is cause_for_sip(code)."""
    for code in range(400, 700):
        ended = refused(code, None)
        assert (ended.reason, ended.sip_code, ended.q850_cause) == (from_sip(code), code, cause_for_sip(code)), code
    assert refused(480, None).reason is EndReason.NO_ANSWER   # not switched_off
    assert refused(480, 20).reason is EndReason.SWITCHED_OFF and refused(480, 19).reason is EndReason.NO_ANSWER
    leg = FakeLeg("bare")
    leg.remote_reject(480)
    assert leg.events.get_nowait() == refused(480, None)


def test_what_we_send_for_a_reason_reads_back_as_that_reason() -> None:
    """Each reason's own (sip_code, q850) pair, as the gateway sends it, comes back to the same
    verdict at the far side's parser: the vocabulary survives the wire."""
    for reason, info in REASONS.items():
        if not info.sip_code or info.q850 is None:
            continue
        assert 300 <= info.sip_code < 700, reason
        back = from_sip(info.sip_code, info.q850)
        assert REASONS[back].outcome == info.outcome, (reason, info.sip_code, info.q850, back)
        reason_header(info.q850)   # a cause the Reason header can carry (1..127)


def test_the_cause_a_bye_carries_and_the_response_it_maps_to_agree() -> None:
    """A cause ending an answered call (BYE + Reason) and the same cause refusing a call (its
    mapped final response + Reason) give the same verdict, so the two call paths report alike."""
    for cause in range(1, 128):
        code = sip_for_cause(cause)
        if code == 0:
            continue
        bye, refused = from_sip(0, cause), from_sip(code, cause)
        if bye is EndReason.FAILED or refused is EndReason.FAILED:
            continue   # an unmapped cause: "failed" either way or a code-specific word
        assert REASONS[bye].outcome == REASONS[refused].outcome, (cause, code, bye, refused)


def test_catalogue_is_json_with_every_reason_once() -> None:
    cat = catalogue()
    assert json.loads(json.dumps(cat, ensure_ascii=False)) == cat
    assert set(cat) == {r.value for r in EndReason} == {r.value for r in REASONS}
    for word, entry in cat.items():
        assert entry["en"] and entry["zh"] and entry["phone_en"] and entry["callee_zh"], word
        assert entry["outcome"] == REASONS[EndReason(word)].outcome
