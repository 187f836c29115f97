"""Sans-I/O SIP core: messages, URIs, auth, transactions, dialogs, SDP."""
