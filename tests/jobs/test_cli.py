"""``cyxwiz job`` against a real coordinator over TLS 1.3 (issue 9; SPEC C1, C2, D1, G1, F3).

Attack tests assert the precise refusal: the exit code, the one ``error:`` line, that nothing was created,
and (for authorization) the coordinator's audit record.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.pki.devpki import build_dev_pki
from tests.jobs.conftest import JobsEnv

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "job.yaml"


def one_error_line(result: Any) -> str:
    """The refusal is exactly one ``error:`` line and no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return str(errors[0])


def job_count(env: JobsEnv, user: str = "demo-user") -> int:
    return len(env.coord.store.list_jobs(user_id=user))


def submit(env: JobsEnv, path: Path = EXAMPLE, *, who: str = "user") -> str:
    result = env.cli("submit", str(path), "--json", who=who)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.output)["job_id"])


def drive_node(env: JobsEnv, job_id: str, *, steps: int = 3, delay: float = 0.05) -> None:
    """The assigned node's side over mTLS: register, fetch the job token, report progress, complete."""
    with env.node_client("node-a") as node:
        reg = node.post("/v1/nodes/register", json={"hardware": {"gpus": 1, "cpu_cores": 4}}).json()
        # The coordinator has no dispatch endpoint of its own (the Prefect layer assigns); the store does it.
        env.coord.store.assign_job(job_id, reg["node_id"])
        got = node.get(
            f"/v1/jobs/{job_id}/token", headers={"authorization": f"Bearer {reg['session_token']}"}
        )
        job_auth = {"authorization": f"Bearer {got.json()['job_token']}"}
        for step in range(1, steps + 1):
            time.sleep(delay)
            body = {"step": step, "total": steps, "metrics": {"loss": 1.0 / step}}
            assert node.post(f"/v1/jobs/{job_id}/progress", json=body, headers=job_auth).status_code == 200
        done = node.post(f"/v1/jobs/{job_id}/completion", json={"proof": {"ok": True}}, headers=job_auth)
        assert done.json()["status"] == "completed", done.text


# --- the happy path -----------------------------------------------------------------------------------


def test_submit_then_list_then_get(jobs_env: JobsEnv) -> None:
    result = jobs_env.cli("submit", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("submitted job-")
    job_id = result.output.split()[1]

    listed = jobs_env.cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert job_id in [j["job_id"] for j in json.loads(listed.output)]
    table = jobs_env.cli("list")
    assert job_id in table.output and "submitted" in table.output

    got = jobs_env.cli("get", job_id, "--json")
    assert got.exit_code == 0, got.output
    job = json.loads(got.output)
    # The owner is the certificate's subject, whatever the file's `user` says (C2).
    assert (job["status"], job["user_id"], job["spec"]["payment"]) == ("submitted", "demo-user", 5_000_000)
    human = jobs_env.cli("get", job_id)
    assert f"job       {job_id}" in human.output and "status    submitted" in human.output


def test_json_spec_file_is_accepted(jobs_env: JobsEnv, tmp_path: Path) -> None:
    import yaml

    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(yaml.safe_load(EXAMPLE.read_text())))
    job_id = submit(jobs_env, spec)
    assert jobs_env.coord.store.job(job_id).spec["model"]["input_shape"] == [64]


def test_wait_follows_progress_until_completed(jobs_env: JobsEnv) -> None:
    job_id = submit(jobs_env)
    node = threading.Thread(target=drive_node, args=(jobs_env, job_id))
    node.start()
    try:
        result = jobs_env.cli("wait", job_id, "--timeout", "30", "--interval", "0.05")
    finally:
        node.join()
    assert result.exit_code == 0, result.output
    assert f"{job_id}: completed" in result.output
    final = json.loads(jobs_env.cli("get", job_id, "--json").output)
    assert final["progress"] == {"step": 3, "total": 3, "metrics": {"loss": pytest.approx(1 / 3)}}


