"""A user's client for the coordinator API: login with a user certificate, then jobs and wallet (SPEC C1, D1).

The user certificate authenticates ``POST /v1/auth/login`` over TLS 1.3; the session token it returns
authorizes every later call. Refusals come back as problem+json and are raised as the matching error of
the one hierarchy (401 → AuthenticationError, 403 → AuthorizationError, 404 → NotFoundError, 4xx
validation → ValidationError), so the CLI prints one line and picks the exit code from the type.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from cyxwiz.errors import (
    AuthenticationError,
    AuthorizationError,
    CertificateError,
    ConfigError,
    ConflictError,
    CyxwizError,
    IntegrityError,
    NotFoundError,
    RateLimitError,
    ValidationError,
)

if TYPE_CHECKING:
    from cyxwiz.jobs.wallet import UserWallet

#: A job in one of these states never changes again; ``wait`` stops there.
TERMINAL_STATUSES = frozenset(
    {"released", "refunded", "completed", "failed", "cancelled", "disputed", "expired"}
)
#: Terminal states where the user got what they paid for.
SUCCESS_STATUSES = frozenset({"released", "completed"})

ENV_URL = "CYXWIZ_COORDINATOR_URL"
ENV_CERT = "CYXWIZ_USER_CERT"
ENV_KEY = "CYXWIZ_USER_KEY"
ENV_BUNDLE = "CYXWIZ_CA_BUNDLE"
ENV_CRL = "CYXWIZ_CRL"

_BY_STATUS: dict[int, type[CyxwizError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthorizationError,
    404: NotFoundError,
    409: ConflictError,
    413: ValidationError,
    422: ValidationError,
    429: RateLimitError,
}


class WaitTimeoutError(CyxwizError):
    """The job was still running when the wait ran out of time (the job itself is untouched)."""

    code = "wait-timeout"
    http_status = 504


def _problem(response: httpx.Response) -> CyxwizError:
    """The server's problem+json refusal as a typed error (title and detail in one line)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return CyxwizError(f"coordinator answered HTTP {response.status_code} without a problem body")
    title = str(body.get("title") or response.reason_phrase or "refused")
    detail = str(body.get("detail") or "")
    cls = _BY_STATUS.get(response.status_code, CyxwizError)
    field, rule = body.get("field"), body.get("rule")
    return cls(
        f"coordinator refused ({response.status_code} {title}): {detail}".rstrip(": "),
        field=str(field) if field else None,
        rule=str(rule) if rule else None,
    )


def _job_id(job_id: str) -> str:
    if not job_id or "/" in job_id or len(job_id) > 128:
        raise ValidationError("not a job id", field="job_id")
    return job_id


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return Path(value).expanduser() if value not in (None, "") else None


def _existing(path: Path | None, what: str, env_name: str) -> Path | None:
    if path is not None and not path.is_file():
        raise ConfigError(f"{what} not found", path=str(path), field=env_name)
    return path


def _subject_of(token: str) -> str | None:
    """The ``user_id`` claim of our own session token (read, not verified: it only labels our lock)."""
    import base64
    import json

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    user = claims.get("user_id") if isinstance(claims, dict) else None
    return user if isinstance(user, str) else None


