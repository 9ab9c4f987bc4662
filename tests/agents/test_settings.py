"""Node policy: a run may narrow the node's sandbox limits but never widen them (SPEC E1–E3)."""

from __future__ import annotations

import pytest

from agents.settings import AgentSettings
from cyxwiz.errors import ConfigError


def test_from_env_reads_paths_and_limits() -> None:
    settings = AgentSettings.from_env(
        {
            "CYXWIZ_NODE_NAME": "node-7",
            "CYXWIZ_NODE_CERT": "/n/cert.pem",
            "CYXWIZ_ALLOWED_BACKENDS": "bubblewrap,gvisor",
            "CYXWIZ_SANDBOX_MAX_MEMORY_MB": "1024",
        }
    )
    assert settings.node_name == "node-7"
    assert str(settings.cert) == "/n/cert.pem"
    assert settings.allowed_backends == ("bubblewrap", "gvisor")
    assert settings.node_env()["CYXWIZ_NODE_CERT"] == "/n/cert.pem"


def test_request_narrows_but_never_widens() -> None:
    settings = AgentSettings.from_env({"CYXWIZ_SANDBOX_MAX_MEMORY_MB": "1024"})
    assert (
        settings.policy_env(backend=None, memory_mb=512, wall_seconds=None)["CYXWIZ_SANDBOX_MEMORY_MB"]
        == "512"
    )
    widened = settings.policy_env(backend=None, memory_mb=10**6, wall_seconds=10**9)
    assert widened["CYXWIZ_SANDBOX_MEMORY_MB"] == "1024"
    assert widened["CYXWIZ_SANDBOX_WALL_SECONDS"] == "3600"


def test_backend_outside_node_policy_is_refused() -> None:
    settings = AgentSettings.from_env({"CYXWIZ_ALLOWED_BACKENDS": "gvisor"})
    with pytest.raises(ConfigError, match="not allowed on this node") as info:
        settings.policy_env(backend="bubblewrap", memory_mb=None, wall_seconds=None)
    assert info.value.field == "sandbox_backend"


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"CYXWIZ_SANDBOX_MAX_MEMORY_MB": "lots"}, "CYXWIZ_SANDBOX_MAX_MEMORY_MB"),
        ({"CYXWIZ_SANDBOX_MAX_WALL_SECONDS": "-5"}, "CYXWIZ_SANDBOX_MAX_WALL_SECONDS"),
        ({"CYXWIZ_ALLOWED_BACKENDS": "chroot"}, "CYXWIZ_SANDBOX_BACKEND"),
        ({"CYXWIZ_ALLOWED_BACKENDS": "gvisor", "CYXWIZ_SANDBOX_BACKEND": "docker"}, "CYXWIZ_SANDBOX_BACKEND"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentSettings.from_env(env)
    assert info.value.field == field
