"""A node's heartbeat, judged only over time the coordinator was up to receive it (issue 21; SPEC F1).

Nodes heartbeat to the coordinator and the lifecycle reads the beats from the coordinator's database. While
the coordinator is down (killed, restarting) no node can beat, so after ``node_lost_s`` every node holding
a job would look lost: an honest job re-dispatched, or refunded when no whole attempt fits any more. So a
beat that looks stale is checked against the coordinator itself: while it does not answer nothing is
judged, and once it answers the beat's age counts from the coordinator's start (``/v1/health``'s
``started_at``) at the earliest. A node that really died is still found ``node_lost_s`` after the
coordinator is back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

#: The coordinator's start, or None while it does not answer.
StartedAt = Callable[[], dt.datetime | None]
#: It answered but named no start (an older coordinator) or could not be asked (no trust bundle): the
#: beat is judged as it stands, as before.
UNKNOWN = dt.datetime.min.replace(tzinfo=dt.UTC)


def coordinator_started_at(url: str, *, trust_bundle: Path, timeout_s: float = 5.0) -> dt.datetime | None:
    """When the coordinator at ``url`` started; None while it is down (no connection, or 502/503/504 from
    a proxy before it); :data:`UNKNOWN` when that cannot be told."""
    import httpx

    from cyxwiz.errors import CyxwizError
    from cyxwiz.retry import TRANSIENT_STATUSES
    from cyxwiz.transport.tls import client_context

    try:
        context = client_context(trust_bundle=trust_bundle)
    except (CyxwizError, OSError):
        return UNKNOWN
    try:
        answer = httpx.get(f"{url.rstrip('/')}/v1/health", verify=context, timeout=timeout_s)
    except httpx.TransportError as exc:
        # A certificate it cannot verify is a configuration fault, not an outage: judged as before.
        return UNKNOWN if _tls_refused(exc) else None
    if answer.status_code in TRANSIENT_STATUSES:
        return None
    try:
        started = dt.datetime.fromisoformat(str(answer.json()["started_at"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return UNKNOWN
    return started if started.tzinfo is not None else UNKNOWN


def _tls_refused(exc: BaseException) -> bool:
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def judged_heartbeat(
    last: dt.datetime | None, *, now: dt.datetime, node_lost_s: float, started_at: StartedAt | None
) -> dt.datetime | None:
    """The heartbeat time to judge a node's loss by: ``last`` while it is fresh or nobody can be asked
    (``started_at`` None: no coordinator URL configured); ``now`` while the coordinator is away (no beat
    could arrive); else ``last``, or the coordinator's start when that is later."""
    if started_at is None or (last is not None and (now - last).total_seconds() <= node_lost_s):
        return last
    since = started_at()
    if since is None:
        return now
    return since if last is None or since > last else last


def probe(coordinator_url: str | None, pki_root: Path) -> StartedAt | None:
    """:func:`coordinator_started_at` for the control plane's coordinator (None when none is configured)."""
    if not coordinator_url:
        return None
    bundle = pki_root / "bundle.pem"
    return lambda: coordinator_started_at(coordinator_url, trust_bundle=bundle)


__all__ = ["UNKNOWN", "coordinator_started_at", "judged_heartbeat", "probe"]
