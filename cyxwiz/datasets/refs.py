"""What a job trains on, as the user names it (SPEC G1, D3): a public reference, or ``{uri, sha256}``.

A job spec's ``dataset`` is either the string ``sklearn:digits`` (the reference job: scikit-learn ships it,
nothing downloads) or a mapping::

    dataset:
      uri: s3://bucket/key.csv            # s3://bucket/key (any S3 endpoint) or, dev only, file:///path
      sha256: 64 lower-case hex digits    # checked on every read (D3)
      format: csv                         # npz | csv | raw; from the key's suffix when omitted
      label_column: target                # CSV only: which column holds the class label
      holdout: {uri: ..., sha256: ...}    # optional: the user's own holdout, never sent to a node (F1)
      holdout_fraction: 0.2               # otherwise the trusted side splits this share off, secretly

Parsing here is syntax only (no I/O): every refusal is a :class:`ValidationError` naming the field
(``dataset.uri``, ``dataset.holdout.sha256`` ...) and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from cyxwiz.errors import ValidationError

Format = Literal["npz", "csv", "raw"]
FORMATS: tuple[Format, ...] = ("npz", "csv", "raw")
#: Datasets a package installed with cyxwiz ships; the only names a job may give without a hash.
PUBLIC_DATASETS: tuple[str, ...] = ("sklearn:digits",)
DIGITS = "sklearn:digits"
DEFAULT_HOLDOUT_FRACTION = 0.2

HoldoutSource = Literal["public-derived", "secret-split", "user-holdout", "none"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_COLUMN = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_MAX_URI = 2048
_REF_KEYS = frozenset({"uri", "sha256", "format", "label_column"})
_SPEC_KEYS = _REF_KEYS | {"holdout", "holdout_fraction"}


@dataclass(frozen=True, kw_only=True)
class Location:
    """A parsed dataset URI: ``s3`` (bucket + key) or ``file`` (absolute path)."""

    scheme: Literal["s3", "file"]
    bucket: str = ""
    key: str = ""
    path: str = ""


@dataclass(frozen=True, kw_only=True)
class DatasetRef:
    """One file of user data: where it is, its content hash, how to read it."""

    uri: str
    sha256: str
    format: Format
    label_column: str | None = None

    @property
    def location(self) -> Location:
        return parse_uri(self.uri)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "sha256": self.sha256, "format": self.format}
        if self.label_column is not None:
            out["label_column"] = self.label_column
        return out


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A job's data: exactly one of ``public`` (a shipped dataset) or ``data`` (the user's file)."""

    public: str | None = None
    data: DatasetRef | None = None
    holdout: DatasetRef | None = None
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION

    @property
    def holdout_source(self) -> HoldoutSource:
        """How the holdout comes about; the verification report states it (F1)."""
        if self.public is not None:
            # Public rows: no split can be secret, the holdout is the public data minus the node's rows.
            return "public-derived"
        return "user-holdout" if self.holdout is not None else "secret-split"

    def to_dict(self) -> dict[str, Any] | str:
        if self.public is not None:
            return self.public
        assert self.data is not None
        out = self.data.to_dict()
        out["holdout_fraction"] = self.holdout_fraction
        if self.holdout is not None:
            out["holdout"] = self.holdout.to_dict()
        return out


def parse_uri(uri: object, *, field: str = "dataset.uri") -> Location:
    """``s3://bucket/key`` or ``file:///absolute/path``; anything else is refused (G1)."""
    if not isinstance(uri, str) or not uri:
        raise ValidationError("must be a non-empty string", field=field, rule="G1")
    if len(uri) > _MAX_URI:
        raise ValidationError(f"longer than {_MAX_URI} characters", field=field, rule="G1")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise ValidationError("contains control characters", field=field, rule="G1")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ValidationError(
            "expected s3://bucket/key or (development) file:///absolute/path", field=field, rule="G1"
        )
    if scheme == "s3":
        bucket, slash, key = rest.partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise ValidationError(f"{bucket!r} is not an S3 bucket name", field=field, rule="G1")
        if not slash or not key or len(key.encode()) > 1024:
            raise ValidationError("an s3:// URI names an object key (1..1024 bytes)", field=field, rule="G1")
        if any(part in ("", ".", "..") for part in key.split("/")):
            raise ValidationError("object key has an empty, '.' or '..' segment", field=field, rule="G1")
        return Location(scheme="s3", bucket=bucket, key=key)
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValidationError("file:// URIs are absolute: file:///path", field=field, rule="G1")
        path = unquote(rest)
        if "\x00" in path or any(part in (".", "..") for part in path.split("/")):
            raise ValidationError("path holds NUL, '.' or '..'", field=field, rule="G1")
        return Location(scheme="file", path=path)
    if scheme == "ipfs":
        raise ValidationError(
            "ipfs:// datasets are not fetched by this control plane", field=field, rule="G1"
        )
    raise ValidationError(f"scheme {scheme!r} is not allowed (s3 or file)", field=field, rule="G1")


