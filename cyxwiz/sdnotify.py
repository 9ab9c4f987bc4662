"""Tell systemd a service is ready (``Type=notify``): ``READY=1`` on ``$NOTIFY_SOCKET``.

The issuer, verifier and ledger services bind their socket before they serve; a unit ordered after one
of them (the coordinator after the issuer, the control worker after the verifier and the ledger) must not
start while that socket does not exist yet, or its first connection fails and systemd restarts it. With
``Type=simple`` systemd counts a service as started when its process exists; with ``Type=notify`` only
when the service says so, after ``listen()``. Outside systemd (no ``NOTIFY_SOCKET``) this does nothing.

The protocol is one datagram on a Unix socket (sd_notify(3)); a name starting with ``@`` is in the
abstract namespace. A failure to notify is not a reason to stop serving: systemd then times the start out
(``TimeoutStartSec``) and says so in its own log.
"""

from __future__ import annotations

import os
import socket
import sys

__all__ = ["notify_ready"]


def notify_ready(status: str | None = None) -> bool:
    """Send ``READY=1`` (and ``STATUS=``) to systemd; whether a notification was sent."""
    # Unset as sd_notify(unset_environment=1) does: a process this service starts later is not the
    # service and must not speak for it.
    address = os.environ.pop("NOTIFY_SOCKET", None)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "READY=1" + (f"\nSTATUS={status}" if status else "")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        print(f"sd_notify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    return True
