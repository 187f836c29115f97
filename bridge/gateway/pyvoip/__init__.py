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

pyVoIP stays the user agent that owns the SIP socket, its receive thread ("SIP Recieve"), the
registration state and refresh timer (`VoIPPhone`/`SIPClient` subclasses) and the per-call objects
(`VoIPCall` subclass). Its RTP engine (`RTPClient`, two threads per call) is replaced by the
process's shared media engine (media.py on bridge/net/media.py). Its call
signalling is too broken to patch line by line (media-stack.md §1.7), so the INVITE dialogue is
taken over here with our sans-I/O core (bridge.sip.message/auth/sdp) and sent through pyVoIP's socket.

Defects of pyVoIP 1.6.8 (media-stack.md §1) -> how they are mended -> the test that proves it
(tests/integration/test_pyvoip_leg.py unless noted):

| defect (pyVoIP file:line)                          | mend                                                      | test |
|----------------------------------------------------|-----------------------------------------------------------|------|
| 8-bit read_audio/write_audio (RTP.py:476-507)       | `_MediaClient` (shared engine) speaks 16-bit PCM, bridge/rtp/g711; `_Call.read_audio/write_audio` raise | test_quiet_tone_is_16_bit |
| ACK for 2xx has a random To-tag (SIP.py:1565)      | `PyVoipLeg._ack_2xx` copies the 2xx's To (RFC 3261 §13.2.2.4)   | test_ack_to_tag_matches_200 (sipp uas_answer_check_ack.xml) |
| 4xx-6xx to INVITE ignored, no ACK (SIP.py:911)     | ACK with the INVITE's branch + response To (§17.1.1.3); LegEnded(outcome, code, Reason cause) | test_busy_486_is_acked_and_mapped (sipp uas_busy_486.xml) |
| 407/401 on INVITE dead-locks recvLock (SIP.py:1614) | no lock held: ACK the challenge, re-INVITE with CSeq+1 and Proxy-Authorization (bridge/sip/auth) | test_407_challenge_is_answered (sipp uas_auth_407.xml) |
| PCMA sent as μ-law (RTP.py:460)                    | the session encodes with the negotiated codec's encoder | test_pcma_is_a_law |
| inbound CANCEL: no 487, call answered anyway (SIP.py:947, VoIP.py:522) | 200 to CANCEL + 487 to INVITE (§9.2); `answer()` after it is refused | test_inbound_cancel_gets_487_and_never_answers (sipp uac_cancel.xml) |
| relative-sleep pacing drifts; unbounded pmin/pmout (RTP.py:157-216, 382-419) | absolute clock t0 + n·20 ms; `FrameQueues` bounded deques; bounded JitterBuffer | test_pacing_absolute_clock_and_bounded_backlog |
| 0-byte RTP kills the receiver; DTMF event >= 16 IndexError (RTP.py:370, 554) | RtpPacket.parse drops malformed datagrams; DtmfReceiver for events | test_bad_rtp_is_dropped_and_audio_continues |
| no DTMF send (RTP.py:382)                          | RFC 4733 event packets from bridge/rtp/dtmf on the media clock | test_send_dtmf_rfc4733 |
| seq wrap OverflowError, packet without seq (RTP.py:389) | RtpSender masks seq/ts; `TrunkConfig.rtp_initial_sequence` for the test | test_sequence_wraps |
| 180/183 ignored, RTP only after 200 (SIP.py:906, VoIP.py:310) | LegRinging(180/183); 183 + SDP starts media: LegRinging(183, early_media=True), audio via read_audio | test_early_media_183 (sipp uas_early_media.xml) |
| always REGISTERs; deregister waits 30 s (SIP.py:963, 1658) | `register=False` = trunk mode; deregister bounded to `deregister_timeout` | test_trunk_mode_no_register_and_options_keepalive, test_register_digest (sipp uas_register.xml), test_against_the_simulated_carrier |
| myIP default 0.0.0.0 in Contact/SDP (VoIP.py:477) | `TrunkConfig.local_host` must be a unicast address (127.0.0.1 default) | tests/unit/test_pyvoip_leg_unit.py |
| OPTIONS dropped (__init__.py:33, SIP.py:867)       | 200 OK with Allow/Accept (RFC 3261 §11.2)                  | test_trunk_mode_no_register_and_options_keepalive |
| BYE we send goes to `server` with the INVITE's Via (SIP.py:1517, 1653) | BYE to the remote target / route set (§12.2.1.1) with our own Via | test_inbound_call_answer_and_bye |
| no CANCEL of our own INVITE (no API)               | `hangup()` while ringing sends CANCEL (§9.1), waits for 487 | test_cancel_outbound_while_ringing (sipp uas_ring_cancel.xml) |
| no Timer A/B, INVITE never times out (SIP.py)      | Timer A retransmits, Timer B = 64·T1 -> LegEnded("timeout", 408) | test_invite_timeout |
| recv(8192) truncates datagrams (SIP.py:861)        | recvfrom(65535) and our strict parser                      | (all SIP tests) |
| threads never joined (RTP.py:345-350, SIP.py:964)  | no RTP threads at all; SIP threads joined by `stop()`     | test_threads_do_not_leak |
| one payload per 20 ms tick: 30 ms ptime loses audio (RTP.py:382) | samples placed by RTP timestamp (bridge/rtp/media.py Playout) | tests/integration/test_bridge_media_engine.py |
| no RTCP                                            | SR/RR on port + 1; the far end's loss, jitter, RTT in stats() | test_rtcp_with_the_simulated_carrier |
| re-INVITE starts a 2nd pair of RTP threads (VoIP.py:267-296) | answer the new offer on the same media (hold = recvonly) | test_reinvite_hold_and_resume |
| no 200 retransmission / Timer H (SIP.py)           | Timer G resends our 200 until ACK; Timer H -> BYE + LegEnded("failed", 41) | test_inbound_200_without_ack_times_out |

Threading: pyVoIP's "SIP Recieve" thread reads and parses datagrams and hands each message to the
event loop with `loop.call_soon_threadsafe`; REGISTER responses go straight to the registering
thread. All dialog state lives on the event loop, and so does the media: each call's RTP is a session
on the process's `MediaEngine` (sockets read by the loop, one 20 ms timer for every call), no
thread per call. Blocking pyVoIP calls (start/register, stop/deregister) run in `asyncio.to_thread`.
"""

from .common import TrunkConfig, TrunkError
from .leg import PyVoipLeg
from .trunk import PyVoipTrunk

__all__ = ["PyVoipLeg", "PyVoipTrunk", "TrunkConfig", "TrunkError"]
