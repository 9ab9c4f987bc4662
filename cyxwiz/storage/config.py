"""Pick a store from a URL or the environment: ``s3://bucket/prefix``, ``file:///dir`` or a directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from cyxwiz.errors import ConfigError
from cyxwiz.storage.base import BaseObjectStore
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.local import ROOT_ENV, LocalObjectStore

STORE_URL_ENV = "CYXWIZ_STORE_URL"


def open_store(url: str | None = None, *, environ: Mapping[str, str] | None = None) -> BaseObjectStore:
    """The store named by ``url``, else ``CYXWIZ_STORE_URL``, else ``CYXWIZ_S3_BUCKET`` (S3 from the
    environment), else ``CYXWIZ_STORE_ROOT`` (local directory). The master key always comes from
    ``CYXWIZ_STORE_MASTER_KEY`` / ``CYXWIZ_STORE_MASTER_KEY_FILE``."""
    env = dict(os.environ if environ is None else environ)
    url = url or env.get(STORE_URL_ENV) or None
    if url is None:
        if env.get("CYXWIZ_S3_BUCKET"):
            from cyxwiz.storage.s3 import S3ObjectStore

            return S3ObjectStore.from_env(env)
        if env.get(ROOT_ENV):
            return LocalObjectStore.from_env(env)
        raise ConfigError(
            "no object store configured",
            field="store",
            hint=f"pass --store s3://bucket/prefix or a directory, or set {STORE_URL_ENV}",
        )
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError("s3:// URL needs a bucket", field="store")
        from cyxwiz.storage.s3 import S3ObjectStore

        env.update(CYXWIZ_S3_BUCKET=parts.netloc, CYXWIZ_S3_PREFIX=parts.path.lstrip("/"))
        return S3ObjectStore.from_env(env)
    if parts.scheme in ("file", ""):
        root = parts.path if parts.scheme == "file" else url
        if not root:
            raise ConfigError("file:// URL needs a path", field="store")
        return LocalObjectStore(root=root, master_key=MasterKey.from_env(env))
    raise ConfigError(f"unsupported store scheme {parts.scheme!r} (s3 or file)", field="store")
