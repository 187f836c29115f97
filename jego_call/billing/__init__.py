"""Prepaid credit for phone calls: rates, money, the credit ledger and toll-fraud controls.

Pure cores: `money` (integer minor units, parsing and formatting), `rates` (the rate table:
longest prefix wins), `fraud` (destination allow-list, caps, velocity), `policy` (one call's
authorisation in virtual time). Shells: `store` (SQLite), `service` (`Billing`: authorise,
answered, heartbeat, settle, recover), `web` (GET /api/credit, GET /api/rate).
This package's __init__ imports nothing, so the pure modules stay pure.
"""
