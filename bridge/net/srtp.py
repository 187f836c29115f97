"""SRTP and SRTCP (RFC 3711) for one WebRTC leg, around the two pylibsrtp sessions DTLS keyed.

    guard = SrtpGuard(tx_session, rx_session)    # aiortc's dtls._tx_srtp / dtls._rx_srtp
    wire = guard.protect(rtp_or_rtcp)            # RTCP is told apart by its packet type (RFC 5761 §4)
    plain = guard.unprotect(wire)                # None: dropped, and counted in guard.n

libsrtp does the work: authentication (a tampered packet fails its tag: ``auth_failed``),
the replay list (a packet seen before, or older than the window: ``replayed``) and the
rollover counter (RFC 3711 §3.3.1: the receiver's estimate of the ROC carries audio past
sequence number 65535). Nothing that fails reaches the RTP session.
"""

from __future__ import annotations

import pylibsrtp

__all__ = ["COUNTERS", "SrtpGuard", "is_rtcp_type"]

COUNTERS = ("protected", "unprotected", "auth_failed", "replayed", "malformed", "too_long")

_AUTH = pylibsrtp.ERRORS[7]  # "authentication failure"
_REPLAY = {pylibsrtp.ERRORS[9], pylibsrtp.ERRORS[10], pylibsrtp.ERRORS[26]}  # bad index, too old, index too old


def is_rtcp_type(data: bytes) -> bool:
    """RFC 5761 §4: packet types 192-223 in the second byte are RTCP (RTP must not use them)."""
    return len(data) > 1 and 192 <= data[1] <= 223


class SrtpGuard:
    """Protect outgoing RTP/RTCP, unprotect incoming, count what is refused and why."""

    def __init__(self, tx: pylibsrtp.Session, rx: pylibsrtp.Session) -> None:
        self._tx = tx
        self._rx = rx
        self._protect = tx.protect
        self._protect_rtcp = tx.protect_rtcp
        self._unprotect = rx.unprotect
        self._unprotect_rtcp = rx.unprotect_rtcp
        self.n = dict.fromkeys(COUNTERS, 0)

    def protect(self, data: bytes) -> bytes:
        """RTP -> SRTP, or RTCP -> SRTCP (by its packet type). Raises pylibsrtp.Error (bug)."""
        self.n["protected"] += 1
        if 192 <= data[1] <= 223:
            return self._protect_rtcp(data)
        return self._protect(data)

    def unprotect(self, data: bytes) -> bytes | None:
        """SRTP/SRTCP -> plain RTP/RTCP, or None when it is refused (counted in ``n``)."""
        try:
            if 192 <= data[1] <= 223:
                plain = self._unprotect_rtcp(data)
            else:
                plain = self._unprotect(data)
        except pylibsrtp.Error as exc:
            msg = str(exc)
            self.n["auth_failed" if msg == _AUTH else "replayed" if msg in _REPLAY else "malformed"] += 1
            return None
        except (ValueError, IndexError):  # longer than libsrtp's buffer, or 1 byte
            self.n["too_long" if len(data) > 1 else "malformed"] += 1
            return None
        self.n["unprotected"] += 1
        return plain
