"""The hand-off between the sidecar's worker and its connection thread, on a real pika
connection to a real RabbitMQ node."""

from __future__ import annotations

import threading
import time

import pika
import pytest
from refreshbus_sidecar.handoff import Handoff
from refreshbus_testenv.broker import Broker

pytestmark = pytest.mark.integration


def test_a_workers_reply_runs_on_the_connection_thread_as_soon_as_it_turns(running_broker: Broker) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(running_broker.url()))
    handoff: Handoff[int] = Handoff()
    ran: list[tuple[str, int]] = []
    replied = threading.Event()

    def work() -> None:
        item = handoff.take(10)
        assert item is not None
        handoff.reply(connection, lambda: ran.append((threading.current_thread().name, item)))
        replied.set()

    worker = threading.Thread(target=work, name="worker")
    worker.start()
    try:
        handoff.submit(7)
        assert replied.wait(10)
        started = time.monotonic()
        connection.process_data_events(time_limit=30)  # returns once the callback has run

        assert ran == [(threading.current_thread().name, 7)]
        assert time.monotonic() - started < 5
    finally:
        worker.join(10)
        connection.close()


def test_a_reply_to_a_closed_connection_is_refused(running_broker: Broker) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(running_broker.url()))
    connection.close()
    handoff: Handoff[int] = Handoff()

    assert handoff.reply(connection, lambda: None) is False
