"""The bubblewrap backend really confines (SPEC E1, E2): uid, network, filesystem, limits, reasons."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from cyxwiz.errors import CyxwizError, LimitExceededError, ValidationError
from cyxwiz.sandbox import JobLimits, run_sandboxed
from cyxwiz.sandbox.limits import MiB
from tests.sandbox.conftest import RunPy


def test_runs_python_module_from_project_venv(run_py: RunPy) -> None:
    r = run_py(
        "import os, sys, cyxwiz.sandbox.bridge_client as b; "
        "print(os.getuid(), os.getgid(), os.getgroups(), sys.prefix)"
    )
    assert r.status == "ok", r.stderr_tail
    uid, gid, groups, prefix = r.stdout_tail.split(maxsplit=3)
    assert (uid, gid, groups) == ("65534", "65534", "[]")
    assert prefix.strip().endswith(".venv") or prefix.strip()


def test_python_dash_m_works(tmp_path: Path, bwrap_usable: None) -> None:
    r = run_sandboxed(
        argv=["python", "-m", "json.tool", "--help"], workdir=tmp_path / "j", limits=JobLimits()
    )
    assert r.status == "ok", r.stderr_tail
    assert "usage" in r.stdout_tail


def test_no_capabilities_nnp_and_seccomp(run_py: RunPy) -> None:
    r = run_py("print(open('/proc/self/status').read())")
    status = dict(line.split(":\t", 1) for line in r.stdout_tail.splitlines() if ":\t" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, cap
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # filter mode


def test_loopback_connect_refused(run_py: RunPy) -> None:
    """E1: socket() of any IP family fails with EPERM (seccomp), before a packet could leave."""
    r = run_py(
        "import socket, errno\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 22), timeout=2)\n"
        "except OSError as e:\n"
        "    print('errno', e.errno)\n"
    )
    assert r.stdout_tail.strip() == "errno 1"


def test_output_is_writable_and_comes_back(run_py: RunPy) -> None:
    r = run_py("open('/output/result.txt', 'w').write('hello')")
    assert r.status == "ok"
    assert (r.output_dir / "result.txt").read_text() == "hello"
    assert r.output_bytes == 5


def test_wall_time_kills_whole_tree(run_py: RunPy) -> None:
    marker = f"{secrets.randbelow(10**6) + 1000}.{secrets.randbelow(1000)}"  # unique: other suites sleep too
    r = run_py(
        "import subprocess, time\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "time.sleep(300)\n",
        limits=JobLimits(wall_seconds=1),
    )
    assert r.status == "timeout"
    assert "wall_time" in r.limits_hit
    assert r.wall_seconds < 15
    # nothing of the job survives: its detached grandchild is gone too
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert cmd != f"sleep\x00{marker}\x00".encode()


def test_memory_bomb_reports_oom(run_py: RunPy) -> None:
    r = run_py(
        "x = []\nwhile True: x.append(bytearray(32 * 1024 * 1024))", limits=JobLimits(memory_bytes=160 * MiB)
    )
    assert r.status == "oom", (r.status, r.reason, r.enforcement)
    assert "memory" in r.limits_hit


def test_nonzero_exit_and_signal(run_py: RunPy) -> None:
    assert run_py("raise SystemExit(7)").status == "exit_nonzero"
    r = run_py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert (r.status, r.signal) == ("signal", 11)


def test_env_reaches_job_but_host_env_does_not(run_py: RunPy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    r = run_py("import os; print(sorted(os.environ))", env={"SEED": "42"})
    names = r.stdout_tail
    assert "SEED" in names and "CYXWIZ_BRIDGE" in names
    assert "AWS_SECRET_ACCESS_KEY" not in names


@pytest.mark.parametrize("argv", [[], "python -c pass", ["A=B", "x"], ["-x"], ["python", "a\x00b"]], ids=str)
def test_bad_argv_refused_before_anything_is_created(tmp_path: Path, argv: object) -> None:
    with pytest.raises(ValidationError) as err:
        run_sandboxed(argv=argv, workdir=tmp_path / "j", limits=JobLimits())  # type: ignore[arg-type]
    assert err.value.field == "argv"
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize("key", ["LD_PRELOAD=x", "1BAD", "CYXWIZ_BRIDGE", "HOME"])
def test_bad_env_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValidationError) as err:
        run_sandboxed(argv=["true"], workdir=tmp_path / "j", limits=JobLimits(), env={key: "v"})
    assert err.value.field == "env"


def test_workdir_must_be_fresh(tmp_path: Path, bwrap_usable: None) -> None:
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "leftover").write_text("other job")
    with pytest.raises(ValidationError) as err:
        run_sandboxed(argv=["true"], workdir=tmp_path / "j", limits=JobLimits())
    assert err.value.rule == "E7"


def test_workdir_is_private(run_py: RunPy) -> None:
    r = run_py("pass")
    root = r.output_dir.parent
    assert root.stat().st_mode & 0o777 == 0o700
    assert r.output_dir.stat().st_mode & 0o777 == 0o700


def test_collect_outputs_hashes_trusted_output(run_py: RunPy) -> None:
    from cyxwiz.sandbox.outputs import collect_outputs

    r = run_py("import os; os.makedirs('/output/d'); open('/output/d/m.bin', 'wb').write(b'abc')")
    files = collect_outputs(r, max_bytes=1024)
    assert [(f.path, f.size) for f in files] == [("d/m.bin", 3)]
    assert files[0].sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("import os; os.symlink('/etc/shadow', '/output/loot')", "PathRuleError"),
        ("import os; os.mkfifo('/output/pipe')", "PathRuleError"),
        ("open('/output/big', 'wb').write(b'x' * 2048)", "LimitExceededError"),
    ],
    ids=["symlink", "fifo", "oversize"],
)
def test_collect_outputs_refuses_planted_entries(run_py: RunPy, code: str, error: str) -> None:
    from cyxwiz.sandbox.outputs import collect_outputs

    r = run_py(code)
    assert r.status == "ok", r.stderr_tail
    with pytest.raises(CyxwizError) as err:
        collect_outputs(r, max_bytes=1024)
    assert type(err.value).__name__ == error


def test_collect_outputs_refuses_failed_run(run_py: RunPy) -> None:
    from cyxwiz.sandbox.outputs import collect_outputs

    r = run_py("open('/output/partial', 'w').write('x'); raise SystemExit(1)")
    with pytest.raises(LimitExceededError, match="not trusted"):
        collect_outputs(r, max_bytes=1024)
