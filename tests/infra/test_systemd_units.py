"""The production units and their settings (issue 21): systemd accepts them, every service is hardened,
every command they start exists, every setting is documented (SPEC C3, D1, D2, E1)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[2]
UNITS = PROJECT / "infra" / "systemd"
CONFIG = PROJECT / "infra" / "config"
INSTALL = "/opt/cyxwiz"
AGENT = "cyxwiz-node-agent.service"
LOOPBACK_ONLY = ("cyxwiz-prefect-server.service", "cyxwiz-ledger.service", "cyxwiz-verifier.service")
#: Written by more than one account: setgid 2770 directories of a group (docs/runbook.md, issue 17).
SHARED_DIRS = {"/var/lib/cyxwiz/store": "cyxwiz-data", "/var/lib/cyxwiz/audit": "cyxwiz-data",
               "/var/lib/cyxwiz/ledger-state": "cyxwiz-escrow"}  # fmt: skip

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """systemd's format: sections, repeated keys append, '#' comments (no continuation lines here)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: setting outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICES = sorted(UNITS.glob("*.service"))
TIMERS = sorted(UNITS.glob("*.timer"))


def _one(unit: Unit, key: str) -> str | None:
    values = unit.get("Service", {}).get(key)
    return values[-1] if values else None


def test_every_part_of_the_topology_has_a_unit() -> None:
    names = {p.name for p in SERVICES}
    assert {
        "cyxwiz-prefect-server.service",
        "cyxwiz-control-worker.service",
        "cyxwiz-coordinator.service",
        "cyxwiz-gateway.service",
        "cyxwiz-ledger.service",
        "cyxwiz-verifier.service",
        AGENT,
    } <= names
    target = parse_unit(UNITS / "cyxwiz-control-plane.target")
    wanted = " ".join(target["Unit"]["Wants"]).split()
    timers = {p.name for p in TIMERS}
    assert set(wanted) == (names - {AGENT}) | timers, "the target starts every service and timer"


@pytest.mark.parametrize("path", TIMERS, ids=lambda p: p.name)
def test_every_timer_starts_a_hardened_service_of_its_name(path: Path) -> None:
    """A timer runs the service of its own name (B4: the token key is rotated by one, daily)."""
    timer = parse_unit(path)
    service = UNITS / path.name.replace(".timer", ".service")
    assert service in SERVICES, f"{path.name}: no {service.name}"
    assert timer["Timer"].get("OnCalendar") and timer["Timer"].get("Persistent") == ["true"]
    assert _one(parse_unit(service), "Type") == "oneshot"