def test_submit_wait_exits_1_when_the_job_ends_badly(jobs_env: JobsEnv) -> None:
    before = {j.job_id for j in jobs_env.coord.store.list_jobs()}

    def refund_new_job() -> None:
        for _ in range(200):
            new = [j for j in jobs_env.coord.store.list_jobs() if j.job_id not in before]
            if new:
                jobs_env.coord.store.update_job(new[0].job_id, status="refunded")
                return
            time.sleep(0.02)

    worker = threading.Thread(target=refund_new_job)
    worker.start()
    result = jobs_env.cli("submit", str(EXAMPLE), "--wait", "--json", "--timeout", "30", "--interval", "0.05")
    worker.join()
    assert result.exit_code == 1, result.output
    assert '"status": "refunded"' in result.output


def test_wait_timeout_exits_124_and_leaves_the_job(jobs_env: JobsEnv) -> None:
    job_id = submit(jobs_env)
    result = jobs_env.cli("wait", job_id, "--timeout", "0.3", "--interval", "0.1")
    assert result.exit_code == 124, result.output
    assert "still submitted after 0.3 s" in one_error_line(result)
    assert jobs_env.coord.store.job(job_id).status == "submitted"


def test_wallet(jobs_env: JobsEnv) -> None:
    result = jobs_env.cli("wallet", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["user_id"] == "demo-user"
    human = jobs_env.cli("wallet")
    assert "user_id" in human.output and "escrows" in human.output


@pytest.mark.parametrize("command", ["submit", "list", "get", "wait", "wallet", "dispute"])
def test_every_command_has_help_with_an_example(jobs_env: JobsEnv, command: str) -> None:
    result = jobs_env.cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "cyxwiz job" in result.output


# --- bad specs: one line, exit 2, nothing created (G1, F3) ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("no-payment.yaml", "job_type: model\nmodel: {}\n", "payment: is required"),
        ("bad-payment.yaml", "payment: -5\njob_type: model\n", "payment: must be a positive integer"),
        (
            "bool-payment.json",
            '{"payment": true, "job_type": "model"}',
            "payment: must be a positive integer",
        ),
        ("no-type.yaml", "payment: 10\n", "job_type: job_type or model is required"),
        ("list.yaml", "- payment: 10\n", "spec: a job spec is a mapping"),
        ("broken.yaml", "payment: [1, 2\njob_type: model\n", "not valid YAML (line 2"),
        ("broken.json", '{"payment": 1,}', "not valid JSON (line 1"),
        ("date.yaml", "payment: 10\njob_type: model\nstart: 2024-01-01\n", "holds a value JSON cannot carry"),
        ("python.yaml", "payment: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_bad_spec_is_refused_locally(
    jobs_env: JobsEnv, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    before = job_count(jobs_env)
    spec = tmp_path / name
    spec.write_text(text)
    result = jobs_env.cli("submit", str(spec))
    assert result.exit_code == 2, result.output
    assert expected in one_error_line(result)
    assert job_count(jobs_env) == before


def test_missing_file_is_refused(jobs_env: JobsEnv, tmp_path: Path) -> None:
    result = jobs_env.cli("submit", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "job file not found" in one_error_line(result)


def test_spec_the_coordinator_refuses_prints_its_problem_and_creates_nothing(
    jobs_env: JobsEnv, tmp_path: Path
) -> None:
    before = job_count(jobs_env)
    spec = tmp_path / "job.yaml"
    spec.write_text("payment: 10\njob_type: model\nlimits: {wall_time_s: 0}\n")
    result = jobs_env.cli("submit", str(spec))
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "spec.limits.wall_time_s: coordinator refused (422 validation): must be an integer" in line
    assert "[rule E2]" in line
    assert job_count(jobs_env) == before


# --- authentication and authorization (C1, C2, D1) -------------------------------------------------------


def test_no_user_certificate_is_refused_before_any_request(jobs_env: JobsEnv) -> None:
    before = len(jobs_env.coord.store.list_jobs())
    result = jobs_env.cli("submit", str(EXAMPLE), who="nobody")
    assert result.exit_code == 3, result.output
    line = one_error_line(result)
    assert "no user certificate" in line and "CYXWIZ_USER_CERT" in line
    assert len(jobs_env.coord.store.list_jobs()) == before


def test_another_users_job_is_refused(jobs_env: JobsEnv) -> None:
    job_id = submit(jobs_env)
    result = jobs_env.cli("get", job_id, who="other")
    assert result.exit_code == 3, result.output
    assert "coordinator refused (403 forbidden): job belongs to someone else [rule C2]" in one_error_line(
        result
    )
    listed = jobs_env.cli("list", "--json", who="other")
    assert job_id not in [j["job_id"] for j in json.loads(listed.output)]
    denied = [
        e
        for e in jobs_env.audit.events
        if e.resource == f"job:{job_id}" and e.action == "job.read" and e.outcome.value != "success"
    ]
    assert denied and denied[-1].actor_id == "other-user"
    # ...and the other user's own submission is theirs alone.
    own = submit(jobs_env, who="other")
    assert jobs_env.coord.store.job(own).user_id == "other-user"
    assert jobs_env.cli("get", own, who="user").exit_code == 3


def test_node_certificate_cannot_act_as_a_user(jobs_env: JobsEnv) -> None:
    before = len(jobs_env.coord.store.list_jobs())
    for args in (("submit", str(EXAMPLE)), ("list",), ("wallet",)):
        result = jobs_env.cli(*args, who="node-a")
        assert result.exit_code == 3, result.output
        assert "certificate role 'worker' cannot log in as a user" in one_error_line(result)
    assert len(jobs_env.coord.store.list_jobs()) == before


def test_unknown_job_is_not_found(jobs_env: JobsEnv) -> None:
    result = jobs_env.cli("get", "job-" + "0" * 20)  # canonical form, no such job
    assert result.exit_code == 4
    assert "404" in one_error_line(result)
    # A malformed id names nothing: refused before any lookup (issue 18, fail closed on identifiers).
    assert jobs_env.cli("get", "job-doesnotexist").exit_code == 2


def test_coordinator_from_another_ca_is_refused(jobs_env: JobsEnv, tmp_path: Path) -> None:
    stranger = build_dev_pki(tmp_path / "other-pki", nodes=())
    env = {**jobs_env.cli_env(), "CYXWIZ_CA_BUNDLE": str(stranger.bundle), "CYXWIZ_CRL": None}
    from typer.testing import CliRunner

    from cyxwiz.cli import app

    result = CliRunner().invoke(app, ["job", "list"], env=env)
    assert result.exit_code == 2, result.output
    assert "coordinator's certificate failed verification" in one_error_line(result)


def test_plain_http_and_unreachable_coordinators_are_refused(jobs_env: JobsEnv) -> None:
    plain = jobs_env.coord.url.replace("https://", "http://")
    result = jobs_env.cli("list", "--coordinator", plain)
    assert result.exit_code == 2
    assert "must be https://" in one_error_line(result)
    result = jobs_env.cli("list", "--coordinator", "https://127.0.0.1:9")
    assert result.exit_code == 2
    assert "cannot reach the coordinator" in one_error_line(result)


def test_dispute_inside_the_window_and_the_refusals(jobs_env: JobsEnv) -> None:
    """Issue 20 (F1, C2): ``cyxwiz job dispute`` while the release is held; one error line otherwise."""
    import datetime as dt

    from cyxwiz.coordinator.holds import HoldBook

    job_id = submit(jobs_env)
    book = HoldBook(jobs_env.coord.store.engine)
    book.hold(
        job_id=job_id, user_id="demo-user", node_wallet="W", attestation="{}",
        closes_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    )  # fmt: skip
    testset = jobs_env.cli("dispute", job_id, "--testset-sha256", "a" * 64)  # no such evidence (F1)
    assert testset.exit_code != 0 and "--testset-sha256" in testset.output
    other = jobs_env.cli("dispute", job_id, "--segment", "3", who="other")
    assert other.exit_code == 3 and "403" in one_error_line(other)
    assert book.get(job_id).state == "held", "no refused call changed the hold"
    ok = jobs_env.cli("dispute", job_id, "--segment", "3", "--reason", "does not reproduce")
    assert ok.exit_code == 0, ok.output
    assert f"{job_id}: disputed" in ok.output
    again = jobs_env.cli("dispute", job_id, "--segment", "3")
    assert again.exit_code != 0 and "already disputed" in one_error_line(again)
