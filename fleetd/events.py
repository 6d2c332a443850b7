"""The event bus: one place where an event is stamped, stored, logged and fanned out.

Order of operations for every event: the SQLite store first (so nothing is lost
even if the journal is down), then the sinks (journal, structlog), then live
followers (``fleetctl events --follow``). A follower that cannot keep up is
disconnected rather than allowed to slow the supervision loop; it can resume
from the store by event id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fleetd.store import EventRow, Store

log = structlog.get_logger("fleetd.events")

Sink = Callable[[dict[str, Any]], None]


class EventBus:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.sinks: list[Sink] = []
        self._followers: set[MemoryObjectSendStream[dict[str, Any]]] = set()
        self._clock = clock

    def publish(
        self,
        kind: str,
        message: str,
        *,
        host: str | None = None,
        agent: str | None = None,
        state: str | None = None,
        incident: str | None = None,
        alert: bool = False,
        data: dict[str, Any] | None = None,
        ts: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store and fan out one event; return its dict form.

        ``extra`` goes to the sinks (journal) but not to the store: large values
        such as scrollback already live in the forensics table.
        """
        stamp = self._clock() if ts is None else ts
        data = data or {}
        event_id = self.store.add_event(
            stamp,
            kind,
            message,
            host=host,
            agent=agent,
            state=state,
            incident=incident,
            alert=alert,
            data=data,
        )
        row = EventRow(event_id, stamp, kind, host, agent, state, incident, alert, message, data)
        event = row.to_dict()
        sink_event = {**event, "data": {**data, **(extra or {})}} if extra else event
        for sink in self.sinks:
            try:
                sink(sink_event)
            except Exception:  # a broken sink must never stop supervision
                log.exception("events.sink.failed", sink=repr(sink))
        for follower in list(self._followers):
            try:
                follower.send_nowait(event)
            except anyio.WouldBlock:
                log.warning("events.follower.dropped", reason="too slow")
                self._drop(follower)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._drop(follower)
        return event

    def follow(self, buffer: int = 1000) -> MemoryObjectReceiveStream[dict[str, Any]]:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](buffer)
        self._followers.add(send)
        return receive

    def _drop(self, follower: MemoryObjectSendStream[dict[str, Any]]) -> None:
        self._followers.discard(follower)
        follower.close()

    def close(self) -> None:
        for follower in list(self._followers):
            self._drop(follower)
