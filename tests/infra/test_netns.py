"""Network namespaces as hosts (issue 21; SPEC C3, D1): a node reaches the control plane's public ports and
nothing else of it, no other node, and the topology leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from cyxwiz.errors import ConfigError
from infra.netns import SERVICE_ADDRESS, Topology, can_build, list_namespaces, topology

_WHY = can_build()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

#: Connect to HOST:PORT for each port; print {port: "open" | error class}. Fixed code, data in argv.
PROBE = """
import json, socket, sys
out = {}
for port in sys.argv[2:]:
    try:
        with socket.create_connection((sys.argv[1], int(port)), timeout=3):
            out[port] = "open"
    except OSError as exc:
        out[port] = type(exc).__name__
print(json.dumps(out))
"""

#: Listen on every address of the host on each port until killed.
LISTEN = """
import socket, sys, time
socks = []
for port in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port))); s.listen(16); socks.append(s)
print("listening", flush=True)
time.sleep(600)
"""


def probe(net: Topology, host_name: str | None, address: str, ports: list[int]) -> dict[str, str]:
    host = net.control if host_name is None else net.host(host_name)
    argv = host.argv([sys.executable, "-c", PROBE, address, *map(str, ports)])
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    result: dict[str, str] = json.loads(out)
    return result


@pytest.fixture
def net() -> Iterator[Topology]:
    with topology(hosts=[("node-1", "node"), ("node-2", "node"), ("alice", "user")]) as built:
        yield built
    assert not list_namespaces(built.tag), "every namespace of the topology is gone"


def test_a_node_reaches_only_the_public_ports(net: Topology) -> None:
    public, private = (
        [18443, 18444],
        [14200, 15432, 18899],
    )  # coordinator, gateway | Prefect, PostgreSQL, ledger
    listener = net.popen(
        net.control, [sys.executable, "-c", LISTEN, *map(str, public + private)], stdout=subprocess.PIPE
    )
    assert listener.stdout is not None and listener.stdout.readline().strip() == b"listening"
    net.restrict(public)
    # Positive control: every service answers on the service address inside the control plane itself.
    assert set(probe(net, None, SERVICE_ADDRESS, public + private).values()) == {"open"}
    for host in ("node-1", "alice"):
        seen = probe(net, host, SERVICE_ADDRESS, public + private)
        assert {p: seen[str(p)] for p in public} == {p: "open" for p in public}, seen
        assert {p: seen[str(p)] for p in private} == {p: "ConnectionRefusedError" for p in private}, seen
    # No route to another node, nor anywhere but the service address (no default route).
    node2 = net.host("node-2").address
    assert probe(net, "node-1", node2, [18443])["18443"] in ("OSError", "TimeoutError")
    routes = subprocess.run(
        net.host("node-1").argv(["ip", "route"]), capture_output=True, text=True, check=True
    ).stdout
    assert "default" not in routes and SERVICE_ADDRESS in routes


def test_destroy_stops_what_runs_inside_and_removes_everything() -> None:
    built = Topology.create(hosts=[("node-1", "node")])
    sleeper = built.popen(built.host("node-1"), [sys.executable, "-c", "import time; time.sleep(600)"])
    assert set(built.namespaces()) <= set(list_namespaces(built.tag))
    built.destroy()
    deadline = time.monotonic() + 10
    while sleeper.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleeper.poll() is not None, "a process left inside a host is stopped"
    assert not list_namespaces(built.tag)


def test_bad_names_are_refused_before_anything_is_made() -> None:
    from cyxwiz.errors import ConfigError

    before = set(list_namespaces())
    for hosts in ([("node 1; reboot", "node")], [("node-1", "admin")], [("n", "node"), ("n", "node")]):
        with pytest.raises(ConfigError):
            Topology.create(hosts=hosts)
    with pytest.raises(ConfigError, match="tag"):
        Topology.create(hosts=[("node-1", "node")], tag="../x")
    assert set(list_namespaces()) == before, "nothing half-created"


#: Echo every byte back, one thread per connection, until killed.
ECHO = """
import socket, sys, threading
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""

#: One connection kept across the test's steps (a line on stdin each): asks, asks again, waits for the answer.
TALK = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
def ask(word, timeout):
    conn.settimeout(timeout)
    conn.sendall(word)
    try:
        return conn.recv(16).decode() or "closed"
    except TimeoutError:
        return "silent"
print(ask(b"before", 5), flush=True)
sys.stdin.readline()
print(ask(b"during", 2), flush=True)
sys.stdin.readline()
conn.settimeout(20)
print(conn.recv(16).decode() or "closed", flush=True)
"""


def test_a_partitioned_host_is_cut_off_both_ways_open_connections_too_until_healed(net: Topology) -> None:
    """The chaos partition (issue 21; SPEC C3): iptables DROP inside the node's own namespace."""
    port = 18443
    echo = net.popen(net.control, [sys.executable, "-c", ECHO, str(port)], stdout=subprocess.PIPE)
    assert echo.stdout is not None and echo.stdout.readline().strip() == b"listening"
    net.restrict([port])
    node = net.host("node-1")
    talk = net.popen(
        node, [sys.executable, "-c", TALK, SERVICE_ADDRESS, str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert talk.stdin is not None and talk.stdout is not None
    assert talk.stdout.readline().strip() == "before"  # positive control: an open, answering connection
    # From the control plane a closed port on the node answers with a reset while the link is whole.
    assert probe(net, None, node.address, [9])["9"] == "ConnectionRefusedError"

    net.partition("node-1")
    assert node.partitioned()
    assert probe(net, "node-1", SERVICE_ADDRESS, [port]) == {str(port): "TimeoutError"}, "no new connection"
    assert probe(net, None, node.address, [9])["9"] == "TimeoutError", "nothing reaches the node either"
    assert probe(net, "node-2", SERVICE_ADDRESS, [port]) == {str(port): "open"}, "only node-1 is cut"
    talk.stdin.write("\n")
    talk.stdin.flush()
    assert talk.stdout.readline().strip() == "silent", "the open connection carries nothing"

    net.heal("node-1")
    net.heal("node-1")  # healing a whole host changes nothing
    assert not node.partitioned()
    talk.stdin.write("\n")
    talk.stdin.flush()
    assert talk.stdout.readline().strip() == "during", "the connection resumes with its retransmission"
    assert probe(net, "node-1", SERVICE_ADDRESS, [port]) == {str(port): "open"}
    assert probe(net, None, node.address, [9])["9"] == "ConnectionRefusedError"
    talk.wait(timeout=10)
    with pytest.raises(ConfigError, match="from_"):
        node.partition(from_=["10.211.255.1; reboot"])
    assert not node.partitioned(), "nothing half-made"
