"""Fixtures for unit tests that drive the signalling app in-process: see tests/unit/appkit.py."""

from tests.unit.appkit import cheap_hashes, client, make_client

__all__ = ["cheap_hashes", "client", "make_client"]
