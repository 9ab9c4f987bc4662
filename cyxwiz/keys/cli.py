"""``cyxwiz keys``: long-lived signing keys in files or PKCS#11 tokens (SPEC A7).

Keys are named by a file path or an RFC 7512 URI (``pkcs11:token=cyxwiz;object=issuing-ca``); the PIN
comes from ``?pin-source=file:...``/``env:NAME`` or ``CYXWIZ_PKCS11_PIN``, never from the URI or a flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cyxwiz._cli import new_app

app = new_app(help="Long-lived Ed25519 signing keys: sealed 0600 files or keys inside a PKCS#11 token.")

Ref = Annotated[str, typer.Option("--uri", "--key", help="A pkcs11: URI or the path of a PKCS#8 key file.")]


def _describe(source: object) -> dict[str, object]:
    from cryptography.hazmat.primitives import serialization
    from solders.pubkey import Pubkey

    from cyxwiz.keys import KeySource, public_raw
    from cyxwiz.keys.pkcs11 import Pkcs11KeySource

    assert isinstance(source, KeySource)
    info: dict[str, object] = {
        "kind": source.kind,
        "uri": source.uri,
        "public_key_hex": public_raw(source).hex(),
        # The same key as a Solana address (base58): what an escrow multisig lists as its authority.
        "solana_pubkey": str(Pubkey.from_bytes(public_raw(source))),
        "public_key_pem": source.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    }
    if isinstance(source, Pkcs11KeySource):
        info["protection"] = source.attributes()
    return info


@app.command("generate")
def generate(*, ref: Ref) -> None:
    """Create a key: inside the token for a pkcs11: URI (sensitive, never extractable), else a 0600 file.

    Example:
      cyxwiz keys generate --uri 'pkcs11:token=cyxwiz;object=audit-checkpoint?pin-source=file:/etc/cyxwiz/pin'
    """
    from cyxwiz.keys import create_key_source

    typer.echo(json.dumps(_describe(create_key_source(ref)), indent=2))


@app.command("show")
def show(*, ref: Ref) -> None:
    """Open a key, sign one test message with it, and print its public key (and token protection flags).

    Example:
      cyxwiz keys show --uri 'pkcs11:token=cyxwiz;object=issuing-ca'
    """
    import os

    from cyxwiz.keys import checked_signature, open_key_source

    source = open_key_source(ref)
    checked_signature(source, os.urandom(32))
    typer.echo(json.dumps(_describe(source), indent=2))


@app.command("init-softhsm")
def init_softhsm(
    *,
    directory: Annotated[Path, typer.Option("--dir", help="Directory for the token (created 0700).")],
    label: Annotated[str, typer.Option("--label", help="Token label (the URI's token=).")] = "cyxwiz",
) -> None:
    """Development only: a SoftHSM2 token in DIR with a random PIN in a 0600 file.

    Prints the SOFTHSM2_CONF to export and a URI template. Production tokens are initialised by their
    security officers with the vendor's tools.
    """
    import secrets

    from cyxwiz.keys.softhsm import init_token

    typer.secho(
        "warning: a development SoftHSM2 token (software keys, for tests and demos)", err=True, fg="yellow"
    )
    token = init_token(directory, label=label, pin=secrets.token_hex(8), so_pin=secrets.token_hex(16))
    typer.echo(f"export SOFTHSM2_CONF={token.conf}")
    typer.echo(f"key URI: {token.uri('<object>')}")
