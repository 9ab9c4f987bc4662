"""The seccomp policy of the sandbox (SPEC E1), as a classic-BPF program and as a Docker profile.

One deny list drives both: bubblewrap loads :func:`build_bpf` through ``--seccomp FD`` and Docker gets
:func:`docker_profile` (written to ``infra/sandbox/seccomp.json``). Everything not listed is allowed; the
list holds what lets code leave or attack the sandbox: tracing, mounting, namespaces, kernel keyrings,
BPF, module loading, io_uring (which bypasses seccomp for the operations it carries), handle-based opens,
and every socket family except AF_UNIX (the job bridge). The BPF is built here rather than through
libseccomp so the filter needs no native library and is testable byte for byte.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass
from typing import Any

# --- classic BPF opcodes (linux/filter.h, linux/seccomp.h) ---------------------------------------------
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16  # args[0], low 32 bits (both supported arches are little-endian)

AF_UNIX = 1
#: Namespace-creating clone flags; a job must not make new namespaces (userns in particular, E1).
CLONE_NS_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)

#: Syscalls refused with EPERM. Names are the kernel's.
DENIED_SYSCALLS: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    "unshare", "setns",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd", "fanotify_init", "lookup_dcookie",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "open_by_handle_at", "name_to_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
)  # fmt: skip


@dataclass(frozen=True)
class _Arch:
    audit_arch: int
    syscalls: dict[str, int]
    #: x32 syscalls share the x86_64 audit arch and would bypass a number-based list.
    x32_bit: int | None = None


_X86_64 = _Arch(
    audit_arch=0xC000003E,
    x32_bit=0x40000000,
    syscalls={
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438, "kcmp": 312,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "unshare": 272, "setns": 308, "keyctl": 250, "add_key": 248,
        "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "fanotify_init": 300,
        "lookup_dcookie": 212, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "kexec_load": 246, "kexec_file_load": 320, "open_by_handle_at": 304, "name_to_handle_at": 303,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "reboot": 169,
        "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179, "syslog": 103, "vhangup": 153,
        "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
        "sethostname": 170, "setdomainname": 171,
        "socket": 41, "socketpair": 53, "clone": 56, "clone3": 435,
    },
)  # fmt: skip

_AARCH64 = _Arch(
    audit_arch=0xC00000B7,
    syscalls={
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438, "kcmp": 272,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "unshare": 97, "setns": 268, "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "fanotify_init": 262, "lookup_dcookie": 18,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
        "kexec_file_load": 294, "open_by_handle_at": 265, "name_to_handle_at": 264,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "reboot": 142,
        "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60, "syslog": 116, "vhangup": 58,
        "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
        "sethostname": 161, "setdomainname": 162,
        "socket": 198, "socketpair": 199, "clone": 220, "clone3": 435,
    },
)  # fmt: skip

ARCHES = {"x86_64": _X86_64, "aarch64": _AARCH64}


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    if not (0 <= jt <= 255 and 0 <= jf <= 255):
        raise ValueError("BPF jump out of range")
    return struct.pack("<HBBI", code, jt, jf, k)


def _errno(code: int) -> int:
    return _RET_ERRNO | (code & 0xFFFF)


def build_bpf(machine: str | None = None) -> bytes:
    """The filter as ``struct sock_filter[]`` bytes, ready for ``--seccomp FD`` (bubblewrap)."""
    arch = ARCHES.get(machine or platform.machine())
    if arch is None:
        raise ValueError(f"no seccomp syscall table for {machine or platform.machine()}")
    nr = arch.syscalls
    prog: list[bytes] = [
        _ins(_BPF_LD_W_ABS, _OFF_ARCH),
        # A foreign ABI (e.g. i386 via int 0x80 on x86_64) has other numbers: kill, never guess.
        _ins(_BPF_JEQ_K, arch.audit_arch, jt=1, jf=0),
        _ins(_BPF_RET_K, _RET_KILL_PROCESS),
        _ins(_BPF_LD_W_ABS, _OFF_NR),
    ]
    if arch.x32_bit is not None:
        prog += [_ins(_BPF_JGE_K, arch.x32_bit, jt=0, jf=1), _ins(_BPF_RET_K, _errno(errno.EPERM))]
    for name in DENIED_SYSCALLS:
        prog += [_ins(_BPF_JEQ_K, nr[name], jt=0, jf=1), _ins(_BPF_RET_K, _errno(errno.EPERM))]
    # clone3 passes flags in a struct BPF cannot read: ENOSYS makes libc fall back to clone(), checked below.
    prog += [_ins(_BPF_JEQ_K, nr["clone3"], jt=0, jf=1), _ins(_BPF_RET_K, _errno(errno.ENOSYS))]
    # clone: refuse any namespace flag (fork/threads pass none).
    prog += [
        _ins(_BPF_JEQ_K, nr["clone"], jt=0, jf=4),
        _ins(_BPF_LD_W_ABS, _OFF_ARG0_LO),
        _ins(_BPF_JSET_K, CLONE_NS_FLAGS, jt=0, jf=1),
        _ins(_BPF_RET_K, _errno(errno.EPERM)),
        _ins(_BPF_RET_K, _RET_ALLOW),
    ]
    # socket/socketpair: AF_UNIX only (the bridge); no IP, netlink, packet, vsock, ... (E1: no network).
    for name in ("socket", "socketpair"):
        prog += [
            _ins(_BPF_JEQ_K, nr[name], jt=0, jf=4),
            _ins(_BPF_LD_W_ABS, _OFF_ARG0_LO),
            _ins(_BPF_JEQ_K, AF_UNIX, jt=0, jf=1),
            _ins(_BPF_RET_K, _RET_ALLOW),
            _ins(_BPF_RET_K, _errno(errno.EPERM)),
        ]
    prog.append(_ins(_BPF_RET_K, _RET_ALLOW))
    return b"".join(prog)


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(32) if mask & (1 << i)]


def docker_profile() -> dict[str, Any]:
    """The same policy as a Docker/Podman seccomp profile (``--security-opt seccomp=FILE``)."""
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "defaultErrnoRet": errno.EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": sorted(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            # libseccomp cannot say "masked != 0", so one rule per namespace flag (rules are OR-ed).
            *(
                {
                    "names": ["clone"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": errno.EPERM,
                    "args": [{"index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}],
                }
                for bit in _bits(CLONE_NS_FLAGS)
            ),
            {
                "names": ["socket", "socketpair"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EPERM,
                "args": [{"index": 0, "value": AF_UNIX, "valueTwo": 0, "op": "SCMP_CMP_NE"}],
            },
        ],
    }
