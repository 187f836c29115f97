"""The SIP gateway (bridge worker): one BridgeCall per phone call, a WebRTC leg joined to a SIP leg."""
