"""Two organizations, each root → issuing CA, with a trust policy file (A7, C1): org A may certify every
role, org B workers only and only under ``.orgb.example``. Built through the library's own CA code."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509

from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.certs import certificates_pem, write_certificate
from cyxwiz.pki.keys import write_private_key

ALL_ROLES = ["gateway", "coordinator", "scheduler", "worker", "data", "verifier", "user"]


@dataclass
class Node:
    cert_path: Path
    key_path: Path
    cert: x509.Certificate


@dataclass
class Org:
    name: str
    root: CertificateAuthority
    issuing: CertificateAuthority
    dir: Path
    extra_cas: list[x509.Certificate] = field(default_factory=list)  # cross-certificates it issued

    @property
    def bundle_path(self) -> Path:
        return self.dir / "bundle.pem"

    @property
    def crl_path(self) -> Path:
        return self.dir / "crls.pem"

    def write_bundle(self) -> None:
        cas = [self.issuing.certificate, *self.extra_cas, self.root.certificate]
        self.bundle_path.write_bytes(certificates_pem(cas))

    def write_crls(
        self,
        *,
        now: dt.datetime | None = None,
        days: int = 7,
        extra: tuple[x509.CertificateRevocationList, ...] = (),
    ) -> None:
        """The CRLs of both of its CAs in one file, replaced atomically (what an org publishes); ``extra``:
        CRLs of CAs it cross-certified, which it republishes."""
        crls = [ca.generate_crl(days=days, now=now) for ca in (self.root, self.issuing)] + list(extra)
        from cryptography.hazmat.primitives.serialization import Encoding

        tmp = self.crl_path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in crls))
        tmp.replace(self.crl_path)

    def node(
        self,
        name: str,
        *,
        role: str,
        server: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> Node:
        issued = self.issuing.issue(
            common_name=name, role=role, server=server, dns_names=dns, ip_addresses=ips
        )
        cert_path, key_path = self.dir / f"{name}-cert.pem", self.dir / f"{name}-key.pem"
        assert issued.private_key is not None
        write_private_key(key_path, issued.private_key, overwrite=True)
        write_certificate(cert_path, issued.certificate, overwrite=True)
        return Node(cert_path=cert_path, key_path=key_path, cert=issued.certificate)


def make_org(base: Path, name: str) -> Org:
    directory = base / name
    directory.mkdir(parents=True)
    root = CertificateAuthority.create_root(
        cert_path=directory / "root-ca-cert.pem",
        key_path=directory / "root-ca-key.pem",
        common_name=f"{name} Root CA",
        organization=name,
    )
    issuing = root.create_intermediate(
        cert_path=directory / "issuing-ca-cert.pem",
        key_path=directory / "issuing-ca-key.pem",
        common_name=f"{name} Issuing CA",
        organization=name,
    )
    org = Org(name=name, root=root, issuing=issuing, dir=directory)
    org.write_bundle()
    org.write_crls()
    return org


@dataclass
class FederationWorld:
    base: Path
    a: Org
    b: Org
    #: further organizations (workers under .<name>.example only), listed when ``write_policy(extra=...)``
    extra: dict[str, Org] = field(default_factory=dict)

    @property
    def policy_path(self) -> Path:
        return self.base / "trust-policy.yaml"

    def write_policy(
        self,
        *,
        orgs: tuple[str, ...] = ("orga", "orgb"),
        b_roles: tuple[str, ...] = ("worker",),
        extra: tuple[str, ...] = (),
    ) -> None:
        entries = []
        if "orga" in orgs:
            entries.append(
                {"name": "orga", "bundle": "orga/bundle.pem", "crl": "orga/crls.pem", "roles": ALL_ROLES}
            )
        if "orgb" in orgs:
            entries.append(
                {
                    "name": "orgb",
                    "bundle": "orgb/bundle.pem",
                    "crl": "orgb/crls.pem",
                    "roles": list(b_roles),
                    "names": [".orgb.example"],
                }
            )
        for name in extra:
            entries.append(
                {"name": name, "bundle": f"{name}/bundle.pem", "crl": f"{name}/crls.pem", "roles": ["worker"],
                 "names": [f".{name}.example"]}
            )  # fmt: skip
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"version": 1, "organizations": entries}))
        tmp.replace(self.policy_path)

    def cross_sign_b_by_a(self) -> x509.Certificate:
        """Org A's root certifies org B's issuing CA (same subject and key): a second path for B's nodes."""
        cross = self.a.root.cross_sign(self.b.issuing.certificate)
        self.a.extra_cas.append(cross)
        self.a.write_bundle()
        return cross


def make_world(base: Path) -> FederationWorld:
    world = FederationWorld(base=base, a=make_org(base, "orga"), b=make_org(base, "orgb"))
    world.write_policy()
    return world
