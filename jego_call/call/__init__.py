"""[pure] Call state: one state machine per call."""
