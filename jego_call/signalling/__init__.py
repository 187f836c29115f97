"""The signalling server: accounts API, WebSocket protocol (docs/signalling.md), call hub."""
