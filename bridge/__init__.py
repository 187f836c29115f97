"""The SIP bridge and the simulated carrier trunk."""
