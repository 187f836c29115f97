"""Sans-I/O RTP media plane: packets (packet.py), G.711 (g711.py), receive/send state and
jitter buffer (session.py), RFC 4733 DTMF (dtmf.py). Nothing here touches sockets or clocks:
callers pass ``now`` in and send the bytes out themselves (see bridge/carrier/media.py)."""
