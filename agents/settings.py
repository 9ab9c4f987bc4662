"""Node agent settings, from environment variables (``CYXWIZ_*``) so systemd units and containers set them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cyxwiz.errors import ConfigError

_BACKENDS = ("bubblewrap", "docker", "gvisor")


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    node_name: str = "node-1"
    cert: Path | None = None
    key: Path | None = None
    ca_bundle: Path | None = None
    crl: Path | None = None
    coordinator_url: str | None = None
    gateway_url: str | None = None
    work_root: Path = field(default_factory=lambda: Path.home() / ".cyxwiz" / "agent")
    default_backend: str = "bubblewrap"
    allowed_backends: tuple[str, ...] = ("bubblewrap",)
    max_memory_mb: int = 8192
    max_wall_seconds: int = 3600
    #: Public key (base58) of the wallet this node is paid into, registered under its PeerID (F1).
    payout_wallet: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = env.get(name)
            return Path(value) if value else None

        def integer(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"must be an integer, got {raw!r}", field=name) from None
            if value <= 0:
                raise ConfigError("must be positive", field=name)
            return value

        allowed = tuple(
            b.strip() for b in env.get("CYXWIZ_ALLOWED_BACKENDS", "bubblewrap").split(",") if b.strip()
        )
        default_backend = env.get("CYXWIZ_SANDBOX_BACKEND", allowed[0] if allowed else "bubblewrap")
        for backend in (*allowed, default_backend):
            if backend not in _BACKENDS:
                raise ConfigError(f"unknown sandbox backend {backend!r}", field="CYXWIZ_SANDBOX_BACKEND")
        if default_backend not in allowed:
            raise ConfigError(
                f"default backend {default_backend!r} is not in CYXWIZ_ALLOWED_BACKENDS",
                field="CYXWIZ_SANDBOX_BACKEND",
            )
        return cls(
            node_name=env.get("CYXWIZ_NODE_NAME", "node-1"),
            cert=path("CYXWIZ_NODE_CERT"),
            key=path("CYXWIZ_NODE_KEY"),
            ca_bundle=path("CYXWIZ_CA_BUNDLE"),
            crl=path("CYXWIZ_CRL"),
            coordinator_url=env.get("CYXWIZ_COORDINATOR_URL") or None,
            gateway_url=env.get("CYXWIZ_GATEWAY_URL") or None,
            work_root=path("CYXWIZ_WORK_ROOT") or Path.home() / ".cyxwiz" / "agent",
            default_backend=default_backend,
            allowed_backends=allowed,
            max_memory_mb=integer("CYXWIZ_SANDBOX_MAX_MEMORY_MB", 8192),
            max_wall_seconds=integer("CYXWIZ_SANDBOX_MAX_WALL_SECONDS", 3600),
            payout_wallet=env.get("CYXWIZ_NODE_WALLET") or None,
        )

    def node_env(self) -> dict[str, str]:
        """What the flow run needs to act as this node (paths only; the key never leaves its 0600 file)."""
        env = {"CYXWIZ_NODE_NAME": self.node_name, "CYXWIZ_WORK_ROOT": str(self.work_root)}
        for name, value in (
            ("CYXWIZ_NODE_CERT", self.cert),
            ("CYXWIZ_NODE_KEY", self.key),
            ("CYXWIZ_CA_BUNDLE", self.ca_bundle),
            ("CYXWIZ_CRL", self.crl),
            ("CYXWIZ_COORDINATOR_URL", self.coordinator_url),
        ):
            if value is not None:
                env[name] = str(value)
        return env

    def policy_env(
        self, *, backend: str | None, memory_mb: int | None, wall_seconds: int | None
    ) -> dict[str, str]:
        """The sandbox policy for one run: a request may narrow the node's limits, never widen them."""
        chosen = backend or self.default_backend
        if chosen not in self.allowed_backends:
            allowed = ", ".join(self.allowed_backends)
            raise ConfigError(
                f"backend {chosen!r} is not allowed on this node (allowed: {allowed})",
                field="sandbox_backend",
                rule="E1",
            )
        return {
            "CYXWIZ_SANDBOX_BACKEND": chosen,
            "CYXWIZ_SANDBOX_MEMORY_MB": str(min(memory_mb or self.max_memory_mb, self.max_memory_mb)),
            "CYXWIZ_SANDBOX_WALL_SECONDS": str(
                min(wall_seconds or self.max_wall_seconds, self.max_wall_seconds)
            ),
        }
