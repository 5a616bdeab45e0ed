"""uvicorn's HTTP protocol with a deadline for the request head and a cap on open connections.

uvicorn times out idle keep-alive connections but not one that opens and never finishes its
request head (a slow-loris client), and it counts connections only when a request arrives.
:class:`GuardedH11Protocol` closes a connection whose request head has not arrived
``HEAD_TIMEOUT_S`` seconds after it opened, and refuses connections beyond ``MAX_CONNECTIONS``
at once (WebSockets included). Pass it as ``uvicorn.Config(http=GuardedH11Protocol)``.
"""
from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64


class GuardedH11Protocol(H11Protocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            transport.close()
            return
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def connection_lost(self, exc) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(exc)

    def _head_timeout(self) -> None:
        upgraded = self.transport.get_protocol() is not self  # a WebSocket now: its own limits apply
        if self.cycle is None and not upgraded and not self.transport.is_closing():
            self.transport.close()
