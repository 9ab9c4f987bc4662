"""Sandboxed execution of untrusted training code and the job bridge (SPEC E1–E7).

Public API: :func:`run_sandboxed`, :class:`JobLimits`, :class:`SandboxPolicy`, :class:`SandboxResult`.
The in-sandbox client is :mod:`cyxwiz.sandbox.bridge_client` (stdlib only). Backends load lazily so that
importing the client inside a sandbox stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cyxwiz.sandbox.limits import JobLimits
from cyxwiz.sandbox.result import SandboxResult

if TYPE_CHECKING:
    from cyxwiz.sandbox.api import get_backend, run_sandboxed
    from cyxwiz.sandbox.policy import SandboxPolicy

__all__ = ["JobLimits", "SandboxPolicy", "SandboxResult", "get_backend", "run_sandboxed"]


def __getattr__(name: str) -> Any:
    if name in ("run_sandboxed", "get_backend"):
        from cyxwiz.sandbox import api

        return getattr(api, name)
    if name == "SandboxPolicy":
        from cyxwiz.sandbox.policy import SandboxPolicy

        return SandboxPolicy
    raise AttributeError(name)
