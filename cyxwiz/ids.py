"""The ids the control plane mints: one canonical form each, and one generator each.

The coordinator refuses any id that is not in its canonical form before a lookup or a decision (C3), so
every place that mints a job id (the coordinator, the user's client funding its own escrow, the
lifecycle run from Python) must mint the same form: this module is the only one that does.
"""

from __future__ import annotations

import re
import secrets

#: ``job-`` and 80 random bits: nobody can guess or squat the id of a job funded under it.
JOB_ID = re.compile(r"job-[0-9a-f]{20}")
#: ``node-`` and 64 bits of the node's registration.
NODE_ID = re.compile(r"node-[0-9a-f]{16}")


def new_job_id() -> str:
    return f"job-{secrets.token_hex(10)}"


def new_node_id() -> str:
    return f"node-{secrets.token_hex(8)}"
