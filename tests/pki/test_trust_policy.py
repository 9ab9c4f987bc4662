"""The federation's trust policy (A7, C1): roles and names scoped per organization, CRLs per
organization, cross-signed intermediates along either path; each refusal names its rule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyxwiz.errors import ConfigError
from cyxwiz.pki.cli import app as certutil_app
from cyxwiz.pki.federation import Federation
from cyxwiz.pki.trust_policy import TrustPolicy, TrustPolicyError
from tests.pki.federation_fixture import FederationWorld, make_world

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FederationWorld:
    return make_world(tmp_path_factory.mktemp("federation"))


@pytest.fixture
def fresh(tmp_path: Path) -> FederationWorld:
    """A world of its own for tests that revoke, cross-sign or rewrite files."""
    return make_world(tmp_path)


def refused(fed: Federation, cert: object) -> TrustPolicyError:
    with pytest.raises(TrustPolicyError) as info:
        fed.decide(cert)  # type: ignore[arg-type]
    return info.value


def test_each_org_certifies_only_its_roles_and_names(world: FederationWorld) -> None:
    fed = Federation(policy_path=world.policy_path)
    assert fed.decide(world.a.node("a-verifier", role="verifier").cert).organization == "orga"
    assert fed.decide(world.b.node("w1.orgb.example", role="worker").cert).organization == "orgb"
    err = refused(fed, world.b.node("v1.orgb.example", role="verifier").cert)  # B certifies a verifier
    assert err.rule == "A7/role" and "'orgb' may not certify role 'verifier'" in err.message
    for name in ("w2.evil.example", "w3", "orgb.example.evil.net"):
        assert refused(fed, world.b.node(name, role="worker").cert).rule == "A7/names"
    assert refused(fed, world.b.node("admin.orgb.example", role="gateway").cert).rule == "A7/role"
    ip_named = world.b.issuing.issue(common_name="w5.orgb.example", role="worker", ip_addresses=["10.0.0.5"])
    assert refused(fed, ip_named.certificate).rule == "A7/names"  # an IP the constraint cannot scope


def test_certutil_verify_with_policy_names_the_rule(world: FederationWorld) -> None:
    good = world.b.node("w4.orgb.example", role="worker")
    bad = world.b.node("v4.orgb.example", role="verifier")
    ok = runner.invoke(certutil_app, ["verify", "--policy", str(world.policy_path), str(good.cert_path)])
    assert ok.exit_code == 0, ok.stderr
    assert "orgb" in ok.stdout
    bundle = world.base / "federation-bundle.pem"
    made = runner.invoke(
        certutil_app, ["policy-bundle", "--policy", str(world.policy_path), "--out", str(bundle)]
    )
    assert made.exit_code == 0 and bundle.read_bytes().count(b"BEGIN CERTIFICATE") == 4
    no = runner.invoke(certutil_app, ["verify", "--policy", str(world.policy_path), str(bad.cert_path)])
    assert no.exit_code == 1
    assert "rule A7/role" in no.stderr and "Traceback" not in no.stderr


def test_revoking_org_b_intermediate_refuses_only_org_b(fresh: FederationWorld) -> None:
    fed = Federation(policy_path=fresh.policy_path)
    a_node = fresh.a.node("a-worker", role="worker").cert
    b_node = fresh.b.node("w1.orgb.example", role="worker").cert
    fresh.b.root.revoke(fresh.b.issuing.certificate, reason="keyCompromise")
    fresh.b.write_crls()
    assert fed.check_now()
    assert refused(fed, b_node).rule in ("A7/revoked-key", "A7/crl")
    assert fed.decide(a_node).organization == "orga"  # positive control: org A untouched


def test_stale_or_missing_crl_refuses_only_that_org(fresh: FederationWorld) -> None:
    a_node = fresh.a.node("a-worker", role="worker").cert
    b_node = fresh.b.node("w1.orgb.example", role="worker").cert
    fresh.b.write_crls(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3), days=1)  # nextUpdate passed
    fed = Federation(policy_path=fresh.policy_path)
    err = refused(fed, b_node)
    assert err.rule == "A7/crl" and "nextUpdate" in err.message
    assert fed.decide(a_node).organization == "orga"
    fresh.b.crl_path.unlink()
    assert fed.check_now()
    assert refused(fed, b_node).rule == "A7/crl"
    assert fed.decide(a_node).organization == "orga"
    fresh.b.write_crls()  # a fresh CRL brings org B back without a restart
    assert fed.check_now()
    assert fed.decide(b_node).organization == "orgb"


def test_crl_rollback_and_foreign_crl_refused(fresh: FederationWorld) -> None:
    fed = Federation(policy_path=fresh.policy_path)
    b_node = fresh.b.node("w1.orgb.example", role="worker")
    old = fresh.b.crl_path.read_bytes()
    fresh.b.issuing.revoke(b_node.cert, reason="keyCompromise")
    fresh.b.write_crls()
    assert fed.check_now() and refused(fed, b_node.cert).rule == "A7/crl"
    fresh.b.crl_path.write_bytes(old)  # attack: replay the CRL from before the revocation
    fed.check_now()
    err = refused(fed, b_node.cert)
    assert "rollback" in err.message
    fresh.a.write_crls()
    fresh.b.crl_path.write_bytes(fresh.a.crl_path.read_bytes())  # attack: org A's CRLs as org B's
    fed.check_now()
    assert "not signed by a CA of 'orgb'" in refused(fed, b_node.cert).message


def test_org_removed_from_the_policy_at_run_time(fresh: FederationWorld) -> None:
    fed = Federation(policy_path=fresh.policy_path)
    b_node = fresh.b.node("w1.orgb.example", role="worker").cert
    a_node = fresh.a.node("a-worker", role="worker").cert
    assert fed.decide(b_node).organization == "orgb"
    fresh.write_policy(orgs=("orga",))
    assert fed.check_now()
    assert refused(fed, b_node).rule == "A7/chain"
    assert fed.decide(a_node).organization == "orga"
    fresh.policy_path.write_text("version: 1\norganizations: [")  # a broken edit keeps the last good policy
    assert not fed.check_now()
    assert fed.decide(a_node).organization == "orga"


def test_cross_signed_intermediate_verifies_along_either_path(fresh: FederationWorld) -> None:
    fresh.cross_sign_b_by_a()
    # A vouches for B's issuing CA, so A republishes that CA's CRL among its own
    fresh.a.write_crls(extra=(fresh.b.issuing.generate_crl(),))
    b_worker = fresh.b.node("w1.orgb.example", role="worker").cert
    b_verifier = fresh.b.node("v1.orgb.example", role="verifier").cert
    both = Federation(policy_path=fresh.policy_path)
    assert both.decide(b_worker).chain[0] == b_worker
    # org B's own limits hold on the path through org A's (all-roles) root too
    assert refused(both, b_verifier).rule == "A7/role"
    fresh.write_policy(orgs=("orga",))  # only A trusted: B's nodes verify through the cross-certificate
    only_a = Federation(policy_path=fresh.policy_path)
    decision = only_a.decide(b_worker)
    assert decision.organization == "orga" and decision.chain[-1] == fresh.a.root.certificate
    fresh.write_policy(orgs=("orgb",))
    assert Federation(policy_path=fresh.policy_path).decide(b_worker).organization == "orgb"
    # a compromised key is dead on every path: the cross-certificate does not revive it
    fresh.write_policy()
    fresh.b.root.revoke(fresh.b.issuing.certificate, reason="keyCompromise")
    fresh.b.write_crls()
    assert refused(Federation(policy_path=fresh.policy_path), b_worker).rule == "A7/revoked-key"


def test_benign_revocation_of_a_cross_certificate_leaves_the_direct_path(fresh: FederationWorld) -> None:
    cross = fresh.cross_sign_b_by_a()
    b_worker = fresh.b.node("w1.orgb.example", role="worker").cert
    fresh.a.root.revoke(cross, reason="cessationOfOperation")  # A stops vouching for B
    fresh.a.write_crls()
    assert Federation(policy_path=fresh.policy_path).decide(b_worker).organization == "orgb"
    fresh.write_policy(orgs=("orga",))
    assert refused(Federation(policy_path=fresh.policy_path), b_worker).rule == "A7/crl"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("version: 2\norganizations: []", "version"),
        ("version: 1\norganizations: []", "organizations"),
        ("version: 1\norganizations:\n- {name: x, bundle: orga/bundle.pem, roles: [wizard]}", "roles"),
        (
            "version: 1\norganizations:\n- {name: x, bundle: orga/bundle.pem, roles: [worker], trust: all}",
            "organizations",
        ),
        (
            "version: 1\norganizations:\n- {name: x, bundle: orga/bundle.pem, roles: [worker]}\n"
            "- {name: y, bundle: orga/bundle.pem, roles: [worker]}",
            "bundle",
        ),
    ],
)
def test_bad_policies_are_refused_with_the_field(world: FederationWorld, text: str, field: str) -> None:
    path = world.base / "bad-policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        TrustPolicy.load(path)
    assert info.value.field == field


def test_a_leaf_claiming_two_roles_is_refused(world: FederationWorld) -> None:
    """SAN role worker, OU verifier: readers could disagree on the role, so the policy refuses it."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from cyxwiz.pki import profiles
    from cyxwiz.pki.certs import Role

    ca = world.a.issuing
    base = profiles.name("two-roles", role=Role.WORKER)  # OU=worker, and the SAN says worker too
    subject = x509.Name([*base, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "verifier")])
    leaf = ca.issue(common_name="two-roles", role="worker").certificate
    forged = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(leaf.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
        .add_extension(leaf.extensions.get_extension_for_class(x509.BasicConstraints).value, critical=True)
        .add_extension(
            leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False
        )
        .sign(ca.private_key, None)
    )
    fed = Federation(policy_path=world.policy_path)
    assert fed.decide(leaf).organization == "orga"  # positive control
    err = refused(fed, forged)
    assert err.rule == "A7/role" and "several roles" in err.message


