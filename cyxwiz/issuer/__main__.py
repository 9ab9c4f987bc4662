"""``python -m cyxwiz.issuer serve``: the issuer service (its own process, the CA key's only holder)."""

from cyxwiz.issuer.cli import app

app(prog_name="cyxwiz-issuer")
