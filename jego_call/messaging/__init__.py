"""Messaging: conversations between contacts, text, voice messages, photos and files.

`store.MessageStore` holds the SQL (migration 2 in `jego_call.db`), `media` sniffs, thumbnails
and stores uploads, `protocol` registers the WebSocket message types, and
`service.setup_messaging(app)` wires routes and hub handlers into the signalling app.
"""
