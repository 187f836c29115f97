"""asyncio adapters: sockets and timers around the sans-I/O cores in bridge/sip and bridge/rtp."""
