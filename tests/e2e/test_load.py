"""Load and abuse in CI (issue 21; SPEC I, H2): ``bench load``'s run, its figures turned into checks.

200 simulated node agents (each its own certificate and source address, one mTLS connection each) register
and heartbeat every 2 s through the coordinator's production process while 50 jobs are dispatched to them by
the lifecycle's scheduler and stay in flight; then one abusive client (idle TLS connections without a
certificate, slow-loris heads, unauthenticated floods with 1 MiB bodies) attacks the same listener for 20 s.
Checked: no legitimate request failed, every job was dispatched, the abuser was throttled (429, cut off,
closed), and its refusals did not flood the audit log (a per-actor cap, the rest counted in a summary).
Latencies are figures for ``make bench`` (bench/RESULTS.md), never assertions here.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ci]


def _audit_events(audit_dir: Path) -> list[dict[str, Any]]:
    """The events of the coordinator's audit log (each line's ``event``; checkpoints are other files)."""
    events = []
    for path in sorted(audit_dir.glob("audit-*.jsonl")):
        if path.name.endswith(".checkpoints.jsonl"):
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                events.append(json.loads(line)["event"])
    return events


def test_200_agents_keep_working_while_an_abuser_is_throttled_and_not_flooding_the_audit(
    tmp_path: Path,
) -> None:
    from bench import bench_load

    result = bench_load.measure(tmp_path)
    # Positive control first: the honest side worked, all of it (I: availability under abuse).
    beats = Counter(phase for phase, _ in result["samples"])
    assert beats["quiet"] > bench_load.NODES and beats["abuse"] > bench_load.NODES, beats
    assert dict(result["failures"]) == {}, result["failures"]
    assert len(result["dispatch"]) == bench_load.JOBS
    # The abuser got nothing it could use: throttled (429), refused at the per-address connection cap,
    # cut off (slow-loris heads, idle connections without a certificate), never served.
    abuser: Counter[str] = result["abuser"]
    assert abuser["flood"] > 0, abuser
    assert not {k: v for k, v in abuser.items() if k.startswith("flood -> 2")}, abuser
    refused = sum(v for k, v in abuser.items() if k != "flood")
    assert refused >= abuser["flood"], abuser
    # Its refusals are audited, but capped per actor and minute; the rest is counted in summaries (H2).
    events = _audit_events(tmp_path / "audit")
    denied = [e for e in events if e["outcome"] != "success" and e["action"] != "audit.refusals-suppressed"]
    summaries = [e for e in events if e["action"] == "audit.refusals-suppressed"]
    # The cap's key is actor and actor type; its minutes are not the clock's, so a UTC minute overlaps two.
    per_minute = Counter((e["actor_id"], e["actor_type"], e["timestamp"][:16]) for e in denied)
    assert denied and max(per_minute.values()) <= 2 * 120, per_minute.most_common(3)
    assert summaries and all(s["details"]["suppressed"] > 0 for s in summaries), summaries
    told = sum(s["details"]["refusals"] for s in summaries)
    assert told > len(denied), (told, len(denied))  # the log says how many there were, not only the first
