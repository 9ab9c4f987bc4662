"""A coordinator outage does not make a node look lost (issue 21; SPEC F1, F2).

A real coordinator (in-process, TLS 1.3) says since when it takes heartbeats; stopped, it answers nothing.
The lifecycle judges a node's stale heartbeat against that: not lost while the coordinator is away, not
lost during the first ``node_lost_s`` after it came back, lost when the coordinator was up all along
(the control: a node that really died is still found).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cyxwiz.coordinator.service import start_coordinator
from cyxwiz.pki.devpki import build_dev_pki
from tasks.coordinator_health import UNKNOWN, coordinator_started_at, judged_heartbeat
from tasks.redispatch import lost_reason

LOST_S = 10.0


def _lost(beat: dt.datetime | None, now: dt.datetime) -> str | None:
    return lost_reason(
        state="RUNNING", final=False, last_heartbeat=beat, run_quiet_for=0.0, now=now, node_lost_s=LOST_S,
        run_silent_s=450.0,
    )  # fmt: skip


def test_the_coordinator_says_since_when_it_is_up_and_nothing_while_it_is_down(tmp_path: Path) -> None:
    pki = build_dev_pki(tmp_path / "pki")
    before = dt.datetime.now(dt.UTC)
    coord = start_coordinator(
        cert=pki.coordinator_cert, key=pki.coordinator_key, trust_bundle=pki.bundle, crl=pki.crl,
        state_dir=tmp_path / "state",
    )  # fmt: skip
    url = coord.url
    try:
        started = coordinator_started_at(url, trust_bundle=pki.bundle)
        assert started is not None and started is not UNKNOWN
        assert before <= started <= dt.datetime.now(dt.UTC)
        # A certificate the control plane cannot verify is a configuration fault, never "down".
        other = build_dev_pki(tmp_path / "other")
        assert coordinator_started_at(url, trust_bundle=other.bundle) is UNKNOWN
    finally:
        coord.stop()
    assert coordinator_started_at(url, trust_bundle=pki.bundle) is None
    assert coordinator_started_at(url, trust_bundle=tmp_path / "missing.pem") is UNKNOWN


def test_a_stale_beat_is_judged_only_over_time_the_coordinator_was_up() -> None:
    now = dt.datetime.now(dt.UTC)
    beat = now - dt.timedelta(seconds=30)  # the node's last beat before the coordinator died

    def judged(started: dt.datetime | None) -> dt.datetime | None:
        return judged_heartbeat(beat, now=now, node_lost_s=LOST_S, started_at=lambda: started)

    # The coordinator is away: nobody could beat, nobody is lost.
    assert _lost(judged(None), now) is None
    # It came back 3 s ago: the node has node_lost_s from then to beat again.
    assert _lost(judged(now - dt.timedelta(seconds=3)), now) is None
    # Control: the coordinator was up all along and the node went silent: lost.
    assert _lost(judged(now - dt.timedelta(hours=1)), now) == f"no heartbeat for more than {LOST_S:g} s"
    # An older coordinator that names no start, or no coordinator to ask: the beat as it stands.
    assert _lost(judged(UNKNOWN), now) is not None
    assert judged_heartbeat(beat, now=now, node_lost_s=LOST_S, started_at=None) == beat


def test_a_fresh_beat_asks_nothing() -> None:
    now = dt.datetime.now(dt.UTC)
    beat = now - dt.timedelta(seconds=2)

    def never() -> dt.datetime | None:
        raise AssertionError("a fresh heartbeat needs no question to the coordinator")

    assert judged_heartbeat(beat, now=now, node_lost_s=LOST_S, started_at=never) == beat
