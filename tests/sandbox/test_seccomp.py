"""The seccomp policy (SPEC E1): BPF structure, and the Docker profile file equals the generator."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from cyxwiz.sandbox import seccomp

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_bpf_is_well_formed(machine: str) -> None:
    prog = seccomp.build_bpf(machine)
    assert len(prog) % 8 == 0
    n = len(prog) // 8
    assert n < 4096  # BPF_MAXINSNS
    code, _jt, _jf, k = struct.unpack_from("<HBBI", prog, 0)
    assert (code, k) == (0x20, 4)  # first: load arch
    last = struct.unpack_from("<HBBI", prog, len(prog) - 8)
    assert last[0] == 0x06 and last[3] == 0x7FFF0000  # default allow
    # every jump lands inside the program
    for i in range(n):
        code, jt, jf, _k = struct.unpack_from("<HBBI", prog, i * 8)
        if code & 0x07 == 0x05:
            assert i + 1 + max(jt, jf) < n


def test_every_denied_syscall_has_a_number_on_each_arch() -> None:
    for arch in seccomp.ARCHES.values():
        for name in (*seccomp.DENIED_SYSCALLS, "socket", "socketpair", "clone", "clone3"):
            assert name in arch.syscalls


def test_unknown_machine_refused() -> None:
    with pytest.raises(ValueError, match="no seccomp"):
        seccomp.build_bpf("sparc")


def test_infra_profile_is_generated_from_the_same_policy() -> None:
    on_disk = json.loads((REPO / "infra" / "sandbox" / "seccomp.json").read_text())
    assert on_disk == json.loads(json.dumps(seccomp.docker_profile()))


def test_profile_denies_the_dangerous_calls() -> None:
    prof = seccomp.docker_profile()
    denied = {n for rule in prof["syscalls"] if "args" not in rule for n in rule["names"]}
    for name in ("ptrace", "mount", "unshare", "setns", "keyctl", "bpf", "io_uring_setup", "clone3"):
        assert name in denied
    clone_bits = [r["args"][0]["value"] for r in prof["syscalls"] if r["names"] == ["clone"]]
    assert 0x10000000 in clone_bits  # CLONE_NEWUSER
