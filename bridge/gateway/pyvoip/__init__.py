"""The bridge's SIP user agent on the carrier trunk: pyVoIP 1.6.8, quarantined and mended here.

This is the ONLY module that imports pyVoIP. It implements `SipTrunk` (`PyVoipTrunk`) and `SipLeg`
(`PyVoipLeg`) from bridge/gateway/legs.py. Use::

    trunk = PyVoipTrunk(TrunkConfig(register=False))    # or register=True with digest credentials
    await trunk.start()                                 # bind, register, start receiving
    trunk.set_inbound_handler(on_call)                  # inbound INVITEs -> on_call(leg, from, to)
    leg = trunk.new_leg("call-1"); await leg.dial("+8613800138000")
    ev = await leg.events.get()                         # LegRinging / LegAnswered / LegDtmf / LegEnded
    leg.send_audio(pcm16_320_bytes); leg.read_audio()   # 16-bit PCM, 8 kHz, 20 ms frames
    await leg.hangup(); await trunk.stop()

pyVoIP stays the user agent that owns the SIP socket and its receive thread ("SIP Recieve"),
the registration state (`registered`, PhoneStatus) and its refresh (`_SipClient`), the per-call
records (`_Call`, a VoIPCall). Its RTP engine (`RTPClient`, two threads per call) is replaced by
the process's shared media engine (`_MediaClient` on bridge/net/media.py). Its SIP
machinery is not used at all: there is ONE SIP stack, our sans-I/O `bridge.sip.endpoint.SipEndpoint`
(transactions with Timers A-M, dialogs, CANCEL/487 matching, stateless 400/405/481/501 checks),
run on the event loop by `bridge.net.driver.EndpointDriver` exactly as the carrier runs it. The
trunk routes the endpoint's events to the leg (by Call-ID and transaction key) or to the
registration; the leg decides, the endpoint retransmits and times out. No SIP timer exists here.

Defects of pyVoIP 1.6.8 (media-stack.md §1) -> how they are mended -> the test that proves it
(tests/integration/test_pyvoip_leg.py unless noted):

| defect (pyVoIP file:line)                          | mend                                                      | test |
|----------------------------------------------------|-----------------------------------------------------------|------|
| 8-bit read_audio/write_audio (RTP.py:476-507)       | `_MediaClient` (shared engine) speaks 16-bit PCM, bridge/rtp/g711; `_Call.read_audio/write_audio` raise | test_quiet_tone_is_16_bit |
| ACK for 2xx has a random To-tag (SIP.py:1565)      | the leg ACKs each 2xx with `SipEndpoint.send_ack` (the dialog's To-tag, new branch, INVITE CSeq, to the remote target, RFC 3261 §13.2.2.4); the endpoint re-ACKs 2xx retransmissions | test_ack_to_tag_matches_200 (sipp uas_answer_check_ack.xml), test_200_crossing_cancel_is_acked_then_byed |
| 4xx-6xx to INVITE ignored, no ACK (SIP.py:911)     | the endpoint's INVITE client transaction ACKs it (its branch, the response's To, §17.1.1.3; again on retransmission); LegEnded(outcome, code, Reason cause) | test_busy_486_is_acked_and_mapped (sipp uas_busy_486.xml) |
| 407/401 on INVITE dead-locks recvLock (SIP.py:1614) | no lock, no blocking: the challenge is an event; `bridge.sip.auth.authorize_retry` builds the next INVITE (CSeq+1, Proxy-Authorization), a new transaction | test_407_challenge_is_answered (sipp uas_auth_407.xml); tests/unit/test_sip_tu_commands.py |
| PCMA sent as μ-law (RTP.py:460)                    | the session encodes with the negotiated codec's encoder | test_pcma_is_a_law |
| inbound CANCEL: no 487, call answered anyway (SIP.py:947, VoIP.py:522) | the endpoint answers the CANCEL 200 and emits CancelReceived; the leg answers the INVITE 487 (§9.2); `answer()` after it is refused | test_inbound_cancel_gets_487_and_never_answers (sipp uac_cancel.xml) |
| relative-sleep pacing drifts; unbounded pmin/pmout (RTP.py:157-216, 382-419) | absolute clock t0 + n·20 ms; `FrameQueues` bounded deques; bounded JitterBuffer | test_pacing_absolute_clock_and_bounded_backlog |
| 0-byte RTP kills the receiver; DTMF event >= 16 IndexError (RTP.py:370, 554) | RtpPacket.parse drops malformed datagrams; DtmfReceiver for events | test_bad_rtp_is_dropped_and_audio_continues |
| no DTMF send (RTP.py:382)                          | RFC 4733 event packets from bridge/rtp/dtmf on the media clock | test_send_dtmf_rfc4733 |
| seq wrap OverflowError, packet without seq (RTP.py:389) | RtpSender masks seq/ts; `TrunkConfig.rtp_initial_sequence` for the test | test_sequence_wraps |
| 180/183 ignored, RTP only after 200 (SIP.py:906, VoIP.py:310) | provisional ResponseReceived -> LegRinging(180/183); 183 + SDP starts media: LegRinging(183, early_media=True), audio via read_audio | test_early_media_183 (sipp uas_early_media.xml) |
| always REGISTERs; deregister waits 30 s (SIP.py:963, 1658) | `register=False` = trunk mode; REGISTER + digest are non-INVITE transactions of the endpoint awaited on the loop, the refresh a loop timer; un-REGISTER bounded to `deregister_timeout` | test_trunk_mode_no_register_and_options_keepalive, test_register_digest (sipp uas_register.xml), test_register_refresh_is_a_loop_timer, test_against_the_simulated_carrier |
| myIP default 0.0.0.0 in Contact/SDP (VoIP.py:477) | `TrunkConfig.local_host` must be a unicast address (127.0.0.1 default) | tests/unit/test_pyvoip_leg_unit.py |
| OPTIONS dropped (__init__.py:33, SIP.py:867)       | 200 OK in or out of a dialog, Allow/Accept by the endpoint (RFC 3261 §11.2); other methods 405 + Allow / 501 by the endpoint, unknown dialogs 481 | test_trunk_mode_no_register_and_options_keepalive, test_requests_outside_our_dialogs_get_481_405_501 |
| BYE we send goes to `server` with the INVITE's Via (SIP.py:1517, 1653) | `send_in_dialog(dialog, "BYE")`: the dialog's remote target / route set (§12.2.1.1), the endpoint's own Via, retransmitted (Timer E/F) | test_inbound_call_answer_and_bye |
| no CANCEL of our own INVITE (no API)               | `hangup()` while ringing: `SipEndpoint.send_cancel` (§9.1: held until a provisional); without a final response the INVITE transaction gives up after `cancel_timeout`; a 2xx crossing it, or arriving later, is ACKed and BYEd | test_cancel_outbound_while_ringing (sipp uas_ring_cancel.xml), test_200_crossing_cancel_is_acked_then_byed, test_late_200_after_cancel_gave_up_is_acked_and_byed |
| no Timer A/B, INVITE never times out (SIP.py)      | the endpoint's INVITE client transaction: Timer A retransmits, Timer B = 64·T1 -> TransactionTimeout -> LegEnded("timeout", 408) | test_invite_timeout |
| recv(8192) truncates datagrams (SIP.py:861)        | recvfrom(65535) and our strict parser                      | (all SIP tests) |
| SIP receive loop polls every 10 ms, 16-21 ms CPU/s idle (SIP.py:850-857) | the receive thread blocks in epoll (a selector) on the socket and a self-pipe: no wake-up while idle (0.000 ms CPU/s for the thread, 0.018 for the process; docs/benchmarks.md) | test_idle_receive_thread_sleeps; scripts/bench_trunk_idle.py |
| threads never joined (RTP.py:345-350, SIP.py:964)  | no RTP threads at all; the SIP thread joined by `stop()`; no threading.Timer for the REGISTER refresh | test_threads_do_not_leak |
| one payload per 20 ms tick: 30 ms ptime loses audio (RTP.py:382) | samples placed by RTP timestamp (bridge/rtp/media.py Playout) | tests/integration/test_bridge_media_engine.py |
| no RTCP                                            | SR/RR on port + 1; the far end's loss, jitter, RTT in stats() | test_rtcp_with_the_simulated_carrier |
| re-INVITE starts a 2nd pair of RTP threads (VoIP.py:267-296) | answer the new offer on the same media (hold = recvonly), through the endpoint's server transaction (200 until ACK) | test_reinvite_hold_and_resume |
| no 200 retransmission / Timer H (SIP.py)           | the endpoint resends our 2xx until ACK (§13.3.1.4) and our 3xx-6xx (Timer G); AckTimeout -> BYE + LegEnded("failed", 41) | test_inbound_200_without_ack_times_out, test_inbound_reject_and_no_handler |

Threading: pyVoIP's "SIP Recieve" thread sleeps in epoll (a selector) and hands each datagram to the
event loop (`EndpointDriver.receive_datagram_threadsafe`); all SIP state (the endpoint, dialogs,
legs, registration) lives on the event loop, and output leaves through pyVoIP's socket. So
does the media: each call's RTP is a session on the process's `MediaEngine` (sockets read by
the loop, one 20 ms timer for every call), no thread per call. Blocking pyVoIP calls (joining
the SIP thread) run in `asyncio.to_thread`.
"""

from .common import TrunkConfig, TrunkError
from .leg import PyVoipLeg
from .trunk import PyVoipTrunk

__all__ = ["PyVoipLeg", "PyVoipTrunk", "TrunkConfig", "TrunkError"]
