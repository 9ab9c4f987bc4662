"""A refusal flood cannot fill the audit log: refusals are capped per actor and minute and the rest is
counted in one summary event per minute (issue 18; SPEC I, H2)."""

from __future__ import annotations

import json

from cyxwiz.audit import MemorySink
from cyxwiz.audit import events as ev
from cyxwiz.coordinator.limits import RefusalCap
from tests.gateway.conftest import GwEnv
from tests.gateway.test_gateway import _node_a_websocket


def _denial(actor: str) -> ev.SecurityEvent:
    return ev.access_decision(
        actor_id=actor, actor_type=ev.ActorType.NODE, resource="r", action="a", allowed=False, reason="x"
    )


def test_cap_counts_the_rest_in_one_summary_per_minute() -> None:
    now = [0.0]
    sink = MemorySink()
    cap = RefusalCap(sink, per_minute=3, clock=lambda: now[0])
    for _ in range(10):
        cap.record(_denial("mallory"))
    cap.record(_denial("bob"))
    cap.record(ev.auth_attempt(actor_id="mallory", actor_type="node", success=True, method="jwt"))
    assert [e.actor_id for e in sink.events if e.outcome.value == "denied"] == ["mallory"] * 3 + ["bob"]
    assert len([e for e in sink.events if e.outcome.value == "success"]) == 1  # successes always pass
    now[0] = 61.0
    cap.record(_denial("mallory"))  # the next minute: the summary of the last one comes first
    [summary] = [e for e in sink.events if e.action == "audit.refusals-suppressed"]
    assert summary.actor_id == "mallory" and summary.details == {
        "suppressed": 7,
        "refusals": 10,
        "per_minute": 3,
    }
    assert sink.events[-1].action == "a"  # and this minute's first refusal is recorded again


def test_a_flood_that_stops_is_still_summed_up_when_its_minute_ends() -> None:
    """No later event needed (issue 21 load run: the abuser stopped and its summary was never written):
    the first suppressed refusal starts a timer that writes the summary at the window's end."""
    import time

    sink = MemorySink()
    cap = RefusalCap(sink, per_minute=2, window_s=0.5)
    time.sleep(0.5 - time.monotonic() % 0.5 + 0.01)  # the flood starts a window: it cannot straddle two
    cap.record(_denial("quiet"))  # positive control: under the cap, nothing suppressed, no summary
    for _ in range(6):
        cap.record(_denial("mallory"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        e.action == "audit.refusals-suppressed" for e in sink.events
    ):
        time.sleep(0.05)
    summaries = [e for e in sink.events if e.action == "audit.refusals-suppressed"]
    assert [(e.actor_id, e.details["suppressed"]) for e in summaries] == [("mallory", 4)]


def test_forged_event_flood_is_capped_in_the_gateways_audit(gw: GwEnv) -> None:
    mine = gw.upstream.add_run("node-a")
    gw.gateway.audit = cap = RefusalCap(gw.audit, per_minute=5)
    url, ctx, headers = _node_a_websocket(gw, "/api/events/in")
    from websockets.sync.client import connect as ws_connect

    forged = {"event": "x", "resource": {"prefect.resource.id": "prefect.flow-run.not-a-uuid"}, "related": []}
    with ws_connect(url, ssl=ctx, additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "auth", "token": "x"}))
        for _ in range(50):
            ws.send(json.dumps(forged))
        ok = {"event": "test.end", "resource": {"prefect.resource.id": f"prefect.flow-run.{mine['id']}"}}
        ws.send(json.dumps(ok))
        assert ws.recv(timeout=5) == "bye"
    cap.flush()
    dropped = [e for e in gw.audit.events if e.action == "events_in.event"]
    assert len(dropped) == 5
    [summary] = [e for e in gw.audit.events if e.action == "audit.refusals-suppressed"]
    assert summary.actor_id == "node-a" and summary.details["suppressed"] == 45
