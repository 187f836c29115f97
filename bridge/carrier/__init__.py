"""The simulated Chinese carrier trunk: scenarios (pure), call records, SIP/RTP server."""