def _format_of(value: Mapping[str, Any], uri: str, *, job_type: str, field: str) -> Format:
    given = value.get("format")
    if given is not None:
        if given not in FORMATS:
            raise ValidationError(f"must be one of {', '.join(FORMATS)}", field=f"{field}.format", rule="G1")
        fmt: Format = given
    else:
        suffix = uri.rsplit("/", 1)[-1].rpartition(".")[2].lower()
        fmt = "npz" if suffix == "npz" else "csv" if suffix == "csv" else "raw"
    if job_type == "model" and fmt == "raw":
        raise ValidationError(
            "a model job reads .npz (arrays x, y) or .csv; name the format or use one of those suffixes",
            field=f"{field}.format",
            rule="G1",
        )
    return fmt


def parse_ref(value: object, *, job_type: str, field: str = "dataset") -> DatasetRef:
    """One ``{uri, sha256, format?, label_column?}`` mapping (no other keys)."""
    if not isinstance(value, Mapping):
        raise ValidationError("must be a mapping with uri and sha256", field=field, rule="G1")
    unknown = sorted(set(value) - _REF_KEYS)
    if unknown:
        raise ValidationError(f"unknown keys {unknown}", field=field, rule="G1")
    uri = value.get("uri")
    parse_uri(uri, field=f"{field}.uri")
    assert isinstance(uri, str)
    sha256 = value.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValidationError(
            "is required: the content's SHA-256 as 64 lower-case hex digits",
            field=f"{field}.sha256",
            rule="D3",
        )
    fmt = _format_of(value, uri, job_type=job_type, field=field)
    label = value.get("label_column")
    if fmt == "csv":
        if not isinstance(label, str) or not _COLUMN.fullmatch(label):
            raise ValidationError(
                "a CSV dataset names its label column (1..128 printable characters)",
                field=f"{field}.label_column",
                rule="G1",
            )
    elif label is not None:
        raise ValidationError(
            "only CSV datasets take a label column", field=f"{field}.label_column", rule="G1"
        )
    return DatasetRef(uri=uri, sha256=sha256, format=fmt, label_column=label)


def parse_dataset(value: object, *, job_type: str = "model") -> DatasetSpec:
    """The ``dataset`` of a job spec (missing: the digits reference). Syntax only; no file is read."""
    if value is None or value == DIGITS:
        return DatasetSpec(public=DIGITS)
    if isinstance(value, str):
        hint = f"name {DIGITS!r}, or give {{uri, sha256}} of your own data"
        raise ValidationError(f"unknown dataset {value!r} ({hint})", field="dataset", rule="G1")
    if not isinstance(value, Mapping):
        raise ValidationError("must be a mapping with uri and sha256", field="dataset", rule="G1")
    unknown = sorted(set(value) - _SPEC_KEYS)
    if unknown:
        raise ValidationError(f"unknown keys {unknown}", field="dataset", rule="G1")
    data = parse_ref({k: v for k, v in value.items() if k in _REF_KEYS}, job_type=job_type)
    holdout = None
    if value.get("holdout") is not None:
        if job_type != "model":
            raise ValidationError(
                "only model jobs are checked on a holdout", field="dataset.holdout", rule="G1"
            )
        holdout = parse_ref(value["holdout"], job_type=job_type, field="dataset.holdout")
        if holdout.sha256 == data.sha256:
            raise ValidationError(
                "the holdout is the training file itself", field="dataset.holdout.sha256", rule="F1"
            )
    fraction = value.get("holdout_fraction", DEFAULT_HOLDOUT_FRACTION)
    if (
        not isinstance(fraction, int | float)
        or isinstance(fraction, bool)
        or not 0.05 <= float(fraction) <= 0.5
    ):
        raise ValidationError("must be a number in [0.05, 0.5]", field="dataset.holdout_fraction", rule="F1")
    return DatasetSpec(data=data, holdout=holdout, holdout_fraction=float(fraction))