def test_an_org_crl_going_stale_at_run_time_refuses_only_that_org(fresh: FederationWorld) -> None:
    """No file changes: time passes org B's nextUpdate; check_now reports the change (live connections are
    then re-checked), org B is refused until it publishes, org A is not."""
    now = [dt.datetime.now(dt.UTC)]
    fresh.b.write_crls(days=1)
    fresh.a.write_crls(days=7)
    alerts: list[tuple[str, str]] = []
    fed = Federation(
        policy_path=fresh.policy_path, clock=lambda: now[0], on_alert=lambda a, m: alerts.append((a, m))
    )
    a_node = fresh.a.node("a-worker", role="worker").cert
    b_node = fresh.b.node("w1.orgb.example", role="worker").cert
    assert fed.decide(b_node).organization == "orgb"
    now[0] += dt.timedelta(days=2)
    assert fed.check_now()
    assert refused(fed, b_node).rule == "A7/crl"
    assert fed.decide(a_node).organization == "orga"
    assert [a for a, _ in alerts] == ["crl.stale"] and "'orgb'" in alerts[0][1]


def test_revocation_found_in_a_large_org_crl(fresh: FederationWorld) -> None:
    """5,000 entries indexed once at load: the revoked node among them is refused, its neighbour is not."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    bad = fresh.b.node("bad.orgb.example", role="worker").cert
    good = fresh.b.node("good.orgb.example", role="worker").cert
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(fresh.b.issuing.certificate.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=7))
        .add_extension(x509.CRLNumber(10**6), critical=False)
    )
    for serial in [*range(1, 5000), bad.serial_number]:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        builder = builder.add_revoked_certificate(entry.build())
    big = builder.sign(fresh.b.issuing.private_key, None)
    root = fresh.b.root.generate_crl()
    fresh.b.crl_path.write_bytes(root.public_bytes(Encoding.PEM) + big.public_bytes(Encoding.PEM))
    fed = Federation(policy_path=fresh.policy_path)
    assert refused(fed, bad).rule == "A7/crl"
    assert fed.decide(good).organization == "orgb"


def test_fetched_crls_are_checked_before_they_replace_the_file(fresh: FederationWorld) -> None:
    """A7/A6: crl_url downloads over loopback HTTP; a forged, foreign or rolled-back file is refused and
    the CRL in force stays; a fresh one is installed and reaches the federation without a restart."""
    import http.server
    import threading

    served: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        import yaml

        data = yaml.safe_load(fresh.policy_path.read_text())
        data["organizations"][1]["crl_url"] = f"http://127.0.0.1:{server.server_port}/orgb.pem"
        fresh.policy_path.write_text(yaml.safe_dump(data))
        fed = Federation(policy_path=fresh.policy_path)
        b_node = fresh.b.node("w1.orgb.example", role="worker")
        old = fresh.b.crl_path.read_bytes()
        fresh.b.issuing.revoke(b_node.cert, reason="keyCompromise")
        fresh.b.write_crls()
        newer = fresh.b.crl_path.read_bytes()
        fresh.b.crl_path.write_bytes(old)  # the file in force predates the revocation
        args = ["fetch-crls", "--policy", str(fresh.policy_path)]
        for attack in (fresh.a.crl_path.read_bytes(), b"not a crl", newer.replace(b"A", b"B", 1)):
            served["/orgb.pem"] = attack
            result = runner.invoke(certutil_app, args)
            assert result.exit_code == 1 and "orgb: refused" in result.stderr
            assert fresh.b.crl_path.read_bytes() == old
        served["/orgb.pem"] = newer
        assert runner.invoke(certutil_app, args).exit_code == 0
        assert fresh.b.crl_path.read_bytes() == newer
        fed.check_now()
        assert refused(fed, b_node.cert).rule == "A7/crl"
        served["/orgb.pem"] = old  # a rollback to the CRL from before the revocation
        assert runner.invoke(certutil_app, args).exit_code == 1
        assert fresh.b.crl_path.read_bytes() == newer
    finally:
        server.shutdown()
        server.server_close()


def test_a_certificate_the_policy_cannot_evaluate_is_refused(world: FederationWorld) -> None:
    """Fail closed: an evaluation error is a refusal naming the rule, never an exception or an accept."""
    fed = Federation(policy_path=world.policy_path)

    class Unreadable:
        def public_key(self) -> object:
            raise ValueError("garbled SubjectPublicKeyInfo")

    reason = fed.refusal(Unreadable())  # type: ignore[arg-type]
    assert reason is not None and "A7" in reason
