"""``cyxwiz token``: key ring management and token tools for operators (SPEC B).

Tokens may be passed as ``-`` to read them from stdin (argv is visible to other users via ``ps``).
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from cyxwiz._cli import new_app
from cyxwiz.errors import ConflictError, TokenError, ValidationError

app = new_app(help="JWT key ring and tokens: init, rotate, jwks, issue, inspect, verify.")

_KINDS = ("session", "job", "p2p", "refresh")


def _read_token(token: str) -> str:
    # "-" means stdin: a token on argv is visible to every local user through ps.
    return (sys.stdin.readline() if token == "-" else token).strip()  # noqa: S105


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@app.command()
def init(
    keyring: Annotated[Path, typer.Argument(help="Key ring directory to create (mode 0700).")],
    alg: Annotated[
        str, typer.Option("--alg", help="EdDSA (default) or HS256 (issuer is the sole verifier).")
    ] = "EdDSA",
    rotation_days: Annotated[
        float, typer.Option("--rotation-days", help="Days between signing-key rotations.")
    ] = 30.0,
    pkcs11: Annotated[
        str | None,
        typer.Option(
            "--pkcs11",
            help="Keep the keys in a PKCS#11 token: this URI's object= is the label prefix of every key "
            "generated there, now and at each rotation (e.g. 'pkcs11:token=cyxwiz;object=token-signing"
            "?pin-source=file:/etc/cyxwiz/hsm.pin'). The directory then holds ring.json only.",
        ),
    ] = None,
) -> None:
    """Create a key ring with one signing key."""
    from cyxwiz.tokens.keyring import DirKeyRingStore, KeyRing

    if alg not in ("EdDSA", "HS256"):
        raise ValidationError("must be EdDSA or HS256", field="alg", rule="B3")
    if (keyring / "ring.json").exists():
        raise ConflictError(
            "a key ring already exists here", path=str(keyring), hint="use `cyxwiz token rotate`"
        )
    if pkcs11 is not None:
        if alg != "EdDSA":
            raise ValidationError("a token-held ring signs with EdDSA only", field="alg", rule="B3")
        ring = KeyRing.in_token(pkcs11, rotation_period=timedelta(days=rotation_days))
        DirKeyRingStore(keyring).save(ring)
        typer.echo(f"created key ring {keyring} in the token (signing kid {ring.signing_key.kid})")
        return
    ring = KeyRing.generate(
        alg="HS256" if alg == "HS256" else "EdDSA", rotation_period=timedelta(days=rotation_days)
    )
    DirKeyRingStore(keyring).save(ring)
    typer.echo(f"created key ring {keyring} (signing kid {ring.signing_key.kid}, {alg})")


@app.command()
def rotate(
    keyring: Annotated[Path, typer.Argument(help="Key ring directory.")],
    force: Annotated[
        bool, typer.Option("--force", help="Rotate now even if the period has not passed.")
    ] = False,
) -> None:
    """Rotate the signing key when due, and drop keys whose tokens have all expired (B4)."""
    from cyxwiz.tokens.keyring import DirKeyRingStore, rotate_if_due

    report = rotate_if_due(DirKeyRingStore(keyring), force=force)
    state = "rotated" if report.rotated else "not due"
    dropped = ", ".join(report.dropped) or "none"
    typer.echo(f"{state}; signing kid {report.signing_kid}; dropped: {dropped}")


@app.command()
def jwks(
    keyring: Annotated[Path, typer.Argument(help="Key ring directory.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JWKS (public keys still needed for verification; HS256 secrets never appear)."""
    from cyxwiz.tokens.keyring import KeyRing

    text = json.dumps(KeyRing.from_dir(keyring).jwks(), indent=2)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")
        typer.echo(f"wrote {out}")


