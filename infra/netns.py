"""Linux network namespaces as hosts: the control plane on one, each node agent and each user on its own.

Every host is a namespace linked to the control plane by its own veth pair (a /30 per link). The control
plane's services answer on one service address (``SERVICE_ADDRESS``, on its loopback), which every other
host routes to through its link and nothing else: a node has no default route, the control plane does not
forward between links (a new namespace starts with forwarding off), and iptables in the control-plane
namespace admits from the links only the ports named public (the coordinator, which also serves the object
store's presigned URLs, and the gateway). Prefect's API, PostgreSQL and the ledger stay unreachable from
every other host even when they listen on all addresses (SPEC C3, D1).

Only the namespaces are created: no interface, address, route or rule touches the calling (root)
namespace, so parallel topologies with other tags never collide and deleting the namespaces removes
everything. Commands are argument lists run without a shell; names are checked before use. Needs root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cyxwiz.errors import ConfigError

#: Where every control-plane service answers (on the control-plane namespace's loopback).
SERVICE_ADDRESS = "10.211.255.1"
_PREFIX = "cyx"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,11}$")
_TAG = re.compile(r"^[a-z0-9]{2,6}$")
#: The chain inside a host that holds its partition's rules (empty and unhooked when healed).
PARTITION_CHAIN = "CYX-PARTITION"


def _run(argv: Sequence[str]) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise ConfigError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-400:]}", field="netns")
    return proc.stdout


@dataclass(frozen=True, kw_only=True)
class Host:
    """One namespace: its name, its role, its own address and the control plane's side of its link."""

    name: str
    role: str
    address: str
    gateway: str
    link: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside this host, as a list for ``subprocess``.

        ``nsenter --net`` and not ``ip netns exec``: the latter also remounts /sys for the namespace,
        which hides the cgroup filesystem the node's sandboxes need (E2)."""
        return ["nsenter", f"--net=/run/netns/{self.name}", "--", *command]

    def partition(self, *, from_: Sequence[str]) -> None:
        """Cut this host off from the addresses ``from_``: iptables inside the host's own namespace drops
        every packet to them (OUTPUT) and from them (INPUT), whatever its protocol or connection state.

        A silent drop, not a reset: the host's open connections stay open and go quiet, its new ones time
        out, and the far side hears nothing either: what a cable pulled or a switch failing looks like to
        both ends (issue 21). Conntrack state is not consulted, so established flows are cut as well as
        new ones. Calling it again replaces the cut; :meth:`heal` removes it."""
        try:
            addresses = [str(ipaddress.ip_address(a)) for a in from_]
        except ValueError as exc:
            raise ConfigError(f"not an IP address: {exc}", field="from_") from None
        if not addresses:
            raise ConfigError("name at least one address to cut this host off from", field="from_")
        self.heal()
        ipt = self.argv(["iptables", "-w"])
        _run([*ipt, "-N", PARTITION_CHAIN])
        for address in addresses:
            _run([*ipt, "-A", PARTITION_CHAIN, "-s", address, "-j", "DROP"])
            _run([*ipt, "-A", PARTITION_CHAIN, "-d", address, "-j", "DROP"])
        for hook in ("INPUT", "OUTPUT"):
            _run([*ipt, "-I", hook, "1", "-j", PARTITION_CHAIN])

    def partitioned(self) -> bool:
        """True while this host holds a partition (its chain exists)."""
        rules = _run(self.argv(["iptables", "-w", "-S"])).splitlines()
        return f"-N {PARTITION_CHAIN}" in rules

    def heal(self) -> None:
        """Remove the partition (nothing to do when there is none): packets flow again, and a TCP
        connection neither end gave up on meanwhile resumes with its next retransmission."""
        if not self.partitioned():
            return
        ipt = self.argv(["iptables", "-w"])
        for hook in ("INPUT", "OUTPUT"):
            while f"-A {hook} -j {PARTITION_CHAIN}" in _run([*ipt, "-S", hook]).splitlines():
                _run([*ipt, "-D", hook, "-j", PARTITION_CHAIN])
        _run([*ipt, "-F", PARTITION_CHAIN])
        _run([*ipt, "-X", PARTITION_CHAIN])


