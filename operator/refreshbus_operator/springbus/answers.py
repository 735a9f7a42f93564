"""What Spring instances answered to a ConfigRefresh's bus event: ``status.springBus``.

Kept apart from the pods' results: refreshbus resolves its pods before publishing, but it
cannot know which Spring instances exist. So the section says what it saw -- the acks
(``AckRemoteApplicationEvent`` whose ``ackId`` is the event id) that arrived while the round
was open -- and, only when the spec gives ``expectedInstances``, whether that many answered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from refreshbus_wire import now

from refreshbus_operator.status import fmt_time

#: At most this many instances are listed in status (the count is always exact).
MAX_INSTANCES = 100


@dataclass(slots=True)
class SpringAnswers:
    #: The ``destinationService`` as published (expanded as Spring's sender expands it).
    destination: str
    expected: int | None = None
    published_at: datetime | None = None
    #: Why the event could not be published (bridge off, broker trouble), if it was not.
    problem: str | None = None
    instances: dict[str, datetime] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, bus_id: str) -> bool:
        """One instance's ack; False for a repeat (Spring does not de-duplicate)."""
        if bus_id in self.instances:
            return False
        self.instances[bus_id] = now()
        self.changed.set()
        return True

    @property
    def complete(self) -> bool:
        return self.expected is not None and len(self.instances) >= self.expected

    def message(self) -> str:
        if self.problem is not None:
            return f"not published on the Spring bus: {self.problem}"
        if self.published_at is None:
            return "not published on the Spring bus yet"
        seen = f"{len(self.instances)} Spring instance(s) answered"
        if self.expected is None:
            return f"{seen} while the refresh was open (no expectedInstances: the count is what was seen)"
        return f"{seen} of {self.expected} expected"

    def render(self) -> dict[str, Any]:
        listed = sorted(self.instances.items(), key=lambda item: item[1])[:MAX_INSTANCES]
        body: dict[str, Any] = {
            "destinationService": self.destination,
            "published": self.published_at is not None,
            "answered": len(self.instances),
            "instances": [{"busId": bus_id, "at": fmt_time(at)} for bus_id, at in listed],
            "message": self.message(),
        }
        if self.expected is not None:
            body["expectedInstances"] = self.expected
            body["complete"] = self.complete
        return body
