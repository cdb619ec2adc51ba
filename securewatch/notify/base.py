"""What every notifier is: one receiver, `send` one event, `close`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from policy.events import Event


class NotifierError(Exception):
    """A delivery failed. `permanent` means retrying the same event cannot help
    (the receiver refused it, e.g. HTTP 400): it is set aside, not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Notifier(Protocol):
    name: str

    async def send(self, event: Event, delivery_id: str) -> Mapping[str, str] | None:
        """Deliver one event, or raise NotifierError. Returning means the receiver has it; a
        mapping names those of its recipients that refused it (email: address -> the server's
        reply), while the others got it."""

    async def close(self) -> None:
        """Release connections; the notifier may be used again afterwards."""
