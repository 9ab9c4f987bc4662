"""``cyxwiz.jobs.client`` and ``cyxwiz.jobs.spec`` as a library (SPEC C1, D1, A6, G1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyxwiz.errors import AuthenticationError, ConfigError, ValidationError
from cyxwiz.jobs import CoordinatorUserClient, check_job_spec, load_job_spec
from tests.jobs.conftest import JobsEnv, issue_user
from tests.jobs.test_cli import EXAMPLE, one_error_line


def env_of(jobs_env: JobsEnv) -> dict[str, str]:
    return {k: v for k, v in jobs_env.cli_env().items() if v is not None}


def test_example_is_the_reference_job() -> None:
    from infra.demo import REFERENCE_JOB

    assert load_job_spec(EXAMPLE) == REFERENCE_JOB


def test_check_job_spec_returns_json_ready_copy() -> None:
    spec = {"payment": 1, "model": {"layers": []}}
    out = check_job_spec(spec)
    assert out == spec and out is not spec
    with pytest.raises(ValidationError) as info:
        check_job_spec({"payment": 1, "job_type": "model", "limits": [1]})
    assert (info.value.field, info.value.rule) == ("limits", "G1")


def test_from_env_explicit_options_win(jobs_env: JobsEnv, tmp_path: Path) -> None:
    env = {**env_of(jobs_env), "CYXWIZ_COORDINATOR_URL": "https://127.0.0.1:9"}
    with CoordinatorUserClient.from_options(url=jobs_env.coord.url, env=env) as client:
        assert client.url == jobs_env.coord.url
        assert client.wallet()["user_id"] == "demo-user"
    with CoordinatorUserClient.from_env(env_of(jobs_env)) as client:
        assert client.list_jobs() is not None


@pytest.mark.parametrize(
    ("drop", "error", "field"),
    [
        ("CYXWIZ_COORDINATOR_URL", ConfigError, "CYXWIZ_COORDINATOR_URL"),
        ("CYXWIZ_CA_BUNDLE", ConfigError, "CYXWIZ_CA_BUNDLE"),
        ("CYXWIZ_USER_KEY", AuthenticationError, "certificate"),
    ],
)
def test_missing_configuration_names_the_variable(
    jobs_env: JobsEnv, drop: str, error: type[Exception], field: str
) -> None:
    env = env_of(jobs_env)
    del env[drop]
    with pytest.raises(error) as info:
        CoordinatorUserClient.from_env(env)
    assert info.value.field == field  # type: ignore[attr-defined]


def test_missing_files_are_config_errors(jobs_env: JobsEnv, tmp_path: Path) -> None:
    env = {**env_of(jobs_env), "CYXWIZ_USER_CERT": str(tmp_path / "gone.pem")}
    with pytest.raises(ConfigError) as info:
        CoordinatorUserClient.from_env(env)
    assert (info.value.field, info.value.path) == ("CYXWIZ_USER_CERT", str(tmp_path / "gone.pem"))


def test_an_expired_or_revoked_session_logs_in_again_once(jobs_env: JobsEnv) -> None:
    with CoordinatorUserClient.from_env(env_of(jobs_env)) as client:
        client._token = "not-a-token"  # what a stale session looks like to the server: 401
        assert client.wallet()["user_id"] == "demo-user"
        assert client._token != "not-a-token"


def test_revoked_user_certificate_is_refused_at_the_handshake(jobs_env: JobsEnv) -> None:
    """A6: once the CRL names the user's certificate, the coordinator refuses the TLS handshake."""
    cert, key = issue_user(jobs_env.pki, "revoked-user")
    env = {"CYXWIZ_USER_CERT": str(cert), "CYXWIZ_USER_KEY": str(key)}
    with CoordinatorUserClient.from_env({**env_of(jobs_env), **env}) as client:
        assert client.login()
    before = len(jobs_env.coord.store.list_jobs())
    jobs_env.pki.revoke(cert)
    jobs_env.coord.tls.apply_crl(jobs_env.pki.crl.read_bytes())

    from typer.testing import CliRunner

    from cyxwiz.cli import app

    result = CliRunner().invoke(app, ["job", "submit", str(EXAMPLE)], env={**jobs_env.cli_env(), **env})
    assert result.exit_code == 3, result.output
    assert "refused the user certificate" in one_error_line(result)
    assert len(jobs_env.coord.store.list_jobs()) == before
    refused = [e for e in jobs_env.audit.of_action("certificate.verify") if e.outcome.value == "denied"]
    assert refused and refused[-1].details["reason"] == "certificate revoked"
