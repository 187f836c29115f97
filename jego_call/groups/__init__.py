"""Groups: group chats (service.py on the messaging store) and group calls (calls.py, the hub's
pure group-call desk, with the conference in the bridge worker). Protocol: docs/signalling.md,
## Groups and ## Group calls."""