class CoordinatorUserClient:
    """HTTPS client for the user endpoints. Logs in lazily once; re-logs in once if the session expires."""

    def __init__(
        self,
        *,
        url: str,
        ca_bundle: Path,
        cert: Path | None,
        key: Path | None,
        crl: Path | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if not url.startswith("https://"):
            # A user session token is a bearer secret: it never crosses a plain connection (D1).
            raise ConfigError("the coordinator URL must be https://", field=ENV_URL, rule="D1")
        if cert is None or key is None:
            raise AuthenticationError(
                "no user certificate: the coordinator logs users in by their client certificate",
                field="certificate",
                rule="C1",
                hint=f"pass --cert and --key or set {ENV_CERT} and {ENV_KEY}",
            )
        _existing(cert, "user certificate", ENV_CERT)
        _existing(key, "user key", ENV_KEY)
        _existing(ca_bundle, "CA bundle", ENV_BUNDLE)
        _existing(crl, "CRL", ENV_CRL)
        from cyxwiz.transport.tls import client_context

        self.url = url.rstrip("/")
        context = client_context(trust_bundle=ca_bundle, cert=cert, key=key, crl=crl)
        self._http = httpx.Client(base_url=self.url, verify=context, timeout=timeout_s)
        self._token: str | None = None
        self._user_id: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        url: str | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        crl: str | os.PathLike[str] | None = None,
        timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> CoordinatorUserClient:
        """Explicit values first, then ``CYXWIZ_COORDINATOR_URL``, ``CYXWIZ_USER_CERT``, ``CYXWIZ_USER_KEY``,
        ``CYXWIZ_CA_BUNDLE``, ``CYXWIZ_CRL``."""
        env = os.environ if env is None else env
        url = url or env.get(ENV_URL) or None
        if url is None:
            raise ConfigError(
                "no coordinator URL", field=ENV_URL, hint=f"pass --coordinator or set {ENV_URL}"
            )
        bundle = _path(ca_bundle) or _path(env.get(ENV_BUNDLE))
        if bundle is None:
            raise ConfigError(
                "no CA bundle to verify the coordinator with",
                field=ENV_BUNDLE,
                rule="D1",
                hint=f"pass --ca-bundle or set {ENV_BUNDLE}",
            )
        return cls(
            url=url,
            ca_bundle=bundle,
            cert=_path(cert) or _path(env.get(ENV_CERT)),
            key=_path(key) or _path(env.get(ENV_KEY)),
            crl=_path(crl) or _path(env.get(ENV_CRL)),
            timeout_s=timeout_s,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CoordinatorUserClient:
        return cls.from_options(env=env)

    # --- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CoordinatorUserClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: httpx.TransportError) -> CyxwizError:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return CertificateError(
                f"the coordinator's certificate failed verification: {cause.verify_message}",
                field=ENV_BUNDLE,
                rule="D1",
            )
        if isinstance(cause, ssl.SSLError):
            # The server refusing our certificate (revoked, wrong CA) surfaces as a TLS alert.
            reason = cause.reason or str(cause)
            return AuthenticationError(
                f"TLS refused by the coordinator: {reason}", field="certificate", rule="D1"
            )
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            # TLS 1.3: the client's handshake completes before the server checks the client certificate,
            # so a refused (revoked, expired, foreign) certificate shows up as a connection closed unanswered.
            return AuthenticationError(
                "the coordinator closed the connection without answering: "
                "it most likely refused the user certificate (revoked, expired or from another CA)",
                field="certificate",
                rule="D1",
            )
        return CyxwizError(
            f"cannot reach the coordinator at {self.url}: {exc or type(exc).__name__}", field=ENV_URL
        )

    def user_id(self) -> str:
        """Who the coordinator knows this client as (the user certificate's CN): the owner a lock names."""
        if self._user_id is None:
            self.login()
        assert self._user_id is not None
        return self._user_id

    def login(self) -> str:
        """``POST /v1/auth/login`` with the user certificate; returns (and keeps) the session token."""
        response = self._send("POST", "/v1/auth/login")
        if response.status_code != 200:
            raise _problem(response)
        self._token = str(response.json()["session_token"])
        self._user_id = _subject_of(self._token)
        return self._token

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in (1, 2):
            token = self._token or self.login()
            response = self._send(method, path, headers={"authorization": f"Bearer {token}"}, **kwargs)
            if response.status_code == 401 and attempt == 1:
                self._token = None  # session expired or revoked: one fresh login, then give up
                continue
            if response.status_code >= 400:
                raise _problem(response)
            return response.json()
        raise AssertionError("unreachable")

    # --- user endpoints ---------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any], *, wallet: UserWallet | None = None) -> dict[str, Any]:
        """Submit ``spec``; with ``wallet``, first sign the job's escrow lock here, on the user's machine
        (F1: the control plane never holds the user's key; it only sends these signed bytes)."""
        if wallet is not None and spec.get("funding") is None:
            from cyxwiz.ledger.client_funding import FundingTerms

            terms = FundingTerms.from_dict(self.funding_terms())
            spec = wallet.fund_spec(spec, terms, user=self.user_id())
        return dict(self._call("POST", "/v1/jobs", json={"spec": dict(spec)}))

    def fund(self, job_id: str, *, wallet: UserWallet) -> dict[str, Any]:
        """Sign the escrow lock of a job whose lifecycle run waits for it (started from the Prefect UI
        without funding) here, with the user's own key, and hand it in (F1)."""
        from cyxwiz.ledger.client_funding import FundingTerms

        job = self.get_job(job_id)
        payment = (job.get("spec") or {}).get("payment")
        if not isinstance(payment, int) or isinstance(payment, bool):
            raise ValidationError("the job names no payment", field="spec.payment", rule="F3")
        terms = FundingTerms.from_dict(self.funding_terms())
        funding = wallet.fund(terms, job_id=job_id, amount=payment, user=self.user_id())
        return dict(
            self._call("POST", f"/v1/jobs/{_job_id(job_id)}/funding", json={"funding": funding.to_dict()})
        )

    def funding_terms(self) -> dict[str, Any]:
        """``GET /v1/wallet/terms``: the public values a lock is signed against."""
        return dict(self._call("GET", "/v1/wallet/terms"))

    def list_jobs(self) -> list[dict[str, Any]]:
        return [dict(j) for j in self._call("GET", "/v1/jobs")]

    def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/jobs/{_job_id(job_id)}"))

    def wallet(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/wallet"))

    def archives(self, job_id: str | None = None) -> Any:
        """``GET /v1/archive`` (all of the caller's jobs) or one job's archived artifacts."""
        if job_id is None:
            return [dict(a) for a in self._call("GET", "/v1/archive")]
        return dict(self._call("GET", f"/v1/jobs/{_job_id(job_id)}/archive"))

    def download_archived(self, job_id: str, name: str, dest: Path) -> str:
        """Save one archived artifact to ``dest`` (0600) once its SHA-256 matches what the archive lists
        (D3); returns that hash. Nothing is left at ``dest`` otherwise."""
        import hashlib

        listed = {o["name"]: o for o in self.archives(job_id)["objects"]}
        if name not in listed:
            raise NotFoundError("no such object in the job's archive", field="name", rule="C2")
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        path = f"/v1/jobs/{_job_id(job_id)}/archive/{name}"
        try:
            headers = {"authorization": f"Bearer {self._token or self.login()}"}
            with self._http.stream("GET", path, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _problem(response)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    try:
                        for chunk in response.iter_bytes():
                            digest.update(chunk)
                            out.write(chunk)
                    except httpx.TransportError:
                        # The answer had started: the store's check failed at the end and the
                        # coordinator cut the body short rather than hand over an unchecked one.
                        raise IntegrityError(
                            "the coordinator cut the body short: the stored object failed its check",
                            field=name,
                            rule="D3",
                        ) from None
        except httpx.TransportError as exc:
            tmp.unlink(missing_ok=True)
            raise self._transport_error(exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != listed[name]["sha256"]:
            tmp.unlink(missing_ok=True)
            raise IntegrityError("downloaded bytes do not match the archive's SHA-256", field=name, rule="D3")
        os.replace(tmp, dest)
        return digest.hexdigest()

    def dispute(self, job_id: str, *, kind: str, reason: str = "", **detail: Any) -> dict[str, Any]:
        """Dispute a verified job while its release is held (issue 20): ``kind`` ``segment`` with
        ``segment_start`` (the only evidence the coordinator accepts)."""
        body = {"kind": kind, "reason": reason, **detail}
        return dict(self._call("POST", f"/v1/jobs/{_job_id(job_id)}/dispute", json=body))

    def upload_dataset(self, path: Path) -> dict[str, str]:
        """Put a local dataset file into the caller's own area of the object store (G1, D3).

        The file is hashed here; the coordinator grants a PUT bound to that hash and size, so the store
        refuses any other body (a file changed after hashing too). Returns ``{uri, sha256}`` for the spec.
        """
        from cyxwiz.datasets.ingest import file_chunks, hash_file, suffix_of

        sha256, size = hash_file(path)
        grant = self._call(
            "POST", "/v1/datasets", json={"sha256": sha256, "size": size, "suffix": suffix_of(path)}
        )
        upload = grant["upload"]
        headers = {str(k): str(v) for k, v in dict(upload.get("headers") or {}).items()}
        url = str(upload["url"])
        # Our own store's URLs are served by the coordinator (verified with our CA bundle); an S3 endpoint
        # is verified against the system's trust store.
        own = url.startswith(self.url + "/")
        http = self._http if own else httpx.Client(timeout=self._http.timeout)
        try:
            response = http.put(url, content=file_chunks(path), headers=headers)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        finally:
            if not own:
                http.close()
        if response.status_code >= 300:
            raise _problem(response)
        return {"uri": str(grant["uri"]), "sha256": sha256}

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        interval_s: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job until a terminal status; ``on_update`` sees every answer. Raises
        :class:`WaitTimeoutError` after ``timeout_s`` (the job keeps running)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.get("status") in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job is still {job.get('status')} after {timeout_s:g} s",
                    field="job_id",
                    hint=f"cyxwiz job wait {job_id} to keep following it",
                )
            pause = interval_s if deadline is None else min(interval_s, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
