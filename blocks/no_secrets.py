"""The rule every cyxwiz block keeps: no secret in a Prefect block document (issue 17; SPEC F1, C3, I).

Any client of the Prefect API reads a block document's secret fields with ``include_secrets=true`` (the
open-source server has no per-client permission), and the coordinator and gateway that face nodes and
users hold that credential. A secret in a block would hand them what moves funds. These checks refuse a
document that sets a field older versions kept secrets in, or a URL that carries a password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


class SecretInBlockError(ValueError):
    """A block document carries a secret any Prefect API client could read."""


def refuse_secrets(data: Any, retired: dict[str, str]) -> Any:
    """``data`` unchanged, unless it sets a retired secret field: then a one-line reason naming the field
    and where the secret belongs instead (``retired``: field -> the setting that holds it now)."""
    if isinstance(data, dict):
        for name, instead in retired.items():
            if data.get(name) not in (None, ""):
                raise SecretInBlockError(
                    f"{name}: a Prefect block must hold no secret (any API client reads it with "
                    f"include_secrets; issue 17, F1): delete the field from the block document (save it "
                    f"again) and give the secret to the process that uses it only, in {instead}"
                )
    return data


def refuse_url_password(field: str, value: str | None, instead: str) -> str | None:
    """``value`` unless it is a URL carrying a password (``scheme://user:PASSWORD@host``)."""
    if value and urlsplit(value).password:
        raise SecretInBlockError(
            f"{field}: the URL carries a password, and a Prefect block must hold no secret (issue 17, "
            f"F1): drop it from the URL and give it to the process that uses it, in {instead}"
        )
    return value