@dataclass(kw_only=True)
class Topology:
    """A control-plane namespace and linked host namespaces; :meth:`destroy` removes all of them."""

    tag: str
    control: Host
    hosts: dict[str, Host] = field(default_factory=dict)
    public_ports: tuple[int, ...] = ()

    @classmethod
    def create(cls, *, hosts: Sequence[tuple[str, str]], tag: str | None = None) -> Topology:
        """Namespaces for the control plane and for each ``(name, role)`` host (role: node or user)."""
        tag = tag or secrets.token_hex(2)
        if not _TAG.match(tag):
            raise ConfigError("must be 2-6 lowercase letters or digits", field="tag")
        if len(hosts) > 60:
            raise ConfigError("at most 60 hosts per topology", field="hosts")
        control = Host(
            name=f"{_PREFIX}{tag}-cp", role="control", address=SERVICE_ADDRESS, gateway="", link="lo"
        )
        topology = cls(tag=tag, control=control)
        try:
            _run(["ip", "netns", "add", control.name])
            _run(["ip", "-n", control.name, "link", "set", "lo", "up"])
            _run(["ip", "-n", control.name, "addr", "add", f"{SERVICE_ADDRESS}/32", "dev", "lo"])
            for index, (name, role) in enumerate(hosts, start=1):
                topology._add_host(index, name, role)
            topology.restrict(())
        except BaseException:
            topology.destroy()
            raise
        return topology

    def _add_host(self, index: int, name: str, role: str) -> None:
        if not _NAME.match(name) or role not in ("node", "user"):
            raise ConfigError(f"bad host {name!r} ({role})", field="hosts")
        if name in self.hosts:
            raise ConfigError(f"host {name!r} twice", field="hosts")
        base = f"10.211.{index}"
        host = Host(
            name=f"{_PREFIX}{self.tag}-{name}",
            role=role,
            address=f"{base}.2",
            gateway=f"{base}.1",
            link=f"h{index}",
        )
        self.hosts[name] = host
        _run(["ip", "netns", "add", host.name])
        # Both ends are born inside their namespaces: the root namespace never holds either.
        near = ["ip", "link", "add", host.link, "netns", self.control.name, "type", "veth"]
        _run([*near, "peer", "name", "eth0", "netns", host.name])
        _run(["ip", "-n", self.control.name, "addr", "add", f"{host.gateway}/30", "dev", host.link])
        _run(["ip", "-n", self.control.name, "link", "set", host.link, "up"])
        _run(["ip", "-n", host.name, "link", "set", "lo", "up"])
        _run(["ip", "-n", host.name, "addr", "add", f"{host.address}/30", "dev", "eth0"])
        _run(["ip", "-n", host.name, "link", "set", "eth0", "up"])
        # The host's only way out: the control plane's service address, through its own link.
        _run(["ip", "-n", host.name, "route", "add", f"{SERVICE_ADDRESS}/32", "via", host.gateway])

    def restrict(self, public_ports: Sequence[int]) -> None:
        """Admit from the host links only TCP to ``public_ports``; refuse (TCP reset) everything else."""
        ports = tuple(int(p) for p in public_ports)
        if any(not 0 < p < 65536 for p in ports):
            raise ConfigError("ports must be within 1..65535", field="public_ports")
        ipt = self.control.argv(["iptables", "-w"])
        _run([*ipt, "-F", "INPUT"])
        _run([*ipt, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
        _run([*ipt, "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"])
        for port in ports:
            _run([*ipt, "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"])
        # A reset, not a silent drop: a refused port fails at once instead of at a timeout.
        _run([*ipt, "-A", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
        _run([*ipt, "-A", "INPUT", "-j", "REJECT"])
        _run([*ipt, "-P", "FORWARD", "DROP"])
        self.public_ports = ports

    @classmethod
    def existing(cls, tag: str) -> Topology:
        """The topology of ``tag`` as found on this machine (to remove one a crashed run left behind)."""
        control = Host(
            name=f"{_PREFIX}{tag}-cp", role="control", address=SERVICE_ADDRESS, gateway="", link="lo"
        )
        hosts = {
            name.removeprefix(f"{_PREFIX}{tag}-"): Host(name=name, role="", address="", gateway="", link="")
            for name in list_namespaces(tag)
            if name != control.name
        }
        return cls(tag=tag, control=control, hosts=hosts)

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def partition(self, name: str) -> None:
        """Cut host ``name`` off from the whole control plane (its service address, which the coordinator
        and the gateway answer on, and the control plane's end of its link) until :meth:`heal`."""
        host = self.host(name)
        host.partition(from_=[SERVICE_ADDRESS, *([host.gateway] if host.gateway else [])])

    def heal(self, name: str) -> None:
        self.host(name).heal()

    def popen(self, host: Host, command: Sequence[str], **options: object) -> subprocess.Popen[bytes]:
        """Start ``command`` inside ``host`` in a new session (so stopping it stops its children)."""
        return subprocess.Popen(host.argv(command), start_new_session=True, **options)  # type: ignore[call-overload, no-any-return]

    def namespaces(self) -> list[str]:
        return [self.control.name, *(h.name for h in self.hosts.values())]

    def destroy(self) -> None:
        """Stop every process still inside the namespaces, then delete them (links and rules go along)."""
        existing = set(list_namespaces())
        for name in self.namespaces():
            if name in existing:
                _kill_inside(name)
        for name in self.namespaces():
            if name in existing:
                with contextlib.suppress(ConfigError):
                    _run(["ip", "netns", "delete", name])


def list_namespaces(tag: str | None = None) -> list[str]:
    """Namespaces made by this module (of one tag, or of any)."""
    out = _run(["ip", "netns", "list"])
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    start = f"{_PREFIX}{tag}-" if tag else _PREFIX
    return [n for n in names if n.startswith(start) and re.match(rf"^{_PREFIX}[a-z0-9]{{2,6}}-", n)]


def _kill_inside(namespace: str, *, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process in ``namespace`` (all started there by this harness)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in _run(["ip", "netns", "pids", namespace]).split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _run(["ip", "netns", "pids", namespace]).split():
                return
            time.sleep(0.1)


@contextlib.contextmanager
def topology(*, hosts: Sequence[tuple[str, str]], tag: str | None = None) -> Iterator[Topology]:
    """:meth:`Topology.create` for a ``with`` block: destroyed on the way out, failures included."""
    built = Topology.create(hosts=hosts, tag=tag)
    try:
        yield built
    finally:
        built.destroy()


def can_build() -> str | None:
    """None when this machine can build topologies, else why not (tests skip with it)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{_PREFIX}{secrets.token_hex(2)}-probe"
    try:
        _run(["ip", "netns", "add", probe])
        _run(["ip", "netns", "exec", probe, "iptables", "-w", "-S"])
    except (ConfigError, FileNotFoundError) as exc:
        return f"cannot build network namespaces here: {exc}"
    finally:
        with contextlib.suppress(ConfigError, FileNotFoundError):
            _run(["ip", "netns", "delete", probe])
    return None
