"""Progress reports never hold up the training while the coordinator is away (issue 21; SPEC F1).

The bridge's reader hands each report to :class:`agents.progress.ProgressRelay`; a send that is still
retrying (the coordinator restarting) blocks only the relay's own thread, later reports replace the one
pending, and a report that could not be delivered is dropped without failing anything.
"""

from __future__ import annotations

import threading
from typing import Any

from agents.progress import ProgressRelay
from cyxwiz.errors import UnavailableError


def test_a_send_stuck_in_retries_blocks_nothing_and_the_newest_report_goes_next() -> None:
    release = threading.Event()
    sent: list[int] = []

    def send(message: dict[str, Any]) -> None:
        release.wait(timeout=30)  # the coordinator is restarting: this send is still retrying
        sent.append(int(message["step"]))

    with ProgressRelay(send=send) as relay:
        for step in range(1, 101):
            relay.offer({"kind": "progress", "step": step, "total": 100})  # returns at once, every time
        release.set()
    # The first report went out when the coordinator came back, then only the newest of the rest.
    assert sent[-1] == 100
    assert len(sent) <= 3


def test_an_undeliverable_report_is_dropped_and_the_relay_goes_on() -> None:
    sent: list[int] = []

    def send(message: dict[str, Any]) -> None:
        if message["step"] == 1:
            raise UnavailableError("coordinator unavailable (503)")
        sent.append(int(message["step"]))

    relay = ProgressRelay(send=send).start()
    relay.offer({"kind": "progress", "step": 1, "total": 2})
    relay.close()  # flushes: the first one failed, nothing is pending
    assert sent == []
    relay = ProgressRelay(send=send).start()
    relay.offer({"kind": "progress", "step": 2, "total": 2})
    relay.close()
    assert sent == [2]