@app.command()
def issue(
    keyring: Annotated[Path, typer.Argument(help="Key ring directory.")],
    *,
    kind: Annotated[str, typer.Option("--kind", help="session | job | p2p | refresh.")] = "session",
    issuer: Annotated[str, typer.Option("--issuer")] = "cyxwiz-coordinator",
    audience: Annotated[str, typer.Option("--audience")] = "cyxwiz-api",
    user_id: Annotated[str | None, typer.Option("--user-id")] = None,
    node_id: Annotated[
        str | None, typer.Option("--node-id", help="Node id (its certificate PeerID).")
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", help="user | node | admin (default from the id given).")
    ] = None,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="Repeat for several; default: the role's.")
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job-id")] = None,
    session_id: Annotated[str | None, typer.Option("--session-id")] = None,
    cert: Annotated[
        Path | None, typer.Option("--cert", help="Bind to this certificate (cnf x5t#S256).")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option("--minutes", help="Lifetime (job: the job's duration).")
    ] = None,
) -> None:
    """Mint a token (for operators and tests; services use TokenIssuer). Prints only the token."""
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.tokens.issuer import TokenIssuer, new_id
    from cyxwiz.tokens.keyring import KeyRing

    if kind not in _KINDS:
        raise ValidationError(f"must be one of {', '.join(_KINDS)}", field="kind", rule="B1")
    tokens = TokenIssuer(keyring=KeyRing.from_dir(keyring), issuer=issuer, audience=audience)
    certificate = load_certificate(cert) if cert is not None else None
    lifetime = timedelta(minutes=minutes) if minutes is not None else None
    scopes = list(scope) if scope else None
    if kind == "session":
        issued = tokens.session(
            user_id=user_id, node_id=node_id, role=role, scopes=scopes, session_id=session_id,
            cert=certificate, lifetime=lifetime,
        )  # fmt: skip
    elif kind == "job":
        if node_id is None or job_id is None or certificate is None or lifetime is None:
            raise ValidationError("job tokens need --node-id, --job-id, --cert and --minutes", field="kind")
        issued = tokens.job(node_id=node_id, job_id=job_id, cert=certificate, duration=lifetime)
    elif kind == "p2p":
        if node_id is None:
            raise ValidationError("p2p tokens need --node-id (the node to talk to)", field="node_id")
        subject = user_id or ""
        issued = tokens.p2p(
            subject=subject, user_id=user_id, node_id=node_id, job_id=job_id, cert=certificate
        )
    else:
        issued = tokens.refresh(
            session_id=session_id or new_id(), user_id=user_id, node_id=node_id, role=role,
            scopes=scopes or [], cert=certificate,
        )  # fmt: skip
    typer.echo(issued.token)


@app.command()
def inspect(token: Annotated[str, typer.Argument(help="The token, or - to read it from stdin.")]) -> None:
    """Show a token's header and claims WITHOUT verifying anything."""
    import jwt

    raw = _read_token(token)
    try:
        header = jwt.get_unverified_header(raw)
        claims = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError(f"cannot decode: {exc}", field="token", rule="B1") from None
    _echo_json({"UNVERIFIED": True, "header": header, "claims": claims})


@app.command()
def verify(
    token: Annotated[str, typer.Argument(help="The token, or - to read it from stdin.")],
    *,
    kind: Annotated[str, typer.Option("--kind", help="session | job | p2p | refresh.")],
    keyring: Annotated[
        Path | None, typer.Option("--keyring", help="Verify with this key ring directory.")
    ] = None,
    jwks_file: Annotated[Path | None, typer.Option("--jwks", help="Verify with this JWKS file.")] = None,
    issuer: Annotated[str, typer.Option("--issuer")] = "cyxwiz-coordinator",
    audience: Annotated[str, typer.Option("--audience")] = "cyxwiz-api",
    cert: Annotated[
        Path | None, typer.Option("--cert", help="The presenting peer's certificate (bound tokens).")
    ] = None,
) -> None:
    """Verify a token fully (signature, kind, claims, binding) and print its claims."""
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.tokens.keyring import KeyRing
    from cyxwiz.tokens.kinds import TokenKind
    from cyxwiz.tokens.verifier import TokenVerifier

    if kind not in _KINDS:
        raise ValidationError(f"must be one of {', '.join(_KINDS)}", field="kind", rule="B1")
    if (keyring is None) == (jwks_file is None):
        raise ValidationError("give exactly one of --keyring or --jwks", field="keyring")
    if keyring is not None:
        verifier = TokenVerifier.from_keyring(KeyRing.from_dir(keyring), issuer=issuer, audience=audience)
    else:
        assert jwks_file is not None
        verifier = TokenVerifier.from_jwks_file(jwks_file, issuer=issuer, audience=audience)
    peer = load_certificate(cert) if cert is not None else None
    verified = verifier.verify(_read_token(token), kind=TokenKind(kind), peer_cert=peer, one_shot=False)
    _echo_json({"valid": True, "kind": kind, "kid": verified.kid, "claims": dict(verified.claims)})
