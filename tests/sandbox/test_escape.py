"""Red team: escape attempts from inside the sandbox, on every backend this host runs (SPEC E1–E7).

Each attack runs as the job would and the test asserts *how* it failed.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from cyxwiz.sandbox import JobLimits
from cyxwiz.sandbox.limits import MiB
from tests.sandbox.conftest import RunPy

pytestmark = pytest.mark.slow

TRY = """
import errno, os, sys
def attempt(label, fn):
    try:
        fn()
        print(label, "SUCCEEDED")
    except OSError as e:
        name = type(e).__name__
        print(label, name if name == "gaierror" else errno.errorcode.get(e.errno, e.errno))
    except Exception as e:
        print(label, type(e).__name__)
"""


def _outcomes(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


def test_network_loopback_outside_and_dns(run_any: RunPy, backend: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept())
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        r = run_any(
            TRY
            + "import socket\n"
            + f"attempt('loopback', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=3))\n"
            + "attempt('outside', lambda: socket.create_connection(('1.1.1.1', 53), timeout=3))\n"
            + "attempt('dns', lambda: socket.getaddrinfo('example.com', 80))\n"
            + "attempt('raw', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))\n"
            + "attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))\n"
        )
    finally:
        listener.close()
    out = _outcomes(r.stdout_tail)
    assert accepted == []
    if backend == "gvisor":
        # gVisor's netstack with --network=none: only its own loopback exists.
        assert out["loopback"] in ("ECONNREFUSED", "EPERM")
        assert out["outside"] in ("ENETUNREACH", "EPERM", "EHOSTUNREACH")
        assert out["dns"] == "gaierror"
    else:
        # seccomp refuses every non-AF_UNIX socket before the empty netns would.
        assert out["loopback"] == "EPERM"
        assert out["outside"] == "EPERM"
        assert out["dns"] == "gaierror"
        assert out["raw"] == "EPERM"
        assert out["netlink"] == "EPERM"


def test_filesystem_writes_outside_output_fail(run_any: RunPy, tmp_path: Path) -> None:
    host_home = os.environ.get("HOME", "/root")
    r = run_any(
        TRY
        + "for i, d in enumerate(['/', '/etc', '/usr', '/usr/lib', os.environ['HOME'], "
        + f"{host_home!r}, {str(tmp_path)!r}, sys.prefix]):\n"
        + "    attempt(f'w{i}', lambda: open(os.path.join(d, 'pwned'), 'w'))\n"
        + "attempt('tmp', lambda: open('/tmp/ok', 'w').write('x'))\n"
        + "attempt('output', lambda: open('/output/ok', 'w').write('x'))\n"
    )
    out = _outcomes(r.stdout_tail)
    for i in range(8):
        assert out[f"w{i}"] in ("EROFS", "EACCES", "ENOENT", "EPERM"), (i, out)
    assert out["tmp"] == "SUCCEEDED"
    assert out["output"] == "SUCCEEDED"
    assert not (tmp_path / "pwned").exists()


def test_host_secret_and_other_job_invisible(run_any: RunPy, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("s3cr3t")
    first = run_any("open('/output/model.bin', 'w').write('job A weights')")
    assert first.status == "ok"
    other = first.output_dir
    r = run_any(
        TRY
        + f"attempt('secret', lambda: open({str(secret)!r}).read())\n"
        + "attempt('shadow', lambda: open('/etc/shadow').read())\n"
        + f"attempt('read_other', lambda: open({str(other / 'model.bin')!r}).read())\n"
        + f"attempt('write_other', lambda: open({str(other / 'evil')!r}, 'w'))\n"
        + f"attempt('proc1root', lambda: open('/proc/1/root' + {str(secret)!r}).read())\n"
        + "attempt('proc1root_shadow', lambda: open('/proc/1/root/etc/shadow').read())\n"
    )
    out = _outcomes(r.stdout_tail)
    for key in ("secret", "shadow", "read_other", "write_other", "proc1root", "proc1root_shadow"):
        assert out[key] in ("ENOENT", "EACCES", "EPERM"), (key, out)
    assert "s3cr3t" not in r.stdout_tail
    assert not (other / "evil").exists()


def test_ptrace_mount_unshare_setuid(run_any: RunPy, backend: str) -> None:
    r = run_any(
        TRY
        + "import ctypes, subprocess\n"
        + "libc = ctypes.CDLL(None, use_errno=True)\n"
        + "def errcheck(rc):\n"
        + "    if rc != 0:\n"
        + "        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))\n"
        + "attempt('ptrace_parent', lambda: errcheck(libc.ptrace(16, os.getppid(), 0, 0)))\n"
        + "attempt('mount', lambda: errcheck(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)))\n"
        + "attempt('unshare_user', lambda: errcheck(libc.unshare(0x10000000)))\n"
        + "p = subprocess.run(['unshare', '-U', 'true'], capture_output=True)\n"
        + "print('unshare_cmd', p.returncode)\n"
        + "p = subprocess.run(['mount', '-t', 'tmpfs', 'none', '/output'], capture_output=True)\n"
        + "print('setuid_mount', p.returncode)\n"
        + "print('euid', os.geteuid())\n"
    )
    out = _outcomes(r.stdout_tail)
    assert out["ptrace_parent"] in ("EPERM", "ESRCH"), out
    assert out["mount"] == "EPERM"
    assert out["unshare_user"] in ("EPERM", "EINVAL")
    assert out["unshare_cmd"] != "0"
    assert out["setuid_mount"] != "0"  # the setuid-root mount binary gains nothing (no-new-privs)
    assert out["euid"] == "65534"
    assert os.stat("/usr/bin/mount").st_mode & 0o4000  # the binary really is setuid on the host


def test_fork_bomb_hits_pids_limit(run_any: RunPy, backend: str) -> None:
    r = run_any(
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('fork refused after', n, e.errno); raise SystemExit(3)\n",
        limits=JobLimits(pids=40, wall_seconds=60),
    )
    assert not r.output_trusted
    if backend == "gvisor":
        # The host pids limit covers gVisor's own threads too: the whole sandbox fails, the host is fine.
        assert r.status in ("exit_nonzero", "signal"), (r.status, r.reason)
        return
    assert r.status == "exit_nonzero"
    assert "fork refused after" in r.stdout_tail
    assert int(r.stdout_tail.split()[3]) < 40
    if backend == "bubblewrap":
        assert "pids" in r.limits_hit


def test_memory_bomb_reports_oom(run_any: RunPy) -> None:
    r = run_any(
        "x = []\nwhile True: x.append(bytearray(32 * 1024 * 1024))",
        limits=JobLimits(memory_bytes=192 * MiB, wall_seconds=60),
    )
    assert r.status == "oom", (r.status, r.reason, r.stderr_tail[-300:])
    assert "memory" in r.limits_hit


def test_busy_loop_times_out(run_any: RunPy) -> None:
    r = run_any("while True: pass", limits=JobLimits(wall_seconds=1.5))
    assert r.status == "timeout"
    assert r.wall_seconds < 20
    assert not r.output_trusted


def test_output_flood(run_any: RunPy) -> None:
    r = run_any(
        "i = 0\nwhile True:\n    open(f'/output/f{i}', 'wb').write(b'x' * 1024 * 1024); i += 1",
        limits=JobLimits(output_bytes=8 * MiB, wall_seconds=60),
    )
    assert r.status == "output_limit"
    assert not r.output_trusted


def test_bridge_traversal_from_inside(run_any: RunPy) -> None:
    r = run_any(
        "import os\n"
        "from cyxwiz.sandbox.bridge_client import BridgeClient, BridgeClientError\n"
        "os.symlink('/etc/passwd', '/output/link')\n"
        "c = BridgeClient.from_env()\n"
        "bad = ['/etc/passwd', '../../etc/passwd', '%2e%2e/x', 'link', 'a\\x00b', 'x' * 3000]\n"
        "for p in bad + ['a\\\\..\\\\b']:\n"
        "    try:\n"
        "        c.request_file(p); print('GOT', p[:20])\n"
        "    except BridgeClientError as e:\n"
        "        print('refused', str(e).split(':')[0])\n"
        "c.checkpoint(1, 'a' * 64, 'b' * 64, 'link')\n"
        "c.send('exec', cmd='id')\n"
        "c.close()\n"
    )
    assert r.status == "ok", r.stderr_tail
    assert "GOT" not in r.stdout_tail
    assert r.stdout_tail.count("refused bridge-path") == 7
    codes = sorted(e["code"] for e in r.bridge_errors)
    assert codes.count("bridge-path") == 8 and "unknown-kind" in codes
    assert [m for m in r.messages if m["kind"] in ("checkpoint", "exec")] == []
