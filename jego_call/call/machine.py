"""[pure] A state machine driven by a transition table: (state, event) -> next state.

Subclass `TableMachine` with your Enums and table (see call/state.py, bridge/gateway/call.py); `apply`
is the only way to change the state, and a move the table lacks raises InvalidTransition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from ..errors import InvalidTransition

S = TypeVar("S")
E = TypeVar("E")


class TableMachine(Generic[S, E]):
    """State, history of moves, and the event that reached `final` (if it was reached)."""

    __slots__ = ("name", "table", "final", "state", "history", "end_event")

    def __init__(self, name: str, table: Mapping[tuple[S, E], S], initial: S, final: S) -> None:
        self.name = name
        self.table = table
        self.final = final
        self.state = initial
        self.history: list[tuple[S, E, S]] = []
        self.end_event: E | None = None

    def can(self, event: E) -> bool:
        return (self.state, event) in self.table

    def apply(self, event: E) -> S:
        """Move on `event`; raises InvalidTransition (and changes nothing) if the table forbids it."""
        nxt = self.table.get((self.state, event))
        if nxt is None:
            raise InvalidTransition(self.name, self.state, event)
        self.history.append((self.state, event, nxt))
        self.state = nxt
        if nxt == self.final:
            self.end_event = event
        return nxt

    @property
    def ended(self) -> bool:
        return self.state == self.final
