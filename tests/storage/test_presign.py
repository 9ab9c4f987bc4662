"""Job-scoped presigned URLs, local (HMAC, served by the coordinator) and S3 (SigV4) — SPEC C3, D3.

Every attack asserts the precise refusal: PresignError (HTTP 403) for a tampered, expired, re-targeted
or re-purposed URL; IntegrityError for a body other than the one bound into the URL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from cyxwiz.errors import IntegrityError, PresignError, ValidationError
from cyxwiz.storage import LocalObjectStore, layout
from cyxwiz.storage.presign import (
    S3Presigner,
    check_job_scope,
    presign_job_inputs,
    presign_job_output,
    verify_s3_presigned,
)
from cyxwiz.storage.s3 import S3ObjectStore
from cyxwiz.storage.urlsign import HttpResponse, LocalPresigner, UrlSigner, asgi_app, handle_presigned

DATA = b"training inputs " * 64
MODEL = b"trained weights " * 64
SHA = hashlib.sha256(MODEL).hexdigest()

JA = "job-" + "a" * 20  # canonical job ids (cyxwiz.ids.JOB_ID)
JB = "job-" + "b" * 20


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def local(local_store: LocalObjectStore, clock: Clock) -> tuple[LocalObjectStore, UrlSigner, LocalPresigner]:
    assert local_store.master_key is not None
    signer = UrlSigner.from_master_key(
        local_store.master_key, base_url="https://coord:8443/store", clock=clock
    )
    return local_store, signer, LocalPresigner(store=local_store, signer=signer)


def _call(
    store: LocalObjectStore, signer: UrlSigner, method: str, url: str, body: bytes = b""
) -> HttpResponse:
    parts = urlsplit(url)
    key = parts.path.removeprefix("/store/")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return handle_presigned(store, signer, method=method, key=key, query=query, body=body)


def _body(response: HttpResponse) -> bytes:
    return response.body if isinstance(response.body, bytes) else b"".join(response.body)


def _problem(response: HttpResponse) -> dict[str, object]:
    return dict(json.loads(_body(response)))


def test_local_get_inputs_and_put_output(local: tuple[LocalObjectStore, UrlSigner, LocalPresigner]) -> None:
    store, signer, presigner = local
    store.put_bytes(layout.job_input(JA, "train.npz"), DATA)
    urls = presign_job_inputs(presigner, JA, ["train.npz"])
    req = urls["train.npz"]
    assert req.sha256 == hashlib.sha256(DATA).hexdigest()
    response = _call(store, signer, "GET", req.url)
    assert response.status == 200 and _body(response) == DATA
    put = presign_job_output(presigner, JA, "model.safetensors", sha256=SHA, size=len(MODEL))
    assert put.key == layout.job_output(JA, "model.safetensors")
    response = _call(store, signer, "PUT", put.url, MODEL)
    assert response.status == 201
    assert store.get_bytes(put.key) == MODEL
    assert put.key in store.read_manifest(layout.job_manifest(JA))


@pytest.mark.parametrize(
    ("attack", "method", "rewrite"),
    [
        ("other job", "PUT", lambda u: u.replace(f"/jobs/{JA}/", f"/jobs/{JB}/")),
        ("other name", "PUT", lambda u: u.replace("model.safetensors", "model2.safetensors")),
        ("later expiry", "PUT", lambda u: u.replace("exp=17", "exp=27")),
        ("other hash", "PUT", lambda u: u.replace(f"sha256={SHA[:4]}", "sha256=0000")),
        ("flipped signature", "PUT", lambda u: u[:-2] + ("A" if u[-2] != "A" else "B") + u[-1]),
        ("dropped signature", "PUT", lambda u: u.split("&sig=")[0]),
        ("extra parameter", "PUT", lambda u: u + "&admin=1"),
        ("PUT URL used to GET", "GET", lambda u: u),
    ],
)
def test_local_tampered_url_refused(
    local: tuple[LocalObjectStore, UrlSigner, LocalPresigner], attack: str, method: str, rewrite: object
) -> None:
    store, signer, presigner = local
    put = presign_job_output(presigner, JA, "model.safetensors", sha256=SHA, size=len(MODEL))
    response = _call(store, signer, method, rewrite(put.url), MODEL)  # type: ignore[operator]
    assert response.status == 403, attack
    assert _problem(response)["type"] == "presign"
    assert store.list("jobs/") == []  # nothing written anywhere


def test_local_expired_url_refused(
    local: tuple[LocalObjectStore, UrlSigner, LocalPresigner], clock: Clock
) -> None:
    store, signer, presigner = local
    put = presign_job_output(presigner, JA, "m", sha256=SHA, size=len(MODEL), expires_in=60)
    clock.now += 61
    response = _call(store, signer, "PUT", put.url, MODEL)
    assert response.status == 403 and "expired" in str(_problem(response)["title"])
    with pytest.raises(PresignError, match="expired"):
        signer.verify("PUT", put.key, dict(parse_qsl(urlsplit(put.url).query)))


def test_local_wrong_body_refused(local: tuple[LocalObjectStore, UrlSigner, LocalPresigner]) -> None:
    store, signer, presigner = local
    put = presign_job_output(presigner, JA, "m", sha256=SHA, size=len(MODEL))
    evil = MODEL[:-1] + b"!"
    response = _call(store, signer, "PUT", put.url, evil)
    assert response.status == 400 and _problem(response)["type"] == "integrity"
    assert store.list("jobs/") == []


def test_scope_rules() -> None:
    with pytest.raises(PresignError, match=f"outside job '{JA}'"):
        check_job_scope(layout.job_output(JB, "m"), job_id=JA, method="PUT")
    with pytest.raises(PresignError, match="outside"):
        check_job_scope(layout.job_output(JA, "m"), job_id=JA, method="GET")  # nodes never read outputs
    with pytest.raises(PresignError):
        check_job_scope(layout.job_input(JA, "m"), job_id=JA, method="DELETE")
    with pytest.raises(ValidationError):
        check_job_scope(f"jobs/{JA}/outputs/../../{JB}/outputs/m", job_id=JA, method="PUT")


def test_presign_refusals(local: tuple[LocalObjectStore, UrlSigner, LocalPresigner]) -> None:
    store, signer, presigner = local
    store.put_bytes(layout.job_input(JA, "secret"), DATA, encrypt=True)
    with pytest.raises(PresignError, match="encrypted"):
        presign_job_inputs(presigner, JA, ["secret"])
    with pytest.raises(ValidationError) as err:
        presign_job_output(presigner, JA, "m", sha256=SHA, size=1, expires_in=7200)
    assert err.value.field == "expires_in"
    with pytest.raises(ValidationError) as err:
        presign_job_output(presigner, JA, "m", sha256="nothex", size=1)
    assert err.value.field == "sha256"
    with pytest.raises(ValidationError):
        presign_job_output(presigner, JA, "../../B/outputs/m", sha256=SHA, size=1)
    with pytest.raises(PresignError, match="bound to sha256"):
        signer.sign("PUT", layout.job_output(JA, "m"))


def test_local_asgi_app(local: tuple[LocalObjectStore, UrlSigner, LocalPresigner]) -> None:
    store, signer, presigner = local
    store.put_bytes(layout.job_input(JA, "train.npz"), DATA)
    app = asgi_app(store=store, signer=signer, mount="/store")
    get = presign_job_inputs(presigner, JA, ["train.npz"])["train.npz"]
    put = presign_job_output(presigner, JA, "m", sha256=SHA, size=len(MODEL))

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://coord:8443") as client:
            return [
                await client.get(get.url),
                await client.put(put.url, content=MODEL),
                await client.put(put.url, content=MODEL + b"more"),  # over the bound size
                await client.put(put.url.replace(f"/jobs/{JA}/", f"/jobs/{JB}/"), content=MODEL),
                await client.get("https://coord:8443/elsewhere"),
            ]

    got, stored, too_big, other_job, elsewhere = asyncio.run(scenario())
    assert got.status_code == 200 and got.content == DATA
    assert got.headers["x-cyxwiz-sha256"] == hashlib.sha256(DATA).hexdigest()
    assert stored.status_code == 201 and store.get_bytes(put.key) == MODEL
    assert too_big.status_code == 400
    assert other_job.status_code == 403 and other_job.json()["type"] == "presign"
    assert elsewhere.status_code == 404
    assert store.list("jobs/B/") == []


# -- S3 (moto server over HTTP) ---------------------------------------------------------------------------


def test_s3_presigned_get_and_put(s3_store: S3ObjectStore) -> None:
    presigner = S3Presigner(store=s3_store)
    s3_store.put_bytes(layout.job_input(JA, "train.npz"), DATA)
    get = presign_job_inputs(presigner, JA, ["train.npz"], expires_in=60)["train.npz"]
    response = httpx.get(get.url)
    assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == get.sha256
    put = presign_job_output(presigner, JA, "model", sha256=SHA, size=len(MODEL), expires_in=60)
    assert "x-amz-checksum-sha256" in put.headers and "x-amz-meta-cyxwiz-tag" in put.headers
    signed = dict(parse_qsl(urlsplit(put.url).query))["X-Amz-SignedHeaders"].split(";")
    assert {"x-amz-checksum-sha256", "content-length", "x-amz-meta-cyxwiz-sha256"} <= set(signed)
    assert httpx.put(put.url, content=MODEL, headers=dict(put.headers)).status_code == 200
    info = s3_store.adopt(put.key)  # verified and entered in the job manifest
    assert info.sha256 == SHA and s3_store.get_bytes(put.key) == MODEL
    assert s3_store.head_raw(put.key)["ServerSideEncryption"] == "AES256"
    assert verify_s3_presigned(s3_store, method="PUT", url=put.url, headers=put.headers) == put.key


def test_s3_presigned_put_of_other_body_is_refused_on_read(s3_store: S3ObjectStore) -> None:
    presigner = S3Presigner(store=s3_store)
    put = presign_job_output(presigner, JA, "model", sha256=SHA, size=len(MODEL), expires_in=60)
    evil = MODEL.replace(b"trained", b"TRAINED")
    # moto stores it regardless of the signed x-amz-checksum-sha256 (AWS refuses with BadDigest) ...
    httpx.put(put.url, content=evil, headers=dict(put.headers))
    # ... so our verified read is what refuses it.
    with pytest.raises(IntegrityError, match="do not match their SHA-256"):
        s3_store.adopt(put.key)


def test_s3_url_for_job_a_cannot_write_under_job_b(s3_store: S3ObjectStore) -> None:
    presigner = S3Presigner(store=s3_store)
    put = presign_job_output(presigner, JA, "model", sha256=SHA, size=len(MODEL), expires_in=60)
    target = put.url.replace(f"/jobs/{JA}/", f"/jobs/{JB}/")
    # The signature covers the path: S3 answers SignatureDoesNotMatch, and so does our verifier.
    with pytest.raises(PresignError, match="signature does not match"):
        verify_s3_presigned(s3_store, method="PUT", url=target, headers=put.headers)
    # moto does not check signatures; whatever lands under job B is refused on read: its metadata tag
    # names job A's key.
    httpx.put(target, content=MODEL, headers=dict(put.headers))
    with pytest.raises(IntegrityError, match="tag does not match"):
        s3_store.adopt(layout.job_output(JB, "model"))
    report = s3_store.verify(layout.job_prefix(JB))
    assert [(p.key, p.code) for p in report.problems] == [(layout.job_output(JB, "model"), "integrity")]


def test_s3_tampered_and_expired_urls_refused_by_verifier(s3_store: S3ObjectStore) -> None:
    presigner = S3Presigner(store=s3_store)
    put = presign_job_output(presigner, JA, "model", sha256=SHA, size=len(MODEL), expires_in=60)
    query = dict(parse_qsl(urlsplit(put.url).query))
    issued = dt.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    later = issued + dt.timedelta(seconds=61)
    with pytest.raises(PresignError, match="expired"):
        verify_s3_presigned(s3_store, method="PUT", url=put.url, headers=put.headers, now=later)
    longer = put.url.replace("X-Amz-Expires=60", "X-Amz-Expires=3600")
    with pytest.raises(PresignError, match="signature does not match"):
        verify_s3_presigned(s3_store, method="PUT", url=longer, headers=put.headers, now=later)
    other_hash = {**put.headers, "x-amz-checksum-sha256": "AAAA"}
    with pytest.raises(PresignError, match="signature does not match"):
        verify_s3_presigned(s3_store, method="PUT", url=put.url, headers=other_hash)
    with pytest.raises(PresignError, match="signature does not match"):
        verify_s3_presigned(s3_store, method="GET", url=put.url, headers=put.headers)
    with pytest.raises(PresignError, match="missing"):
        verify_s3_presigned(s3_store, method="PUT", url=put.url, headers={})


def test_s3_presign_refuses_encrypted_inputs(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes(layout.job_input(JA, "secret"), DATA, encrypt=True)
    with pytest.raises(PresignError, match="encrypted"):
        presign_job_inputs(S3Presigner(store=s3_store), JA, ["secret"])
