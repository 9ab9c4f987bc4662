"""``cyxwiz keys``: generate in the token, show (with a signing self-test), refusals without traceback."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cyxwiz.keys.cli import app
from tests._softhsm import HsmToken

runner = CliRunner()


def test_generate_and_show_a_token_key(softhsm: HsmToken) -> None:
    uri = softhsm.new_uri("cli")
    made = runner.invoke(app, ["generate", "--uri", uri])
    assert made.exit_code == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["kind"] == "pkcs11" and info["protection"]["extractable"] is False
    from solders.pubkey import Pubkey

    assert bytes(Pubkey.from_string(info["solana_pubkey"])).hex() == info["public_key_hex"]
    shown = runner.invoke(app, ["show", "--uri", uri])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["public_key_hex"] == info["public_key_hex"]
    assert softhsm.pin not in made.stdout + made.stderr + shown.stdout + shown.stderr


def test_refusals_are_one_line(softhsm: HsmToken, tmp_path: Path) -> None:
    again = runner.invoke(app, ["generate", "--uri", softhsm.token.uri("dup")])
    assert again.exit_code == 0
    dup = runner.invoke(app, ["generate", "--uri", softhsm.token.uri("dup")])
    pin_in_uri = runner.invoke(app, ["show", "--uri", "pkcs11:token=cyxwiz-test;object=x?pin-value=1234"])
    for result in (dup, pin_in_uri):
        assert result.exit_code != 0 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ")
    assert "1234" not in pin_in_uri.stderr
