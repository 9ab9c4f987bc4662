"""User side of the coordinator API: load a job spec, submit it, follow it (``cyxwiz job``, issue 9).

:mod:`cyxwiz.jobs.spec` reads and lightly checks a job file; :mod:`cyxwiz.jobs.client` talks to the
coordinator's user endpoints over TLS 1.3 with a user certificate. The coordinator does the full
validation (SPEC G) — the local check only spares a round trip for obviously broken files.
"""

from cyxwiz.jobs.client import TERMINAL_STATUSES, CoordinatorUserClient, WaitTimeoutError
from cyxwiz.jobs.spec import check_job_spec, load_job_spec

__all__ = [
    "TERMINAL_STATUSES",
    "CoordinatorUserClient",
    "WaitTimeoutError",
    "check_job_spec",
    "load_job_spec",
]
