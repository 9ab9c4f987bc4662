"""The trusted side's view of a job's data: validate it, then split off an honest holdout (SPEC F1, G1, D3).

:func:`validate_dataset` is the one validator — the coordinator runs it at ``POST /v1/jobs`` and the
lifecycle before the escrow — and creates nothing. :func:`prepare_dataset` reads the data again (hash
checked again) and splits it with a **secret per-job seed** from the CSPRNG: the node receives the
training rows only, and neither the seed nor the holdout rows ever leave the trusted zone, so a node
holding everything it was sent cannot rebuild the holdout or its hash. A holdout file the user gives is
used as is. For a public dataset (digits) the rows the node lacks are public, so the record says
``public-derived`` and the verdict rests on the replay, not on holdout secrecy.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from dataclasses import asdict, dataclass

import numpy as np

from cyxwiz.datasets.checks import DatasetLimits, FeatureArray, LabelArray, ModelShape, check_arrays
from cyxwiz.datasets.readers import read_arrays
from cyxwiz.datasets.refs import DIGITS, DatasetRef, DatasetSpec, HoldoutSource
from cyxwiz.datasets.sources import DatasetSources
from cyxwiz.errors import ValidationError

#: Separates the holdout split's random stream from every other use of a seed.
_SPLIT_DOMAIN = 0x484F4C44  # "HOLD"


@dataclass(frozen=True, kw_only=True)
class Table:
    x: FeatureArray
    y: LabelArray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, kw_only=True)
class CheckedData:
    """A validated dataset: the rows to split (or train on) and, when the user gave one, their holdout."""

    data: Table
    holdout: Table | None
    data_sha256: str


@dataclass(frozen=True, kw_only=True)
class HoldoutRecord:
    """How the job's holdout came about; sealed (encrypted) in the job's trusted record, never sent out."""

    source: HoldoutSource
    #: The secret split seed as hex (None for a user-given holdout).
    seed: str | None
    data_sha256: str
    train_sha256: str
    holdout_sha256: str
    train_rows: int
    holdout_rows: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")


@dataclass(frozen=True, kw_only=True)
class PreparedData:
    #: Canonical ``.npz`` (arrays ``X``, ``y``) of the training rows: what the node receives.
    train: bytes
    #: Canonical ``.npz`` of the holdout rows (empty for a script job): stays in the trusted zone.
    holdout: bytes
    record: HoldoutRecord

    @property
    def train_sha256(self) -> str:
        return self.record.train_sha256

    @property
    def holdout_sha256(self) -> str:
        return self.record.holdout_sha256


def new_split_seed() -> int:
    """128 bits from the operating system's CSPRNG."""
    return secrets.randbits(128)


def split_indices(n: int, *, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, holdout rows) of ``n`` rows; the holdout is ``fraction`` of them, at least one row."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_DOMAIN])))
    order = rng.permutation(n)
    n_holdout = min(n - 1, max(1, round(n * fraction)))
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def npz_bytes(table: Table) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=table.x, y=table.y)
    return buffer.getvalue()


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0), np.asarray(bunch.target, np.int64)


def _load_table(
    raw: bytes | None, ref: DatasetRef | None, *, field: str, shape: ModelShape, limits: DatasetLimits
) -> Table:
    if raw is None or ref is None:
        x_raw, y_raw = _digits()
    else:
        x_raw, y_raw = read_arrays(raw, ref, limits, field=field)
    x, y = check_arrays(x_raw, y_raw, shape=shape, limits=limits, field=field)
    return Table(x=x, y=y)


def validate_dataset(
    spec: DatasetSpec, *, sources: DatasetSources, user: str, shape: ModelShape | None
) -> CheckedData:
    """Read and check a job's data (and holdout) without creating anything. ``shape`` None: a script job,
    whose file is checked for access, size, emptiness and hash only (the user's code reads it as is)."""
    if spec.public is not None:
        if shape is None:
            raise ValidationError(f"{DIGITS} feeds model jobs", field="dataset", rule="G1")
        table = _load_table(None, None, field="dataset", shape=shape, limits=sources.limits)
        return CheckedData(data=table, holdout=None, data_sha256=hashlib.sha256(npz_bytes(table)).hexdigest())
    assert spec.data is not None
    raw = sources.fetch(spec.data, user=user, field="dataset")
    if shape is None:
        empty = Table(x=np.zeros((0, 1), np.float32), y=np.zeros(0, np.int64))
        return CheckedData(data=empty, holdout=None, data_sha256=spec.data.sha256)
    table = _load_table(raw, spec.data, field="dataset", shape=shape, limits=sources.limits)
    holdout = None
    if spec.holdout is not None:
        held = sources.fetch(spec.holdout, user=user, field="dataset.holdout")
        holdout = _load_table(held, spec.holdout, field="dataset.holdout", shape=shape, limits=sources.limits)
    return CheckedData(data=table, holdout=holdout, data_sha256=spec.data.sha256)


def prepare_dataset(
    spec: DatasetSpec,
    *,
    sources: DatasetSources,
    user: str,
    shape: ModelShape | None,
    seed: int | None = None,
) -> PreparedData:
    """Validate again (every read is hash-checked) and produce the node's file and the trusted holdout."""
    if shape is None:  # script job: the user's file goes to /input unchanged; no holdout check applies
        assert spec.data is not None
        raw = sources.fetch(spec.data, user=user, field="dataset")
        record = HoldoutRecord(
            source="none", seed=None, data_sha256=spec.data.sha256, train_sha256=spec.data.sha256,
            holdout_sha256=hashlib.sha256(b"").hexdigest(), train_rows=0, holdout_rows=0,
        )  # fmt: skip
        return PreparedData(train=raw, holdout=b"", record=record)
    checked = validate_dataset(spec, sources=sources, user=user, shape=shape)
    if checked.holdout is not None:
        train, holdout, seed_hex = checked.data, checked.holdout, None
    else:
        seed = new_split_seed() if seed is None else seed
        train_rows, holdout_rows = split_indices(len(checked.data), seed=seed, fraction=spec.holdout_fraction)
        data = checked.data
        train = Table(x=data.x[train_rows], y=data.y[train_rows])
        holdout = Table(x=data.x[holdout_rows], y=data.y[holdout_rows])
        seed_hex = format(seed, "032x")
    train_bytes, holdout_bytes = npz_bytes(train), npz_bytes(holdout)
    record = HoldoutRecord(
        source=spec.holdout_source,
        seed=seed_hex,
        data_sha256=checked.data_sha256,
        train_sha256=hashlib.sha256(train_bytes).hexdigest(),
        holdout_sha256=hashlib.sha256(holdout_bytes).hexdigest(),
        train_rows=len(train),
        holdout_rows=len(holdout),
    )
    return PreparedData(train=train_bytes, holdout=holdout_bytes, record=record)