def test_the_token_key_ring_is_rotated_by_its_owner() -> None:
    """The ring belongs to the coordinator's account: the rotation runs as it, on the coordinator's ring."""
    rotate = parse_unit(UNITS / "cyxwiz-token-rotate.service")
    coordinator = parse_unit(UNITS / "cyxwiz-coordinator.service")
    assert _one(rotate, "User") == _one(coordinator, "User")
    argv = shlex.split(_one(rotate, "ExecStart") or "")
    assert argv[1:4] == ["token", "rotate", "/var/lib/cyxwiz/coordinator/keyring"]
    assert _one(rotate, "StateDirectory") == _one(coordinator, "StateDirectory")


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_service_is_hardened(path: Path) -> None:
    unit = parse_unit(path)
    for key, want in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
    }.items():
        assert _one(unit, key) == want, f"{path.name}: {key} must be {want!r}"
    # Owner only, unless the unit writes a directory shared through a setgid group (issue 17): then the
    # group too, never others.
    shared = set(" ".join(unit["Service"].get("ReadWritePaths", [])).split()) & set(SHARED_DIRS)
    assert _one(unit, "UMask") == ("0007" if shared else "0077"), f"{path.name}: UMask"
    assert _one(unit, "User") not in (None, "root", "0"), f"{path.name}: runs as a dedicated user"
    assert _one(unit, "StateDirectory"), f"{path.name}: its writable state is a StateDirectory"
    if path.name == AGENT:
        # The sandbox puts each job in a sub-cgroup of the agent's own (E1): systemd must delegate it.
        assert _one(unit, "Delegate") == "yes"
        assert _one(unit, "ProtectControlGroups") == "no"
        assert _one(unit, "KillMode") == "control-group", "stopping the agent stops every sandbox"
    else:
        for key in ("RestrictNamespaces", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules"):
            assert _one(unit, key) == "yes", f"{path.name}: {key}"
        filters = unit["Service"].get("SystemCallFilter", [])
        assert "@system-service" in filters and "~@privileged" in filters, path.name
    if path.name in LOOPBACK_ONLY:
        assert unit["Service"].get("IPAddressDeny") == ["any"], path.name
        assert unit["Service"].get("IPAddressAllow") == ["localhost"], path.name


def _installed_copy(tmp: Path) -> list[Path]:
    """The units as installed from this checkout: /opt/cyxwiz -> here, /etc/cyxwiz -> infra/config."""
    out = []
    for path in [*SERVICES, *TIMERS, UNITS / "cyxwiz-control-plane.target"]:
        text = path.read_text(encoding="utf-8").replace(INSTALL, str(PROJECT))
        text = text.replace("/etc/cyxwiz/", f"{CONFIG}/")
        (tmp / path.name).write_text(text, encoding="utf-8")
        out.append(tmp / path.name)
    return out


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (the parser tests above still run)")
    return found


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    files = _installed_copy(tmp_path)
    proc = subprocess.run(
        [tool, "verify", "--man=no", *map(str, files)], capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Unknown or misspelled settings are only warnings to systemd: they must not be there either.
    assert not re.search(r"Unknown (key|section)|ignoring|not executable", output), output


def test_systemd_rates_the_units_exposure(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    files = [f for f in _installed_copy(tmp_path) if f.suffix == ".service"]
    for path in files:
        proc = subprocess.run(
            [tool, "security", "--offline=true", "--no-pager", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
        assert found, proc.stdout[-500:] + proc.stderr[-500:]
        # systemd's scale: 0 (confined) .. 10 (exposed). The agent must keep namespaces and /proc for the
        # sandbox (unit comment), so it scores higher than the listeners.
        limit = 5.0 if path.name == AGENT else 2.0
        assert float(found.group(1)) <= limit, f"{path.name}: exposure {found.group(1)} > {limit}"


def _exec_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for path in SERVICES:
        service = parse_unit(path)["Service"]
        for key in ("ExecStartPre", "ExecStart"):
            for value in service.get(key, []):
                lines.append((path.name, shlex.split(value)))
    return lines


def _cyxwiz_command(argv: list[str]) -> tuple[object, list[str]]:
    """The click command ``cyxwiz ARGV`` names and the option flags it was given; AssertionError if absent."""
    import typer.main

    from cyxwiz.cli import app

    command: Any = typer.main.get_command(app)
    words = [a for a in argv if not a.startswith("-")]
    ctx = type(command).context_class(command)
    # typer may carry its own click: recognise groups by what they do, not by click's class.
    while hasattr(command, "get_command") and words:
        sub = command.get_command(ctx, words[0])
        assert sub is not None, f"no command `cyxwiz ... {words[0]}` in {' '.join(argv)}"
        command, words = sub, words[1:]
    flags = [a.split("=")[0] for a in argv if a.startswith("--")]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [f for f in flags if f not in known and f != "--help"]
    assert not unknown, f"`cyxwiz {' '.join(argv)}`: unknown options {unknown}"
    return command, flags


@pytest.mark.parametrize(
    "unit,argv", _exec_lines(), ids=lambda v: v if isinstance(v, str) else " ".join(v[:4])
)
def test_exec_start_commands_exist(unit: str, argv: list[str]) -> None:
    program, args = argv[0], argv[1:]
    assert program.startswith(f"{INSTALL}/.venv/bin/"), f"{unit}: runs from the install's venv"
    name = program.rsplit("/", 1)[1]
    if name == "cyxwiz":
        _cyxwiz_command(args)
        return
    if name == "python":
        assert args[0] == "-m", f"{unit}: python runs a module of the checkout"
        module, rest = args[1], args[2:]
        if module == "infra.serve":
            from infra.serve import BUILDERS

            assert rest[0] in BUILDERS, f"{unit}: {rest[0]} is not a service of infra.serve"
            assert set(rest[1:]) <= {"--check"}, rest
            return
        cmd = [sys.executable, "-m", module, *rest, "--help"]
    else:
        assert name == "prefect", f"{unit}: unexpected program {name}"
        cmd = [sys.executable, "-m", "prefect", *args, "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=PROJECT, timeout=120)
    assert proc.returncode == 0, f"{unit}: {' '.join(argv)}\n{proc.stdout[-800:]}{proc.stderr[-800:]}"


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, each in a run of lines that a comment opens (its documentation)."""
    settings: dict[str, str] = {}
    documented = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            documented = False
        elif line.startswith("#"):
            documented = True
        else:
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path.name}: bad line {line!r}"
            assert documented, f"{path.name}: {key} has no comment above it"
            settings[key] = value
    return settings


def test_every_environment_file_exists_and_is_documented() -> None:
    for path in SERVICES:
        for value in parse_unit(path)["Service"].get("EnvironmentFile", []):
            assert value.startswith("/etc/cyxwiz/"), value
            assert (CONFIG / value.removeprefix("/etc/cyxwiz/")).is_file(), (
                f"{path.name}: {value} not shipped"
            )
    import prefect.settings

    for env_file in CONFIG.glob("*.env"):
        settings = _env_file(env_file)
        optional = re.findall(r"^#([A-Z][A-Z0-9_]*)=", env_file.read_text(encoding="utf-8"), flags=re.M)
        assert settings or optional, f"{env_file.name} sets nothing"
        for key in settings:
            if key.startswith("PREFECT_"):
                assert hasattr(prefect.settings, key), f"{env_file.name}: {key} is not a Prefect setting"
            else:
                assert key.startswith("CYXWIZ_"), f"{env_file.name}: {key}"


def _settings_read_by(path: Path) -> set[str]:
    """Names passed to a getter (``env.get("X")``, ``path("X")``): what the code reads, not what it sets."""
    return set(re.findall(r"\w\(\"(CYXWIZ_[A-Z_]+)\"", path.read_text(encoding="utf-8")))


def test_every_setting_the_services_read_is_documented() -> None:
    documented = set().union(*(_env_file(p) for p in CONFIG.glob("*.env")))
    documented |= {
        line.split("=")[0].lstrip("#")
        for p in CONFIG.glob("*.env")
        for line in p.read_text().splitlines()
        if re.match(r"#?CYXWIZ_[A-Z_]+=", line)
    }  # commented-out optional settings count as documented
    agent = _settings_read_by(PROJECT / "agents" / "settings.py")
    assert agent <= set(_env_file(CONFIG / "node-agent.env")), agent - set(
        _env_file(CONFIG / "node-agent.env")
    )
    served = _settings_read_by(PROJECT / "infra" / "serve.py")
    assert served <= documented, served - documented


def test_control_plane_config_is_documented_and_loads() -> None:
    from tasks.config import ControlPlaneConfig

    example = CONFIG / "control-plane.example.json"
    config = ControlPlaneConfig.from_file(example)
    runbook = (PROJECT / "docs" / "runbook.md").read_text(encoding="utf-8")
    for name in ControlPlaneConfig.__dataclass_fields__:
        assert f"| `{name}` |" in runbook, f"control-plane config key {name} is not in docs/runbook.md"
    assert config.coordinator_db and config.coordinator_db.startswith("postgresql")


def test_runbook_commands_exist() -> None:
    """Every ``cyxwiz ...`` line the runbook tells an operator to type names a real command and options."""
    runbook = (PROJECT / "docs" / "runbook.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", runbook, flags=re.S)
    inline = re.findall(r"`(cyxwiz [^`]+)`", runbook)
    lines = [ln.strip() for block in blocks for ln in block.splitlines()] + inline
    commands = [shlex.split(ln.split("#")[0])[1:] for ln in lines if ln.startswith("cyxwiz ")]
    assert len(commands) >= 8
    for argv in commands:
        _cyxwiz_command(argv)
    for section in (
        "Install",
        "Issue node certificates",
        "Rotate keys",
        "Revoke a node",
        "Back up and restore",
    ):
        assert re.search(rf"^## \d+\. {section}", runbook, flags=re.M), section


# Who can reach what (issue 17 "money no single process can move"; SPEC F1, I) --------------------------

#: The processes that face nodes or users.
FACING = ("cyxwiz-coordinator.service", "cyxwiz-gateway.service", AGENT)
CONTROL = "cyxwiz-control-worker.service"
VERIFIER = "cyxwiz-verifier.service"
ESCROW_GROUP = "cyxwiz-escrow"
#: What moves funds: the passphrases of the ledger's sealed authority keys, as settings or credentials.
MONEY_SETTINGS = ("CYXWIZ_LEDGER_PASSPHRASE", "CYXWIZ_VERIFIER_PASSPHRASE", "CYXWIZ_ARBITER_PASSPHRASE")
MONEY_CREDENTIALS = ("ledger-passphrase", "verifier-passphrase", "arbiter-passphrase")
SYSUSERS = PROJECT / "infra" / "sysusers.d"


def _service(name: str) -> dict[str, list[str]]:
    return parse_unit(UNITS / name)["Service"]


def _groups(service: dict[str, list[str]]) -> set[str]:
    return {*service.get("Group", []), *" ".join(service.get("SupplementaryGroups", [])).split()}


def _settings(service: dict[str, list[str]]) -> dict[str, str]:
    """Every variable the unit's process gets: its EnvironmentFile=s (shipped copies) and Environment=."""
    found: dict[str, str] = {}
    for value in service.get("EnvironmentFile", []):
        found |= _env_file(CONFIG / value.lstrip("-").removeprefix("/etc/cyxwiz/"))
    for value in service.get("Environment", []):
        for item in shlex.split(value):
            key, _, setting = item.partition("=")
            found[key] = setting
    return found


def _credentials(service: dict[str, list[str]]) -> dict[str, str]:
    return dict(v.split(":", 1) for v in service.get("LoadCredential", []))


@pytest.mark.parametrize("name", FACING)
def test_no_unit_facing_nodes_or_users_can_reach_what_moves_funds(name: str) -> None:
    service = _service(name)
    settings, credentials = _settings(service), _credentials(service)
    for secret in MONEY_SETTINGS:
        assert secret not in settings and f"{secret}_FILE" not in settings, f"{name} is given {secret}"
    assert not set(credentials) & set(MONEY_CREDENTIALS), f"{name} is handed a ledger passphrase"
    assert ESCROW_GROUP not in _groups(service), f"{name} could read the ledger's keys or use the verifier"
    control, verifier = _service(CONTROL), _service(VERIFIER)
    assert _one_of(service, "User") not in (_one_of(control, "User"), _one_of(verifier, "User")), (
        f"{name} runs as the account of a key holder: it could read its memory, files and credentials"
    )
    writable = set(" ".join(service.get("ReadWritePaths", [])).split())
    assert "/var/lib/cyxwiz/ledger-state" not in writable and not any(
        w.startswith("/etc/cyxwiz/ledger") for w in writable
    ), name
    assert not any("ledger" in v for k in ("BindPaths", "BindReadOnlyPaths") for v in service.get(k, [])), (
        name
    )


def _one_of(service: dict[str, list[str]], key: str) -> str | None:
    values = service.get(key)
    return values[-1] if values else None


def test_the_control_worker_alone_holds_the_ledger_passphrase_and_the_escrow_group() -> None:
    """Positive control: the key holders do have what they need, and nobody else does."""
    control = _service(CONTROL)
    assert _credentials(control)["ledger-passphrase"] == "/etc/cyxwiz/secrets/ledger-passphrase"
    assert _settings(control)["CYXWIZ_LEDGER_PASSPHRASE_FILE"] == "%d/ledger-passphrase"
    assert "CYXWIZ_LEDGER_PASSPHRASE" not in _settings(control), "a credential, never an environment value"
    assert ESCROW_GROUP in _groups(control)
    holders = {p.name for p in SERVICES if "ledger-passphrase" in _credentials(parse_unit(p)["Service"])}
    assert holders == {CONTROL}
    members = {p.name for p in SERVICES if ESCROW_GROUP in _groups(parse_unit(p)["Service"])}
    assert members == {CONTROL, VERIFIER}, "the escrow group: the control worker and the verifier only"
    users = [_one_of(parse_unit(p)["Service"], "User") for p in SERVICES]
    assert users.count(_one_of(control, "User")) == 1, "no other unit runs as the control worker's account"
    verifier = _service(VERIFIER)
    assert _settings(verifier)["CYXWIZ_VERIFIER_PASSPHRASE_FILE"] == "%d/verifier-passphrase"
    assert users.count(_one_of(verifier, "User")) == 1


def test_the_verifier_socket_admits_the_escrow_group_only() -> None:
    """The socket's group is the verifier's primary group (RuntimeDirectory and the socket file take it);
    0660 in a 0750 directory: the escrow group can connect, any other account cannot even reach it."""
    verifier = _service(VERIFIER)
    assert _one_of(verifier, "Group") == ESCROW_GROUP
    assert _one_of(verifier, "RuntimeDirectoryMode") == "0750"
    argv = shlex.split(_one_of(verifier, "ExecStart") or "")
    assert argv[argv.index("--socket-mode") + 1] == "660"
    assert argv[argv.index("--socket") + 1].startswith(f"/run/{_one_of(verifier, 'RuntimeDirectory')}/")
    assert argv[argv.index("-m") + 1] == "tasks.verifier_service", (
        "the service that verifies, not the bare core"
    )


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_secrets_come_as_credentials_and_every_credential_is_used(path: Path) -> None:
    service = parse_unit(path)["Service"]
    credentials = _credentials(service)
    for name, source in credentials.items():
        assert source.startswith("/etc/cyxwiz/secrets/"), f"{path.name}: {name} from {source}"
    used = {v.split("%d/", 1)[1] for v in _settings(service).values() if "%d/" in v}
    assert used == set(credentials), f"{path.name}: credentials {set(credentials)} vs used {used}"
    for value in service.get("EnvironmentFile", []):
        for key in _env_file(CONFIG / value.removeprefix("/etc/cyxwiz/")):
            assert not key.endswith("_PASSPHRASE"), f"{path.name}: {key} in an environment file"


def test_every_shared_directory_is_written_only_by_members_of_its_group() -> None:
    for path in SERVICES:
        service = parse_unit(path)["Service"]
        for directory in " ".join(service.get("ReadWritePaths", [])).split():
            group = SHARED_DIRS.get(directory)
            if group is not None:
                assert group in _groups(service), f"{path.name} writes {directory} outside {group}"


def test_sysusers_creates_every_account_and_group_the_units_name(tmp_path: Path) -> None:
    """systemd-sysusers itself reads the shipped file (no parser of ours): every unit's User, Group and
    SupplementaryGroups exist, with the primary groups the units expect."""
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).touch()
    files = sorted(str(p) for p in SYSUSERS.glob("*.conf"))
    proc = subprocess.run([tool, f"--root={tmp_path}", *files], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    groups = {
        line.split(":")[0]: line.split(":")[2] for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    users = {
        f[0]: f[3] for f in (line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines())
    }
    for path in SERVICES:
        service = parse_unit(path)["Service"]
        user = _one_of(service, "User")
        assert user in users, f"{path.name}: account {user} is not created"
        group = _one_of(service, "Group")
        assert groups.get(group) == users[user], f"{path.name}: {user}'s primary group is not {group}"
        for extra in _groups(service):
            assert extra in groups, f"{path.name}: group {extra} is not created"


#: The services other units use through a socket they bind, and who waits for each (issue 17).
SOCKET_SERVICES = {
    "cyxwiz-issuer.service": ("cyxwiz-coordinator.service", "cyxwiz-control-worker.service"),
    "cyxwiz-verifier.service": ("cyxwiz-control-worker.service",),
    "cyxwiz-ledger.service": ("cyxwiz-verifier.service", "cyxwiz-control-worker.service"),
}


@pytest.mark.parametrize("name", sorted(SOCKET_SERVICES))
def test_a_socket_service_is_started_only_once_it_listens(name: str) -> None:
    """``Type=simple`` counts a service as started when its process exists; a unit ordered after it then
    finds no socket, fails its first connection and restarts. ``Type=notify``: started at ``READY=1``,
    which the service sends after ``listen()`` (cyxwiz.unix_json_server.announce_ready)."""
    unit = parse_unit(UNITS / name)
    assert _one(unit, "Type") == "notify", name
    assert _one(unit, "NotifyAccess") == "main", name
    for waiting in SOCKET_SERVICES[name]:
        after = " ".join(parse_unit(UNITS / waiting).get("Unit", {}).get("After", [])).split()
        assert name in after, f"{waiting} must be ordered after {name}"
